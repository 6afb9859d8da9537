// bf16 sparse attention forward on the AMX tile unit, for blocks of query tokens of a KV group
// whose heads (up to 16) share a selection (per-head selections: groups of one head).
//
// The selected keys are copied row by row into a buffer that is directly the A operand of
//   S^T = K_sel Q^T        [n x 16]   (A: 16 keys x 32 features, B: Q^T as feature pairs)
// so the keys are never transposed; S^T has the heads in the lanes of one register per key,
// and the softmax runs lane-wise over keys (as in lanes.h). The probabilities are rounded
// to bf16 two keys at a time (the pair layout the tile unit multiplies) and one 16 x 16
// transpose of 32-bit pairs per 32 keys turns them head-major, the A operand of
//   O = P V_sel            [16 x D_v] (B: V_sel with key pairs interleaved, built while gathering).
// Products of bf16 values are accumulated in fp32 (as SDPA's bf16 CPU kernel does); the
// softmax statistics (max, sum, log-sum-exp) stay fp32. Needs D and D_v multiples of 32.
#pragma once

#include "amx_tiles.h"
#include "key_ranges.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace amx {

constexpr int64_t kKeyBlock = 32;  // keys per P V step (one A tile of bf16 pairs)

inline int64_t padded_keys(int64_t n) { return (n + kKeyBlock - 1) / kKeyBlock * kKeyBlock; }

inline bool attention_fits(int64_t D, int64_t Dv) { return D % 32 == 0 && Dv % 32 == 0; }

// K and V bytes per key range (key_ranges.h): the range walk measured ~12 vs ~22 ns per key and
// token for random selections from 16384 bf16 keys with 1 MiB ranges.
constexpr int64_t kRangeBytes = int64_t{1} << 20;

// Per-thread buffers for blocks of tokens (keys.tokens()) with at most K keys each, which walk
// their keys range by range (key_ranges.h).
struct AttentionScratch {
  int64_t K, D, Dv;
  ranges::BlockKeys keys;      //                     each token's valid keys, grouped by range
  AlignedVector<uint16_t> qt;  // [T][D/2][16][2]     Q^T as feature pairs (B of S^T), per token
  AlignedVector<uint16_t> kc;  // [32][D]             one chunk of gathered keys (A of S^T)
  AlignedVector<uint16_t> vc;  // [16][64][2]         one chunk of gathered values, key pairs interleaved (B of O)
  AlignedVector<uint16_t> p;   // [K_pad/32][16][32]  bf16 probabilities, head-major per 32 keys (A of O)
  AlignedVector<uint16_t> zero_row;
  AlignedVector<float> st;     // [K_pad][16]         S^T of one token and range
  AlignedVector<float> o;      // [16][Dv]            P V of one token and range
  AlignedVector<float> o_acc;  // [T][16][Dv]         running unnormalised outputs (unpack feature order)
  AlignedVector<float> m_acc;  // [T][16]             running max of the raw scores
  AlignedVector<float> l_acc;  // [T][16]             running sum of exp relative to it
  AttentionScratch(int64_t K_, int64_t D_, int64_t Dv_, int64_t Nk)
      : K(std::max<int64_t>(K_, 1)), D(D_), Dv(Dv_), keys(K_, Nk, bytes_per_key(D_, Dv_), kRangeBytes),
        qt(keys.tokens() * D_ * 16), kc(kKeyBlock * D_), vc(kKeyBlock * 64), p(padded_keys(K) * 16),
        zero_row(std::max(D_, Dv_)), st(padded_keys(K) * 16), o(16 * Dv_), o_acc(keys.tokens() * 16 * Dv_),
        m_acc(keys.tokens() * 16), l_acc(keys.tokens() * 16) {}
  static int64_t bytes_per_key(int64_t D, int64_t Dv) { return (D + Dv) * 2; }
};

