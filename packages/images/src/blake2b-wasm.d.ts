// blake2b-wasm ships no types; the part of its API this package uses.
declare module 'blake2b-wasm' {
  interface Blake2b {
    update(input: Uint8Array): Blake2b;
    digest(): Uint8Array;
  }
  function blake2b(digestLength?: number): Blake2b;
  namespace blake2b {
    function ready(cb?: (err?: Error) => void): Promise<void>;
    const SUPPORTED: boolean;
  }
  export = blake2b;
}
