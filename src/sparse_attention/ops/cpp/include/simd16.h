// Sixteen floats as one value, for the lane kernels of the attention (ops/attention/csrc: lanes.h,
// lanes_blocks.h, lanes_rows.h, lanes_rows_backward.h) and of k-means, on every x86-64 level that
// has FMA: one AVX-512 register, or a pair of AVX2 registers.
//
// The lane kernels are written once against these operations, so the AVX2 build runs the same
// arithmetic in the same order as the AVX-512 one (results agree to the last bit except where a
// reduction tree differs: sum16, reduce_add). What differs per level is register pressure: AVX2
// has 16 vector registers of 8 floats, AVX-512 32 of 16, so a loop that keeps 16 values of F16
// live on AVX-512 needs 32 ymm registers on AVX2. The kernels take their blocking constants
// (keys or heads per register block) from kRegisterBudget below instead of fixing them.
//
// Besides F16: eight floats as one value (F8, one AVX2 register on both levels) for loops whose
// width is 8 (the indexer KL's dot products and gradient rows, the AVX2 top-k selection), compress
// stores (the lanes of a mask moved to the front and stored, for the top-k selection), and on
// AVX512-BF16 dot products of bf16 pairs (the bf16 top-k scorer). The kernels that include this
// header use no vector intrinsics of their own (AMX tile code aside): they test SA_LANES* and
// call these.
//
// SA_LANES is defined where these kernels exist (AVX-512F, or AVX2, with FMA); the generic
// build (no FMA) runs the portable loops of each op instead (for the attention, the tiled loops
// of ops/attention/csrc/attention_cpu.cpp). SA_LANES_AVX512 / SA_LANES_AVX2 say which level;
// SA_LANES_BF16 adds the bf16 pair dot products (AVX-512 with AVX512-BF16).
#pragma once

#include <immintrin.h>

#include <array>
#include <cstdint>

#if defined(__AVX512F__) && defined(__FMA__)
#define SA_LANES 1
#define SA_LANES_AVX512 1
#if defined(__AVX512BF16__)
#define SA_LANES_BF16 1
#endif
#elif defined(__AVX2__) && defined(__FMA__)
#define SA_LANES 1
#define SA_LANES_AVX2 1
#endif

#if defined(SA_LANES)
namespace simd {

using Mask16 = uint32_t;  // bit i: lane i

// Eight floats (eight int32) as one value: one AVX2 register, on both levels (the AVX-512 level
// has AVX2 and FMA too), for loops that run 8 wide there as well.
using F8 = __m256;
using I8 = __m256i;

inline F8 zero8() { return _mm256_setzero_ps(); }
inline F8 set1_8(float x) { return _mm256_set1_ps(x); }
inline F8 loadu8(const float* p) { return _mm256_loadu_ps(p); }
inline F8 broadcast8(const float* p) { return _mm256_broadcast_ss(p); }  // *p in every lane
inline I8 loadu8(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline void storeu(float* p, F8 x) { _mm256_storeu_ps(p, x); }
inline void store(float* p, F8 x) { _mm256_store_ps(p, x); }  // p 32-byte aligned
inline F8 add(F8 a, F8 b) { return _mm256_add_ps(a, b); }
inline F8 fmadd(F8 a, F8 b, F8 c) { return _mm256_fmadd_ps(a, b, c); }
// NaN lanes become +inf.
inline F8 nan_to_posinf(F8 x) {
  return _mm256_blendv_ps(x, _mm256_set1_ps(__builtin_inff()), _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}
// Bit i: lane i of a > b (false where a or b is NaN).
inline uint32_t greater_mask(F8 a, F8 b) {
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ)));
}
// out[i] = sum of the 8 lanes of x_i, for i < 4: two rounds of horizontal adds leave each sum's
// halves in the two 128-bit lanes, which are then added.
inline void store_sum4(float* out, F8 x0, F8 x1, F8 x2, F8 x3) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(x0, x1), _mm256_hadd_ps(x2, x3));
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
}

// Vector registers a kernel may keep live, in units of F16: blocking constants scale with it.
#if defined(SA_LANES_AVX512)
constexpr int kRegisterBudget = 32;
using F16 = __m512;