// 16 x 16 transpose of 32-bit elements held in 16 registers.
inline void transpose16x16_epi32(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  // Now r[4i + c] holds, in each 128-bit lane L, column c of rows 4L' .. of block i; gather the
  // 128-bit lanes across the four register groups.
  for (int c = 0; c < 4; ++c) {
    t[c] = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x88);
    t[4 + c] = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xdd);
    t[8 + c] = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x88);
    t[12 + c] = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xdd);
  }
  for (int c = 0; c < 8; ++c) {
    r[c] = _mm512_shuffle_i32x4(t[c], t[8 + c], 0x88);
    r[8 + c] = _mm512_shuffle_i32x4(t[c], t[8 + c], 0xdd);
  }
}

template <int Hint>
inline void prefetch_row(const uint16_t* row, int64_t width) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t b = 0; b < width * 2; b += 64) _mm_prefetch(p + b, static_cast<_mm_hint>(Hint));
}

// Selected rows are scattered over K and V (mostly L3 or DRAM): rows this many keys ahead are
// requested before use. More would overflow the L1 miss buffers and stall the prefetches.
constexpr int64_t kAhead = 8;

// Pass 1 for keys [j0, j0 + 32): copies the key rows into kc (zero beyond n) and writes
// st[j0 .. j0 + 32) = K_chunk Q^T (tiles 0-1 results, 4-5 keys, 6 queries). (Requesting the
// value rows into L2 here as well measured no faster.)
inline void scores_chunk(const uint16_t* qt, const uint16_t* k, const int32_t* ids, int64_t n, int64_t j0,
                         int64_t D, AttentionScratch& w) {
  uint16_t* kc = w.kc.data();
  for (int64_t b = 0; b < kKeyBlock; ++b) {
    const int64_t j = j0 + b;
    if (j + kAhead < n) prefetch_row<_MM_HINT_T0>(k + int64_t{ids[j + kAhead]} * D, D);
    const uint16_t* src = j < n ? k + int64_t{ids[j]} * D : w.zero_row.data();
    for (int64_t f = 0; f < D; f += 32) _mm512_storeu_si512(kc + b * D + f, _mm512_loadu_si512(src + f));
  }
  _tile_zero(0);
  _tile_zero(1);
  for (int64_t f0 = 0; f0 < D; f0 += 32) {
    _tile_loadd(6, qt + f0 * 16, 64);
    _tile_loadd(4, kc + f0, D * 2);
    _tile_loadd(5, kc + 16 * D + f0, D * 2);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 5, 6);
  }
  _tile_stored(0, w.st.data() + j0 * 16, 64);
  _tile_stored(1, w.st.data() + (j0 + 16) * 16, 64);
}

// 2^x lane-wise for x <= 0: degree-4 fit of 2^f on the fraction (relative error < 3e-6, far
// below the bf16 rounding P gets), exponent by scalef. NaN stays NaN.
inline __m512 exp2_fast(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-127.0f), x);  // second operand returned for NaN
  const __m512 fi = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, fi);
  __m512 p = _mm512_set1_ps(1.3520603197212462e-2f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.2037428774422245e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4142749325119908e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.930066206638739e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.000002518130136f));
  return _mm512_scalef_ps(p, fi);
}

