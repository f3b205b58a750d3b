/*
 * CRC32C (Castagnoli) for Node, with the SSE4.2 crc32 instruction in three
 * independent chains. One chain waits for each instruction's result (three
 * cycles here), which holds @node-rs/crc32 to about 6 GB/s; three chains over
 * three blocks keep the unit busy (about 25 GB/s), and the block CRCs are
 * joined by multiplying with x^(8 * block length) through lookup tables.
 *
 * Exports crc32c(data: Uint8Array, previous?: number): number, the same
 * contract as @node-rs/crc32. Loading fails on a CPU without SSE4.2, and the
 * caller falls back.
 */
#define NAPI_VERSION 8
#include <node_api.h>
#include <nmmintrin.h>
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

__attribute__((target("sse4.2")))
static uint32_t crc32c(uint32_t previous, const uint8_t *p, size_t len) {
  uint64_t c = ~previous;
  for (; len && ((uintptr_t)p & 7); len--) c = _mm_crc32_u8((uint32_t)c, *p++);
  c = three_chains(c, &p, &len, LONG_BLOCK, shift_long);
  c = three_chains(c, &p, &len, SHORT_BLOCK, shift_short);
  for (; len >= 8; len -= 8, p += 8) c = _mm_crc32_u64(c, load64(p));
  for (; len; len--) c = _mm_crc32_u8((uint32_t)c, *p++);
  return ~(uint32_t)c;
}

static napi_value js_crc32c(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_typedarray_type type;
  size_t length;
  void *data;
  uint32_t previous = 0;
  napi_value result;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc < 1 || napi_get_typedarray_info(env, argv[0], &type, &length, &data, NULL, NULL) != napi_ok || type != napi_uint8_array) {
    napi_throw_type_error(env, NULL, "crc32c: the data must be a Uint8Array");
    return NULL;
  }
  if (argc > 1 && napi_get_value_uint32(env, argv[1], &previous) != napi_ok) {
    napi_throw_type_error(env, NULL, "crc32c: the previous CRC must be a number");
    return NULL;
  }
  if (napi_create_uint32(env, crc32c(previous, data, length), &result) != napi_ok) return NULL;
  return result;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  if (!__builtin_cpu_supports("sse4.2")) {
    napi_throw_error(env, NULL, "crc32c: this CPU has no SSE4.2");
    return NULL;
  }
  shift_table(shift_long, LONG_BLOCK);
  shift_table(shift_short, SHORT_BLOCK);
  if (napi_create_function(env, "crc32c", NAPI_AUTO_LENGTH, js_crc32c, NULL, &fn) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "crc32c", fn) != napi_ok) return NULL;
  return exports;
}