inline F16 zero() { return _mm512_setzero_ps(); }
inline F16 set1(float x) { return _mm512_set1_ps(x); }
inline F16 loadu(const float* p) { return _mm512_loadu_ps(p); }
inline F16 load(const float* p) { return _mm512_load_ps(p); }  // p 64-byte aligned
inline void storeu(float* p, F16 x) { _mm512_storeu_ps(p, x); }
inline void store(float* p, F16 x) { _mm512_store_ps(p, x); }
inline F16 add(F16 a, F16 b) { return _mm512_add_ps(a, b); }
inline F16 sub(F16 a, F16 b) { return _mm512_sub_ps(a, b); }
inline F16 mul(F16 a, F16 b) { return _mm512_mul_ps(a, b); }
inline F16 fmadd(F16 a, F16 b, F16 c) { return _mm512_fmadd_ps(a, b, c); }
// max(a, b) lane-wise; b where either is NaN (as the instruction does).
inline F16 max(F16 a, F16 b) { return _mm512_max_ps(a, b); }
inline F16 floor(F16 x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
// p * 2^e for p in [1, 2) and integral e in [-126, 127].
inline F16 scale_pow2(F16 p, F16 e) { return _mm512_scalef_ps(p, e); }
inline Mask16 unordered(F16 x) { return _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q); }
inline float reduce_max(F16 x) { return _mm512_reduce_max_ps(x); }
inline float reduce_add(F16 x) { return _mm512_reduce_add_ps(x); }
inline float first(F16 x) { return _mm512_cvtss_f32(x); }
// Lane-wise a > b ? x : y (false where a or b is NaN).
inline F16 where_greater(F16 a, F16 b, F16 x, F16 y) { return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_GT_OQ), y, x); }
// NaN lanes become +inf.
inline F16 nan_to_posinf(F16 x) {
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x, _mm512_set1_ps(__builtin_inff()));
}
// x in lanes < count (0 < count <= 16), 0 elsewhere.
inline F16 keep_first(F16 x, int count) {
  return _mm512_maskz_mov_ps(static_cast<__mmask16>((uint32_t{1} << count) - 1), x);
}