// P[:, j0 .. j0 + 32) = exp(S - m) rounded to bf16, head-major (rows of 32 keys), zero beyond
// n; adds the fp32 probabilities to l. st holds raw scores (unscaled); with c = scale * log2(e)
// and m2 = c * max, exp(scale * s - scale * max) = 2^(c s - m2).
inline void probabilities_chunk(const float* st, int64_t n, int64_t j0, __m512 c, __m512 m2, __m512& l,
                                uint16_t* p) {
  alignas(64) static const uint16_t kPair[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                                 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i pair = _mm512_load_si512(kPair);
  const __m512 zero = _mm512_setzero_ps();
  __m512i rows[16];
  for (int r = 0; r < 16; ++r) {
    const int64_t a = j0 + 2 * r, b = a + 1;
    const __m512 pa = a < n ? exp2_fast(_mm512_fmsub_ps(_mm512_loadu_ps(st + a * 16), c, m2)) : zero;
    const __m512 pb = b < n ? exp2_fast(_mm512_fmsub_ps(_mm512_loadu_ps(st + b * 16), c, m2)) : zero;
    l = _mm512_add_ps(l, _mm512_add_ps(pa, pb));
    // low 16 halves: pa, high: pb; interleaved to (pa[h], pb[h]) in 32-bit lane h.
    rows[r] = _mm512_permutexvar_epi16(pair, (__m512i)_mm512_cvtne2ps_pbh(pb, pa));
  }
  transpose16x16_epi32(rows);  // rows[h] = P[h][j0 .. j0 + 32)
  for (int h = 0; h < 16; ++h) _mm512_storeu_si512(p + j0 * 16 + h * 32, rows[h]);
}

// Pass 2 for keys [j0, j0 + 32) and features [c0, c0 + 16 NC): interleaves the value rows by
// key pairs into vc and accumulates P V into tiles 0 .. NC-1 (4 P, 5-7 V). The interleave is
// the in-lane unpack (cheaper than a full permute), so the 16 columns of the tiles for features
// [c, c + 32) are features c + {0-3, 8-11, 16-19, 24-27} (low) and c + {4-7, 12-15, ...} (high);
// unpermute_features puts them back in order.
template <int NC>
inline void values_chunk(const uint16_t* v, const int32_t* ids, int64_t n, int64_t j0, int64_t Dv, int64_t c0,
                         AttentionScratch& w) {
  static_assert(NC == 2 || NC == 4, "NC");
  uint16_t* vc = w.vc.data();
  constexpr int64_t kWidth = 16 * NC;  // features in this pass
  for (int64_t r = 0; r < kKeyBlock / 2; ++r) {
    const int64_t a = j0 + 2 * r;
    if (a + kAhead + 1 < n) {
      prefetch_row<_MM_HINT_T0>(v + int64_t{ids[a + kAhead]} * Dv + c0, kWidth);
      prefetch_row<_MM_HINT_T0>(v + int64_t{ids[a + kAhead + 1]} * Dv + c0, kWidth);
    }
    const uint16_t* va = a < n ? v + int64_t{ids[a]} * Dv + c0 : w.zero_row.data();
    const uint16_t* vb = a + 1 < n ? v + int64_t{ids[a + 1]} * Dv + c0 : w.zero_row.data();
    for (int64_t c = 0; c < kWidth; c += 32) {
      const __m512i x = _mm512_loadu_si512(va + c), y = _mm512_loadu_si512(vb + c);
      _mm512_store_si512(vc + r * kWidth * 2 + 2 * c, _mm512_unpacklo_epi16(x, y));
      _mm512_store_si512(vc + r * kWidth * 2 + 2 * c + 32, _mm512_unpackhi_epi16(x, y));
    }
  }
  constexpr int64_t stride = kWidth * 4;  // bytes per pair row
  _tile_loadd(4, w.p.data() + j0 * 16, 64);
  _tile_loadd(5, vc, stride);
  _tile_dpbf16ps(0, 4, 5);
  _tile_loadd(6, vc + 32, stride);
  _tile_dpbf16ps(1, 4, 6);
  if constexpr (NC == 4) {
    _tile_loadd(7, vc + 64, stride);
    _tile_dpbf16ps(2, 4, 7);
    _tile_loadd(5, vc + 96, stride);
    _tile_dpbf16ps(3, 4, 5);
  }
}

// o[:, c0 : c0 + 16 NC] = P V_sel[:, c0 : ...] over all key chunks.
// The probabilities of each chunk are computed (first feature group only) just before its
// values are gathered, so the exponentials overlap the value rows' memory latency.
template <int NC>
inline void weighted_values(const uint16_t* v, const int32_t* ids, int64_t n, int64_t Dv, int64_t c0, __m512 c,
                            __m512 m2, __m512& l, AttentionScratch& w) {
  _tile_zero(0);
  _tile_zero(1);
  if constexpr (NC == 4) {
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int64_t j0 = 0; j0 < n; j0 += kKeyBlock) {
    if (c0 == 0) probabilities_chunk(w.st.data(), n, j0, c, m2, l, w.p.data());
    values_chunk<NC>(v, ids, n, j0, Dv, c0, w);
  }
  float* o = w.o.data();
  _tile_stored(0, o + c0, Dv * 4);
  _tile_stored(1, o + c0 + 16, Dv * 4);
  if constexpr (NC == 4) {
    _tile_stored(2, o + c0 + 32, Dv * 4);
    _tile_stored(3, o + c0 + 48, Dv * 4);
  }
}

// Inverse of the unpack order of values_chunk for one group of 32 features: lo holds features
// {0-3, 8-11, 16-19, 24-27}, hi {4-7, 12-15, 20-23, 28-31}.
inline void unpermute_features(__m512 lo, __m512 hi, __m512& first, __m512& second) {
  const __m512i a = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i b = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  first = _mm512_permutex2var_ps(lo, a, hi);
  second = _mm512_permutex2var_ps(lo, b, hi);
}

// Stages token `slot` of a block: Q^T pairs of its nh <= 16 heads (q: head 0's row, heads
// q_stride apart; padding heads zero), its n > 0 valid keys grouped by range, an empty state.
inline void stage_token(AttentionScratch& w, int64_t slot, const uint16_t* q, int64_t q_stride, int64_t nh,
                        const int64_t* ids, int64_t n) {
  const int64_t D = w.D;
  uint16_t* qt = w.qt.data() + slot * D * 16;
  uint32_t* qt32 = reinterpret_cast<uint32_t*>(qt);
  std::fill(qt, qt + D * 16, uint16_t{0});
  for (int64_t h = 0; h < nh; ++h) {
    const uint32_t* qh = reinterpret_cast<const uint32_t*>(q + h * q_stride);
    for (int64_t p = 0; p < D / 2; ++p) qt32[p * 16 + h] = qh[p];
  }
  w.keys.stage(slot, ids, n);
  std::fill(w.m_acc.begin() + slot * 16, w.m_acc.begin() + slot * 16 + 16, -std::numeric_limits<float>::infinity());
  std::fill(w.l_acc.begin() + slot * 16, w.l_acc.begin() + slot * 16 + 16, 0.0f);
  std::fill(w.o_acc.begin() + slot * 16 * w.Dv, w.o_acc.begin() + (slot + 1) * 16 * w.Dv, 0.0f);
}

// Attention of one staged token over its n keys ids of one range, merged into its state.
// c = scale * log2(e): exp(scale (s - m)) = 2^(c s - c m) for raw scores s.
inline void attend_range(AttentionScratch& w, int64_t slot, const uint16_t* k, const uint16_t* v, const int32_t* ids,
                         int64_t n, __m512 c) {
  const int64_t D = w.D, Dv = w.Dv;
  const uint16_t* qt = w.qt.data() + slot * D * 16;
  for (int64_t j = 0; j < std::min(n, kAhead); ++j) prefetch_row<_MM_HINT_T0>(k + int64_t{ids[j]} * D, D);
  // Pass 1: scores S^T (unscaled: the scale is applied in the exponent) and their lane-wise max.
  const float* st = w.st.data();
  __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t j0 = 0; j0 < n; j0 += kKeyBlock) {
    scores_chunk(qt, k, ids, n, j0, D, w);
    for (int64_t j = j0; j < std::min(n, j0 + kKeyBlock); ++j)
      mx = _mm512_max_ps(_mm512_loadu_ps(st + j * 16), mx);  // NaN keys are skipped here; they make l NaN
  }
  // Merge with the state: new max, and the factors that rescale the old sum and output.
  float* m_acc = w.m_acc.data() + slot * 16;
  float* l_acc = w.l_acc.data() + slot * 16;
  const __m512 m_old = _mm512_load_ps(m_acc);
  const __m512 m_new = _mm512_max_ps(mx, m_old);
  const __m512 m2 = _mm512_mul_ps(m_new, c);
  const __m512 keep = exp2_fast(_mm512_mul_ps(_mm512_sub_ps(m_old, m_new), c));  // 0 for the first range
  // Pass 2: O = P V, 64 features at a time (4 result tiles); l sums P in fp32 (a NaN score, or
  // +inf, makes its head's l NaN).
  __m512 l = _mm512_setzero_ps();
  for (int64_t c0 = 0; c0 < Dv; c0 += 64) {
    if (Dv - c0 >= 64)
      weighted_values<4>(v, ids, n, Dv, c0, c, m2, l, w);
    else
      weighted_values<2>(v, ids, n, Dv, c0, c, m2, l, w);
  }
  _mm512_store_ps(m_acc, m_new);
  _mm512_store_ps(l_acc, _mm512_fmadd_ps(_mm512_load_ps(l_acc), keep, l));
  alignas(64) float kk[16];
  _mm512_store_ps(kk, keep);
  float* o_acc = w.o_acc.data() + slot * 16 * Dv;
  const float* o = w.o.data();
  for (int64_t h = 0; h < 16; ++h) {
    const __m512 f = _mm512_set1_ps(kk[h]);
    for (int64_t x = h * Dv; x < (h + 1) * Dv; x += 16)
      _mm512_store_ps(o_acc + x, _mm512_fmadd_ps(_mm512_load_ps(o_acc + x), f, _mm512_load_ps(o + x)));
  }
}

