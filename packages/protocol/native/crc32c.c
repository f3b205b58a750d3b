/*
 * CRC32C (Castagnoli) for Node, two ways, the faster one this CPU can run:
 *
 * - Folding with carry-less multiplication over 512-bit registers (AVX-512
 *   VPCLMULQDQ): four registers of 64 bytes each are folded 256 bytes ahead
 *   per step, so the speed is the multiplier's, not the crc32 instruction's
 *   latency. The 128 bits left at the end go through the crc32 instruction.
 * - The SSE4.2 crc32 instruction in three independent chains. One chain waits
 *   for each instruction's result (three cycles), which holds @node-rs/crc32
 *   to about 6 GB/s; three chains over three blocks keep the unit busy, and
 *   the block CRCs are joined by multiplying with x^(8 * block length)
 *   through lookup tables. Short inputs always take this way.
 *
 * Exports crc32c(data: Uint8Array, previous?: number): number, the same
 * contract as @node-rs/crc32, and `implementation`, which of the two it uses;
 * crc32cChains is the second way alone, for tests on CPUs that fold.
 * Loading fails on a CPU without SSE4.2, and the caller falls back.
 */
#define NAPI_VERSION 8
#include <node_api.h>
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define POLY 0x82f63b78u /* reflected */
#define LONG_BLOCK 8192
#define SHORT_BLOCK 256

/* shift_long[k][b]: byte b at position k of the register, moved over LONG_BLOCK zero bytes. */
static uint32_t shift_long[4][256];
static uint32_t shift_short[4][256];

/* Matrix (32 columns) times vector over GF(2). */
static uint32_t gf2_times(const uint32_t *matrix, uint32_t vector) {
  uint32_t sum = 0;
  for (int i = 0; vector; vector >>= 1, i++)
    if (vector & 1) sum ^= matrix[i];
  return sum;
}

static void gf2_square(uint32_t *out, const uint32_t *matrix) {
  for (int i = 0; i < 32; i++) out[i] = gf2_times(matrix, matrix[i]);
}

/* The operator that feeds `bytes` zero bytes (a power of two, at least 1) through the register. */
static void zeros_operator(uint32_t *out, unsigned bytes) {
  uint32_t op[32], next[32];
  op[0] = POLY; /* one zero bit */
  for (int i = 1; i < 32; i++) op[i] = 1u << (i - 1);
  for (int doublings = 0; doublings < 3; doublings++) { /* one zero byte */
    gf2_square(next, op);
    memcpy(op, next, sizeof op);
  }
  for (; bytes > 1; bytes >>= 1) {
    gf2_square(next, op);
    memcpy(op, next, sizeof op);
  }
  memcpy(out, op, sizeof op);
}

static void shift_table(uint32_t table[4][256], unsigned bytes) {
  uint32_t op[32];
  zeros_operator(op, bytes);
  for (uint32_t b = 0; b < 256; b++)
    for (int k = 0; k < 4; k++) table[k][b] = gf2_times(op, b << (8 * k));
}

static inline uint32_t shift(uint32_t table[4][256], uint32_t crc) {
  return table[0][crc & 0xff] ^ table[1][(crc >> 8) & 0xff] ^ table[2][(crc >> 16) & 0xff] ^ table[3][crc >> 24];
}