// A mask register (bit i: lane i; AVX-512 only), as the compares and compress stores below take
// it: kernels that combine these masks keep them in mask registers (Mask16 would move them to
// general ones).
using KMask16 = __mmask16;
// Lane-wise a > b, a < b (false where a or b is NaN), and not a <= b (a > b, or a or b NaN).
inline KMask16 greater_mask(F16 a, F16 b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
inline KMask16 less_mask(F16 a, F16 b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
inline KMask16 not_less_equal_mask(F16 a, F16 b) { return _mm512_cmp_ps_mask(a, b, _CMP_NLE_UQ); }

// Sixteen int32 (AVX-512 only: the compress stores of key numbers).
using I16 = __m512i;
inline I16 loadu(const int32_t* p) { return _mm512_loadu_si512(p); }
// Lane l: first + l.
inline I16 iota(int32_t first) {
  return _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                          _mm512_set1_epi32(first));
}
// The lanes of `mask` moved to the front (in order) and all 16 lanes stored at dst, which needs
// room for 16. Compressed in a register, then stored: the memory form of the compress store
// (vpcompressps to memory) is microcoded and slow on AMD Zen 4. Unlike compress_store (AVX2) it
// returns no count (count below): a kernel storing two registers under one mask counts once,
// after both stores, where a count returned by the first store would be scheduled before the second.
inline void store_compressed(float* dst, KMask16 mask, F16 x) {
  _mm512_storeu_ps(dst, _mm512_maskz_compress_ps(mask, x));
}
inline void store_compressed(int32_t* dst, KMask16 mask, I16 x) {
  _mm512_storeu_si512(dst, _mm512_maskz_compress_epi32(mask, x));
}
// Lanes set in mask.
inline int count(KMask16 mask) { return __builtin_popcount(mask); }

#if defined(SA_LANES_BF16)
// Sixteen pairs of bf16 (pair l in lane l, first element in the low half), for dot_pairs.
using BF16Pairs = __m512bh;
inline BF16Pairs loadu_pairs(const void* p) { return (__m512bh)_mm512_loadu_si512(p); }
// The same pair in every lane (its two bf16 as one int32).
inline BF16Pairs set1_pair(int32_t pair) { return (__m512bh)_mm512_set1_epi32(pair); }
// acc + a.first * b.first + a.second * b.second, lane-wise (one vdpbf16ps: products exact, sums
// in fp32).
inline F16 dot_pairs(F16 acc, BF16Pairs a, BF16Pairs b) { return _mm512_dpbf16_ps(acc, a, b); }
#endif
#else
constexpr int kRegisterBudget = 16;
struct F16 {
  __m256 lo, hi;
};

inline F16 zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
inline F16 set1(float x) {
  const __m256 v = _mm256_set1_ps(x);
  return {v, v};
}
inline F16 loadu(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
inline F16 load(const float* p) { return {_mm256_load_ps(p), _mm256_load_ps(p + 8)}; }
inline void storeu(float* p, F16 x) {
  _mm256_storeu_ps(p, x.lo);
  _mm256_storeu_ps(p + 8, x.hi);
}
inline void store(float* p, F16 x) {
  _mm256_store_ps(p, x.lo);
  _mm256_store_ps(p + 8, x.hi);
}
inline F16 add(F16 a, F16 b) { return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
inline F16 sub(F16 a, F16 b) { return {_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi)}; }
inline F16 mul(F16 a, F16 b) { return {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
inline F16 fmadd(F16 a, F16 b, F16 c) { return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)}; }
inline F16 max(F16 a, F16 b) { return {_mm256_max_ps(a.lo, b.lo), _mm256_max_ps(a.hi, b.hi)}; }
inline F16 floor(F16 x) { return {_mm256_floor_ps(x.lo), _mm256_floor_ps(x.hi)}; }
inline __m256 scale_pow2(__m256 p, __m256 e) {
  // Adds e to the exponent field (e integral and in [-126, 127], so no over- or underflow).
  const __m256i bits = _mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(_mm256_cvtps_epi32(e), 23));
  return _mm256_castsi256_ps(bits);
}
inline F16 scale_pow2(F16 p, F16 e) { return {scale_pow2(p.lo, e.lo), scale_pow2(p.hi, e.hi)}; }
inline Mask16 unordered(F16 x) {
  const int lo = _mm256_movemask_ps(_mm256_cmp_ps(x.lo, x.lo, _CMP_UNORD_Q));
  const int hi = _mm256_movemask_ps(_mm256_cmp_ps(x.hi, x.hi, _CMP_UNORD_Q));
  return static_cast<Mask16>(lo | (hi << 8));
}
inline float hmax8(__m256 x) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}
inline float hadd8(__m256 x) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
// AVX2 has no compress store: the lanes of `mask` move to the front by a permutation looked up
// from the mask (8 lane numbers packed in bytes), and all 8 lanes are stored, so the caller's
// buffer needs room for 8 values at dst. Returns how many were kept.
inline constexpr std::array<uint64_t, 256> make_compress_table() {
  std::array<uint64_t, 256> t{};
  for (int m = 0; m < 256; ++m)
    for (int l = 0, k = 0; l < 8; ++l)
      if ((m >> l) & 1) t[m] |= uint64_t(l) << (8 * k++);
  return t;
}
inline constexpr std::array<uint64_t, 256> kCompressTable = make_compress_table();
inline __m256i compress_permutation(uint32_t mask) {
  return _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(kCompressTable[mask])));
}
inline int compress_store(float* dst, uint32_t mask, F8 v) {
  _mm256_storeu_ps(dst, _mm256_permutevar8x32_ps(v, compress_permutation(mask)));
  return __builtin_popcount(mask);
}
inline int compress_store(int32_t* dst, uint32_t mask, I8 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_permutevar8x32_epi32(v, compress_permutation(mask)));
  return __builtin_popcount(mask);
}
// Lanes 0-7, lanes 8-15 of x (by reference: of an x in memory only that half is loaded).
inline F8 lower(const F16& x) { return x.lo; }
inline F8 upper(const F16& x) { return x.hi; }