// Runs every staged token of a block (slots [0, tokens)) over every key range.
inline void attend_block(AttentionScratch& w, int64_t tokens, const uint16_t* k, const uint16_t* v, float scale) {
  const __m512 c = _mm512_set1_ps(scale * 1.44269504088896341f);
  w.keys.walk(tokens, [&](int64_t slot, const int32_t* ids, int64_t n) { attend_range(w, slot, k, v, ids, n, c); });
}

// Writes token `slot`'s normalised output (out: head 0's row, heads out_stride apart) and
// log-sum-exp (head 0's, heads lse_stride apart) for its nh heads.
inline void finish_token(const AttentionScratch& w, int64_t slot, int64_t nh, float scale, uint16_t* out,
                         int64_t out_stride, float* lse, int64_t lse_stride) {
  const int64_t Dv = w.Dv;
  const float* m = w.m_acc.data() + slot * 16;
  const float* l = w.l_acc.data() + slot * 16;
  const float* o = w.o_acc.data() + slot * 16 * Dv;
  for (int64_t h = 0; h < nh; ++h) {
    lse[h * lse_stride] = m[h] * scale + std::log(l[h]);  // NaN when l is
    const __m512 inv = _mm512_set1_ps(1.0f / l[h]);
    uint16_t* orow = out + h * out_stride;
    for (int64_t x = 0; x < Dv; x += 32) {
      __m512 first, second;
      unpermute_features(_mm512_load_ps(o + h * Dv + x), _mm512_load_ps(o + h * Dv + x + 16), first, second);
      _mm512_storeu_si512(orow + x, (__m512i)_mm512_cvtne2ps_pbh(_mm512_mul_ps(second, inv), _mm512_mul_ps(first, inv)));
    }
  }
}