static inline uint64_t load64(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

/* Blocks of three `block`-byte runs, one chain each, joined into c0. */
__attribute__((target("sse4.2")))
static inline uint64_t three_chains(uint64_t c0, const uint8_t **at, size_t *len, size_t block, uint32_t table[4][256]) {
  const uint8_t *p = *at;
  while (*len >= 3 * block) {
    uint64_t c1 = 0, c2 = 0;
    for (const uint8_t *end = p + block; p < end; p += 8) {
      c0 = _mm_crc32_u64(c0, load64(p));
      c1 = _mm_crc32_u64(c1, load64(p + block));
      c2 = _mm_crc32_u64(c2, load64(p + 2 * block));
    }
    c0 = shift(table, (uint32_t)c0) ^ c1;
    c0 = shift(table, (uint32_t)c0) ^ c2;
    p += 2 * block;
    *len -= 3 * block;
  }
  *at = p;
  return c0;
}

/* Continues the register c (not inverted) over len bytes at p. */
__attribute__((target("sse4.2")))
static uint32_t crc32c_chains(uint32_t c, const uint8_t *p, size_t len) {
  uint64_t c64 = c;
  for (; len && ((uintptr_t)p & 7); len--) c64 = _mm_crc32_u8((uint32_t)c64, *p++);
  c64 = three_chains(c64, &p, &len, LONG_BLOCK, shift_long);
  c64 = three_chains(c64, &p, &len, SHORT_BLOCK, shift_short);
  for (; len >= 8; len -= 8, p += 8) c64 = _mm_crc32_u64(c64, load64(p));
  for (; len; len--) c64 = _mm_crc32_u8((uint32_t)c64, *p++);
  return (uint32_t)c64;
}

/*
 * Folding. A 128-bit lane loaded from memory holds message bits with the first
 * one in bit 0 (the CRC is bit-reflected): bit i is the coefficient of x^(127-i),
 * so its low 64 bits H and high 64 bits L stand for H*x^64 + L. Moving the lane
 * D bits further on means multiplying by x^D modulo the polynomial; a carry-less
 * product of two reflected 64-bit values comes out as the product times x, so
 * H is multiplied by x^(D+63) mod P and L by x^(D-1) mod P, both under 32 bits.
 */
#define FOLD_MIN 256

/* x^e mod P as a reflected 64-bit multiplicand (bit j is the coefficient of x^(63-j)). */
static uint64_t x_pow_mod(unsigned e) {
  uint32_t v = 0x80000000u; /* x^0 in reflected 32-bit form: bit b is x^(31-b) */
  while (e--) v = (v >> 1) ^ (v & 1 ? POLY : 0);
  return (uint64_t)v << 32;
}

/* Multipliers that move a lane D bits on (H's first, then L's), for the distances the fold uses. */
typedef struct { uint64_t h, l; } fold_by;
static fold_by by_2048, by_512, by_384, by_256, by_128;

static fold_by fold_constants(unsigned d) {
  fold_by k = { x_pow_mod(d + 63), x_pow_mod(d - 1) };
  return k;
}

#define FOLD_TARGET __attribute__((target("avx512f,avx512vl,vpclmulqdq,pclmul,sse4.2")))

FOLD_TARGET static inline __m128i lanes_of(fold_by k) { return _mm_set_epi64x((long long)k.l, (long long)k.h); }

/* x moved on by k's distance, xor'd onto `onto`. */
FOLD_TARGET static inline __m512i fold512(__m512i x, __m512i k, __m512i onto) {
  return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(x, k, 0x00), _mm512_clmulepi64_epi128(x, k, 0x11), onto, 0x96);
}

FOLD_TARGET static inline __m128i fold128(__m128i x, __m128i k, __m128i onto) {
  return _mm_ternarylogic_epi64(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11), onto, 0x96);
}