inline F16 where_greater(F16 a, F16 b, F16 x, F16 y) {
  return {_mm256_blendv_ps(y.lo, x.lo, _mm256_cmp_ps(a.lo, b.lo, _CMP_GT_OQ)),
          _mm256_blendv_ps(y.hi, x.hi, _mm256_cmp_ps(a.hi, b.hi, _CMP_GT_OQ))};
}
inline F16 nan_to_posinf(F16 x) {
  const __m256 inf = _mm256_set1_ps(__builtin_inff());
  return {_mm256_blendv_ps(x.lo, inf, _mm256_cmp_ps(x.lo, x.lo, _CMP_UNORD_Q)),
          _mm256_blendv_ps(x.hi, inf, _mm256_cmp_ps(x.hi, x.hi, _CMP_UNORD_Q))};
}
inline float reduce_max(F16 x) { return hmax8(_mm256_max_ps(x.lo, x.hi)); }
inline float reduce_add(F16 x) { return hadd8(_mm256_add_ps(x.lo, x.hi)); }
inline float first(F16 x) { return _mm256_cvtss_f32(x.lo); }
inline F16 keep_first(F16 x, int count) {
  alignas(64) static const int32_t kOnes[32] = {-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                                0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0};
  const float* m = reinterpret_cast<const float*>(kOnes + 16 - count);
  return {_mm256_and_ps(x.lo, _mm256_loadu_ps(m)), _mm256_and_ps(x.hi, _mm256_loadu_ps(m + 8))};
}
#endif

// exp(x), lane-wise: 2^(x log2 e), floor split, degree-6 polynomial on the fraction. Relative
// error ~2e-7; arguments below -87 give ~0 (exp(-87) ~ 1.6e-38); NaN stays NaN.
inline F16 exp(F16 x) {
  x = max(set1(-87.0f), x);  // second operand returned for NaN
  const F16 t = mul(x, set1(1.44269504088896341f));
  const F16 fi = floor(t);
  const F16 f = sub(t, fi);
  F16 p = set1(1.535336188319500e-4f);
  p = fmadd(p, f, set1(1.339887440266574e-3f));
  p = fmadd(p, f, set1(9.618437357674640e-3f));
  p = fmadd(p, f, set1(5.550332471162809e-2f));
  p = fmadd(p, f, set1(2.402264791363012e-1f));
  p = fmadd(p, f, set1(6.931472028550421e-1f));
  p = fmadd(p, f, set1(1.0f));
  return scale_pow2(p, fi);
}

// s[b] = sum of the 16 lanes of acc[b], for b < 16.
#if defined(SA_LANES_AVX512)
// Pairs of registers are interleaved and added (16 -> 8 -> 4 registers, each 128-bit lane then
// holding partial sums of 4 keys in order), then 128-bit lanes are exchanged and added twice.
inline F16 sum16(const F16* acc) {
  __m512 t[8];
  for (int i = 0; i < 8; ++i)
    t[i] = _mm512_add_ps(_mm512_unpacklo_ps(acc[2 * i], acc[2 * i + 1]), _mm512_unpackhi_ps(acc[2 * i], acc[2 * i + 1]));
  __m512 u[4];
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[2 * i]), b = _mm512_castps_pd(t[2 * i + 1]);
    u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  // u[i]: 128-bit lane L holds keys 4i .. 4i + 3 summed over features of lane L.
  const __m512 w0 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512 w1 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(w0, w1, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(w0, w1, _MM_SHUFFLE(3, 1, 3, 1)));
}
#else
// Sums of 8 registers of 8 lanes: three rounds of horizontal adds, then the two 128-bit halves.
inline __m256 sum8(const __m256* t) {
  const __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(t[0], t[1]), _mm256_hadd_ps(t[2], t[3]));
  const __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(t[4], t[5]), _mm256_hadd_ps(t[6], t[7]));
  // a: [k0 k1 k2 k3 | k0 k1 k2 k3] (low and high halves' partial sums), b likewise for k4..k7.
  return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}
inline F16 sum16(const F16* acc) {
  __m256 t[16];
  for (int b = 0; b < 16; ++b) t[b] = _mm256_add_ps(acc[b].lo, acc[b].hi);
  return {sum8(t), sum8(t + 8)};
}
#endif

// Sixteen bf16 values (their raw bits) widened to floats: exact, a bf16 being a float's upper half.
#if defined(SA_LANES_AVX512)
inline F16 load_bf16(const uint16_t* p) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
#else
inline __m256 load_bf16_8(const uint16_t* p) {
  const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}
inline F16 load_bf16(const uint16_t* p) { return {load_bf16_8(p), load_bf16_8(p + 8)}; }
#endif

}  // namespace simd
#endif  // SA_LANES