// The block forward of this header behind the interface of lanes::BlockForward: one per thread
// (it configures the tiles of the thread it is made on and releases them when destroyed).
class BlockForward {
 public:
  BlockForward(int64_t K, int64_t Nk, int64_t D, int64_t Dv, float scale) : w_(K, D, Dv, Nk), scale_(scale) {
    configure_full_tiles();
  }
  ~BlockForward() { _tile_release(); }
  BlockForward(const BlockForward&) = delete;
  BlockForward& operator=(const BlockForward&) = delete;

  // Tokens per block (the stage() slots) for Nk keys of widths D, Dv.
  static int64_t block_tokens(int64_t Nk, int64_t D, int64_t Dv) {
    return ranges::tokens_per_block(Nk, AttentionScratch::bytes_per_key(D, Dv), kRangeBytes);
  }

  void stage(int64_t slot, const uint16_t* q, int64_t q_stride, int64_t nh, const int64_t* ids, int64_t n) {
    stage_token(w_, slot, q, q_stride, nh, ids, n);
  }
  void attend(int64_t tokens, int64_t /*nh*/, const uint16_t* k, const uint16_t* v) {
    attend_block(w_, tokens, k, v, scale_);
  }
  void finish(int64_t slot, int64_t nh, uint16_t* out, int64_t out_stride, float* lse, int64_t lse_stride) const {
    finish_token(w_, slot, nh, scale_, out, out_stride, lse, lse_stride);
  }

 private:
  AttentionScratch w_;
  float scale_;
};

}  // namespace amx
#endif  // AMX