/* Continues the register c (not inverted) over len >= FOLD_MIN bytes at p. */
FOLD_TARGET static uint32_t crc32c_fold(uint32_t c, const uint8_t *p, size_t len) {
  __m512i x0 = _mm512_xor_si512(_mm512_loadu_si512(p), _mm512_zextsi128_si512(_mm_cvtsi32_si128((int)c)));
  __m512i x1 = _mm512_loadu_si512(p + 64), x2 = _mm512_loadu_si512(p + 128), x3 = _mm512_loadu_si512(p + 192);
  p += 256;
  len -= 256;
  const __m512i k2048 = _mm512_broadcast_i32x4(lanes_of(by_2048));
  for (; len >= 256; p += 256, len -= 256) {
    x0 = fold512(x0, k2048, _mm512_loadu_si512(p));
    x1 = fold512(x1, k2048, _mm512_loadu_si512(p + 64));
    x2 = fold512(x2, k2048, _mm512_loadu_si512(p + 128));
    x3 = fold512(x3, k2048, _mm512_loadu_si512(p + 192));
  }
  const __m512i k512 = _mm512_broadcast_i32x4(lanes_of(by_512));
  __m512i x = fold512(fold512(fold512(x0, k512, x1), k512, x2), k512, x3);
  for (; len >= 64; p += 64, len -= 64) x = fold512(x, k512, _mm512_loadu_si512(p));
  /* The four lanes, 16 bytes apart, onto the last one. */
  const __m128i k128 = lanes_of(by_128);
  __m128i r = fold128(_mm512_extracti32x4_epi32(x, 0), lanes_of(by_384), _mm512_extracti32x4_epi32(x, 3));
  r = fold128(_mm512_extracti32x4_epi32(x, 1), lanes_of(by_256), r);
  r = fold128(_mm512_extracti32x4_epi32(x, 2), k128, r);
  for (; len >= 16; p += 16, len -= 16) r = fold128(r, k128, _mm_loadu_si128((const __m128i *)p));
  /* The 128 bits left, then the tail, through the crc32 instruction from a zero register. */
  uint64_t c64 = _mm_crc32_u64(0, (uint64_t)_mm_cvtsi128_si64(r));
  c64 = _mm_crc32_u64(c64, (uint64_t)_mm_extract_epi64(r, 1));
  return crc32c_chains((uint32_t)c64, p, len);
}

static int can_fold;

/* Continues the register c (not inverted) over len bytes at p, the fastest way. */
static uint32_t crc32c_best(uint32_t c, const uint8_t *p, size_t len) {
  return can_fold && len >= FOLD_MIN ? crc32c_fold(c, p, len) : crc32c_chains(c, p, len);
}

typedef uint32_t (*crc_way)(uint32_t c, const uint8_t *p, size_t len);

/* crc32c(data, previous?): the way is the function's data, so the chains can be checked on any CPU. */
static napi_value js_crc32c(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_typedarray_type type;
  size_t length;
  void *data;
  uint32_t previous = 0;
  napi_value result;
  crc_way way;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, (void **)&way) != napi_ok) return NULL;
  if (argc < 1 || napi_get_typedarray_info(env, argv[0], &type, &length, &data, NULL, NULL) != napi_ok || type != napi_uint8_array) {
    napi_throw_type_error(env, NULL, "crc32c: the data must be a Uint8Array");
    return NULL;
  }
  if (argc > 1 && napi_get_value_uint32(env, argv[1], &previous) != napi_ok) {
    napi_throw_type_error(env, NULL, "crc32c: the previous CRC must be a number");
    return NULL;
  }
  if (napi_create_uint32(env, ~way(~previous, data, length), &result) != napi_ok) return NULL;
  return result;
}

NAPI_MODULE_INIT() {
  napi_value fn, name;
  if (!__builtin_cpu_supports("sse4.2")) {
    napi_throw_error(env, NULL, "crc32c: this CPU has no SSE4.2");
    return NULL;
  }
  shift_table(shift_long, LONG_BLOCK);
  shift_table(shift_short, SHORT_BLOCK);
  /* The compiler's check includes the OS saving the 512-bit registers. */
  can_fold = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("vpclmulqdq");
  by_2048 = fold_constants(2048);
  by_512 = fold_constants(512);
  by_384 = fold_constants(384);
  by_256 = fold_constants(256);
  by_128 = fold_constants(128);
  if (napi_create_function(env, "crc32c", NAPI_AUTO_LENGTH, js_crc32c, (void *)crc32c_best, &fn) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "crc32c", fn) != napi_ok) return NULL;
  if (napi_create_function(env, "crc32cChains", NAPI_AUTO_LENGTH, js_crc32c, (void *)crc32c_chains, &fn) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "crc32cChains", fn) != napi_ok) return NULL;
  if (napi_create_string_utf8(env, can_fold ? "AVX-512 VPCLMULQDQ folding" : "SSE4.2, three interleaved chains", NAPI_AUTO_LENGTH, &name) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "implementation", name) != napi_ok) return NULL;
  return exports;
}
