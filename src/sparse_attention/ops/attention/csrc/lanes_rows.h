// fp32 sparse attention forward for blocks of query tokens of a KV group with few heads (1 to
// kMaxHeads: MHA, per-head selections, GQA with small groups), walking keys range by range like
// lanes_blocks.h but with one score per (head, key) instead of one register per key.
//
// The lane kernels of lanes.h put the heads of a group in the 16 lanes of a register: a
// key's scores cost D FMAs whatever the number of heads, so a group of one head wastes 15 of
// 16 lanes. Here the lanes run along the features instead: q_h . k_j is D/16 FMAs into one
// register, and 16 such registers (16 keys) are reduced to one register of 16 scores by a
// tree of unpacks, shuffles and adds (~3 operations per score). Softmax then runs 16 keys per
// register, and P V adds p[h][j] * v_j into registers holding whole rows of the output.
// Needs D a multiple of 16 up to 128 (the query rows of a head stay in registers) and D_v a
// multiple of 16.
#pragma once

#include "aligned_vector.h"
#include "key_ranges.h"
#include "lanes.h"

#if defined(SA_LANES)

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace rows {

using simd::F16;
using simd::Mask16;

// Most heads per group. A (head, key) score costs D/16 FMAs and ~3 reduction steps here, D FMAs
// per key for all heads in the lane kernels: measured (N = 16384, K = 1024, 16 query heads,
// random causal selections) 8 heads per group ~470 ms here vs ~540 ms on the lane kernels,
// 16 heads ~410 vs ~360 ms.
constexpr int64_t kMaxHeads = 8;
constexpr int64_t kRangeBytes = int64_t{2} << 20;  // K and V bytes per key range (as lanes_blocks.h)

inline bool fits(int64_t nh, int64_t D, int64_t Dv) {
  return nh >= 1 && nh <= kMaxHeads && D % 16 == 0 && D <= 128 && Dv % 16 == 0;
}

// The backward also scores dO against value rows: D_v up to 128 too.
inline bool fits_backward(int64_t nh, int64_t D, int64_t Dv) { return fits(nh, D, Dv) && Dv <= 128; }

// Score rows padded to whole blocks of 16 keys, for at most K keys.
inline int64_t padded_keys(int64_t K) { return (std::max<int64_t>(K, 1) + 15) / 16 * 16; }

// S[h][j] = q[h] . rows[j] for h < nh, j < n (S rows S_stride apart, written up to n rounded up
// to 16); q: [nh][16 NC]. Blocks of 16 keys (the last one repeating its last row) serve all heads
// while in L1. next_rows (width next_width), read next by the caller, are prefetched into L2.
template <int NC>
inline void scores(const float* q, int64_t nh, const float* const* rows, int64_t n, float* S, int64_t S_stride,
                   const float* const* next_rows, int64_t next_width) {
  constexpr int64_t kAhead = 32;  // keys prefetched ahead: selected rows mostly miss L2
  lanes::prefetch_rows(rows, 0, kAhead, n, 16 * NC);
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    lanes::prefetch_rows(rows, j0 + kAhead, 16, n, 16 * NC);
    if (next_rows) lanes::prefetch_rows<_MM_HINT_T1>(next_rows, j0, 16, n, next_width);
    const float* r[16];
    for (int b = 0; b < 16; ++b) r[b] = rows[std::min<int64_t>(j0 + b, n - 1)];
    for (int64_t h = 0; h < nh; ++h) {
#if defined(SA_LANES_AVX2)
      // 16 keys of two-register accumulators would need 32 of AVX2's 16 registers: instead each
      // key sums into one register of 8 lanes, 8 keys at a time (8 accumulators + the query).
      const float* qh = q + h * 16 * NC;
      __m256 half[2];
      for (int part = 0; part < 2; ++part) {
        __m256 acc[8];
        for (int b = 0; b < 8; ++b) {
          const float* rb = r[8 * part + b];
          acc[b] = _mm256_mul_ps(_mm256_loadu_ps(qh), _mm256_loadu_ps(rb));
          for (int c = 1; c < 2 * NC; ++c)
            acc[b] = _mm256_fmadd_ps(_mm256_loadu_ps(qh + 8 * c), _mm256_loadu_ps(rb + 8 * c), acc[b]);
        }
        half[part] = simd::sum8(acc);
      }
      simd::storeu(S + h * S_stride + j0, F16{half[0], half[1]});
#else
      F16 qv[NC];
      for (int c = 0; c < NC; ++c) qv[c] = simd::loadu(q + h * 16 * NC + 16 * c);
      F16 acc[16];
      for (int b = 0; b < 16; ++b) {
        acc[b] = simd::mul(qv[0], simd::loadu(r[b]));
        for (int c = 1; c < NC; ++c) acc[b] = simd::fmadd(qv[c], simd::loadu(r[b] + 16 * c), acc[b]);
      }
      simd::storeu(S + h * S_stride + j0, simd::sum16(acc));
#endif
    }
  }
}

// scores<D / 16>: D a multiple of 16 up to 128.
inline void scores(const float* q, int64_t nh, int64_t D, const float* const* rows, int64_t n, float* S,
                   int64_t S_stride, const float* const* next_rows = nullptr, int64_t next_width = 0) {
  switch (D / 16) {
    case 1: scores<1>(q, nh, rows, n, S, S_stride, next_rows, next_width); break;
    case 2: scores<2>(q, nh, rows, n, S, S_stride, next_rows, next_width); break;
    case 3: scores<3>(q, nh, rows, n, S, S_stride, next_rows, next_width); break;
    case 4: scores<4>(q, nh, rows, n, S, S_stride, next_rows, next_width); break;
    case 5: scores<5>(q, nh, rows, n, S, S_stride, next_rows, next_width); break;
    case 6: scores<6>(q, nh, rows, n, S, S_stride, next_rows, next_width); break;
    case 7: scores<7>(q, nh, rows, n, S, S_stride, next_rows, next_width); break;
    default: scores<8>(q, nh, rows, n, S, S_stride, next_rows, next_width); break;
  }
}

// O[h0 + h][c0 : c0 + 16 NC] += sum_{j < n} P[h0 + h][j] * rows[j][c0 : ...] for h < HB.
// KU keys per step with their own accumulators, so that HB * NC * KU independent FMA chains
// (16 for HB * KU = 4, NC = 4) hide the FMA latency.
template <int HB, int NC, int KU>
inline void weighted_block(const float* P, int64_t P_stride, int64_t h0, const float* const* rows, int64_t n,
                           int64_t c0, int64_t Dv, float* O) {
  F16 acc[KU][HB][NC];
  for (int u = 0; u < KU; ++u)
    for (int h = 0; h < HB; ++h)
      for (int c = 0; c < NC; ++c)
        acc[u][h][c] = u == 0 ? simd::loadu(O + (h0 + h) * Dv + c0 + 16 * c) : simd::zero();
  auto step = [&](int u, int64_t j) {
    if (h0 == 0) lanes::prefetch_rows(rows, j + 8, 1, n, Dv);
    const float* r = rows[j] + c0;
    F16 v[NC];
    for (int c = 0; c < NC; ++c) v[c] = simd::loadu(r + 16 * c);
    for (int h = 0; h < HB; ++h) {
      const F16 p = simd::set1(P[(h0 + h) * P_stride + j]);
      for (int c = 0; c < NC; ++c) acc[u][h][c] = simd::fmadd(p, v[c], acc[u][h][c]);
    }
  };
  int64_t j = 0;
  for (; j + KU <= n; j += KU)
    for (int u = 0; u < KU; ++u) step(u, j + u);
  for (; j < n; ++j) step(0, j);
  for (int h = 0; h < HB; ++h)
    for (int c = 0; c < NC; ++c) {
      F16 sum = acc[0][h][c];
      for (int u = 1; u < KU; ++u) sum = simd::add(sum, acc[u][h][c]);
      simd::storeu(O + (h0 + h) * Dv + c0 + 16 * c, sum);
    }
}

// Dispatch of weighted_block over blocks of up to 4 heads (2 on AVX2: half the registers).
template <int NC>
inline void weighted_chunk(const float* P, int64_t P_stride, int64_t nh, const float* const* rows, int64_t n,
                           int64_t c0, int64_t Dv, float* O) {
  int64_t h0 = 0;
  if constexpr (lanes::kWide) {
    for (; h0 + 4 <= nh; h0 += 4) weighted_block<4, NC, 1>(P, P_stride, h0, rows, n, c0, Dv, O);
    switch (nh - h0) {
      case 3: weighted_block<3, NC, 1>(P, P_stride, h0, rows, n, c0, Dv, O); break;
      case 2: weighted_block<2, NC, 2>(P, P_stride, h0, rows, n, c0, Dv, O); break;
      case 1: weighted_block<1, NC, 4>(P, P_stride, h0, rows, n, c0, Dv, O); break;
      default: break;
    }
  } else {
    for (; h0 + 2 <= nh; h0 += 2) weighted_block<2, NC, 1>(P, P_stride, h0, rows, n, c0, Dv, O);
    if (h0 < nh) weighted_block<1, NC, 2>(P, P_stride, h0, rows, n, c0, Dv, O);
  }
}

// One head on AVX2: all of a 64-feature chunk at once (8 accumulator registers, the value rows
// read by the FMAs straight from L1), one pass over the keys instead of two 32-feature passes.
inline bool single_head_pass(int64_t nh, int64_t Dv, int64_t c0) { return !lanes::kWide && nh == 1 && Dv - c0 >= 64; }

// O[h][:] += sum_j P[h][j] * rows[j][:] for h < nh; O: [nh][Dv], Dv % 16 == 0.
inline void weighted_rows(const float* P, int64_t P_stride, int64_t nh, const float* const* rows, int64_t n,
                          int64_t Dv, float* O) {
  constexpr int kChunks = lanes::kValueChunks;  // features per pass: 16 * kChunks
  for (int64_t c0 = 0; c0 < Dv; c0 += 16 * kChunks) {
    if (single_head_pass(nh, Dv, c0)) {
      weighted_block<1, 4, 1>(P, P_stride, 0, rows, n, c0, Dv, O);
      c0 += 64 - 16 * kChunks;
      continue;
    }
    switch (std::min<int64_t>(kChunks, (Dv - c0) / 16)) {
      case 4: weighted_chunk<4>(P, P_stride, nh, rows, n, c0, Dv, O); break;
      case 3: weighted_chunk<3>(P, P_stride, nh, rows, n, c0, Dv, O); break;
      case 2: weighted_chunk<2>(P, P_stride, nh, rows, n, c0, Dv, O); break;
      default: weighted_chunk<1>(P, P_stride, nh, rows, n, c0, Dv, O); break;
    }
  }
}

class BlockForward {
 public:
  // K: most keys per token; Nk: key positions; D, Dv: key and value widths; scale: of the scores;
  // kept_heads: heads per token whose probabilities add_probabilities() will need (0: none).
  BlockForward(int64_t K, int64_t Nk, int64_t D, int64_t Dv, float scale, int64_t kept_heads = 0)
      : D_(D), Dv_(Dv), Kp_(padded_keys(K)), kept_(kept_heads), scale_(scale),
        keys_(K, Nk, bytes_per_key(D, Dv), kRangeBytes), q_(keys_.tokens() * kMaxHeads * D),
        s_(kMaxHeads * Kp_), o_acc_(keys_.tokens() * kMaxHeads * Dv), m_acc_(keys_.tokens() * kMaxHeads),
        l_acc_(keys_.tokens() * kMaxHeads), nan_(keys_.tokens() * kMaxHeads), krows_(Kp_), vrows_(Kp_),
        probs_(keys_.tokens() * kept_heads * Kp_), range_max_(keys_.tokens() * kept_heads * keys_.ranges()),
        mean_(Kp_) {}

  // Tokens per block (the stage() slots) for Nk keys of widths D, Dv.
  static int64_t block_tokens(int64_t Nk, int64_t D, int64_t Dv) {
    return ranges::tokens_per_block(Nk, bytes_per_key(D, Dv), kRangeBytes);
  }

  // The key ranges (ranges::BlockKeys) its blocks walk: log2 of the keys per range, and how many.
  int shift() const { return keys_.shift(); }
  int64_t ranges() const { return keys_.ranges(); }

  // Adds weight * P[h][key] summed over token `slot`'s nh (<= kept_heads) heads to the slot of each
  // of its keys, target_row[slot_of[o]] for its o-th key in grouped order (slot_of from
  // ranges::grouped_positions; null: slot o), P the final probabilities: each range's are kept relative to
  // the running max of that range's visit and rescaled here by exp(max_r - lse).
  void add_probabilities(int64_t slot, int64_t nh, const int32_t* slot_of, float weight, float* target_row) {
    const int64_t* start = keys_.range_starts(slot);
    const int64_t n = start[keys_.ranges()];
    float* mean = mean_.data();
    std::fill_n(mean, n, 0.0f);
    for (int64_t h = 0; h < nh; ++h) {
      const int64_t i = slot * kMaxHeads + h;
      const float lse = nan_[i] ? std::numeric_limits<float>::quiet_NaN() : m_acc_[i] + std::log(l_acc_[i]);
      const float* p = probs_.data() + (slot * kept_ + h) * Kp_;
      const float* range_max = range_max_.data() + (slot * kept_ + h) * keys_.ranges();
      for (int64_t r = 0; r < keys_.ranges(); ++r) {
        if (start[r] == start[r + 1]) continue;
        const F16 c = simd::set1(std::exp(range_max[r] - lse) * weight);
        int64_t o = start[r];
        for (; o + 16 <= start[r + 1]; o += 16)
          simd::storeu(mean + o, simd::fmadd(simd::loadu(p + o), c, simd::loadu(mean + o)));
        for (; o < start[r + 1]; ++o) mean[o] += p[o] * simd::first(c);
      }
    }
    int64_t o = 0;
    if (!slot_of)  // the o-th key is in slot o
      for (; o + 16 <= n; o += 16)
        simd::storeu(target_row + o, simd::add(simd::loadu(target_row + o), simd::loadu(mean + o)));
    for (; o < n; ++o) target_row[slot_of ? slot_of[o] : o] += mean[o];
  }

  // Token `slot` of the block: the scaled queries of its nh heads (q: head 0's row, heads q_stride
  // apart), its n > 0 valid keys ids, an empty softmax state.
  void stage(int64_t slot, const float* q, int64_t q_stride, int64_t nh, const int64_t* ids, int64_t n) {
    stage_keys(slot, ids, n);
    stage_heads(slot, q, q_stride, nh);
  }

  // stage() in two steps, so that KV groups sharing a selection group its keys by range once:
  // the keys (kept until restaged), then the queries and an empty state of one group's heads.
  void stage_keys(int64_t slot, const int64_t* ids, int64_t n) { keys_.stage(slot, ids, n); }
  void stage_heads(int64_t slot, const float* q, int64_t q_stride, int64_t nh) {
    float* qs = q_.data() + slot * kMaxHeads * D_;
    for (int64_t h = 0; h < nh; ++h)
      for (int64_t d = 0; d < D_; ++d) qs[h * D_ + d] = q[h * q_stride + d] * scale_;
    const int64_t state = slot * kMaxHeads;
    std::fill_n(m_acc_.begin() + state, kMaxHeads, -std::numeric_limits<float>::infinity());
    std::fill_n(l_acc_.begin() + state, kMaxHeads, 0.0f);
    std::fill_n(nan_.begin() + state, kMaxHeads, uint8_t{0});
    std::fill_n(o_acc_.begin() + state * Dv_, kMaxHeads * Dv_, 0.0f);
  }

  // Runs tokens [0, tokens) of nh heads over every range of the group's keys k [Nk][D] and
  // values v [Nk][Dv].
  void attend(int64_t tokens, int64_t nh, const float* k, const float* v) {
    keys_.walk(tokens, [&](int64_t slot, const int32_t* ids, int64_t n) { attend_range(slot, nh, k, v, ids, n); });
  }

  // Writes token `slot`'s normalised output (out: head 0's row, heads out_stride apart) and
  // log-sum-exp (head 0's, heads lse_stride apart) for its nh heads; NaN for a head that met one.
  void finish(int64_t slot, int64_t nh, float* out, int64_t out_stride, float* lse, int64_t lse_stride) const {
    for (int64_t h = 0; h < nh; ++h) {
      const int64_t i = slot * kMaxHeads + h;
      const float nan = std::numeric_limits<float>::quiet_NaN();
      lse[h * lse_stride] = nan_[i] ? nan : m_acc_[i] + std::log(l_acc_[i]);
      const F16 inv = simd::set1(nan_[i] ? nan : 1.0f / l_acc_[i]);
      const float* o = o_acc_.data() + i * Dv_;
      for (int64_t c = 0; c < Dv_; c += 16)
        simd::storeu(out + h * out_stride + c, simd::mul(simd::loadu(o + c), inv));
    }
  }

 private:
  static int64_t bytes_per_key(int64_t D, int64_t Dv) { return (D + Dv) * int64_t{sizeof(float)}; }

  // Token `slot` over its n keys ids of one range, merged into its state.
  void attend_range(int64_t slot, int64_t nh, const float* k, const float* v, const int32_t* ids, int64_t n) {
    for (int64_t j = 0; j < n; ++j) {
      krows_[j] = k + int64_t{ids[j]} * D_;
      vrows_[j] = v + int64_t{ids[j]} * Dv_;
    }
    const float* q = q_.data() + slot * kMaxHeads * D_;
    float* S = s_.data();
    scores(q, nh, D_, krows_.data(), n, S, Kp_, vrows_.data(), Dv_);
    const int tail = n % 16 == 0 ? 16 : static_cast<int>(n % 16);  // live scores of the last block
    for (int64_t h = 0; h < nh; ++h) {
      const int64_t i = slot * kMaxHeads + h;
      float* s = S + h * Kp_;
      // Max and NaN check over the scores: the padding of the last block repeats its last key's
      // score (scores() pads with the last row), so it changes neither.
      F16 mx = simd::set1(-std::numeric_limits<float>::infinity());
      Mask16 nan = 0;
      for (int64_t j = 0; j < n; j += 16) {
        const F16 x = simd::loadu(s + j);
        nan |= simd::unordered(x);
        mx = simd::max(x, mx);  // a NaN keeps the previous max (flagged)
      }
      nan_[i] |= nan != 0;
      const float m_old = m_acc_[i];
      const float m_new = std::max(m_old, simd::reduce_max(mx));
      // exp(m_old - m_new): ~0 for the first range (simd::exp clamps -inf to -87).
      const float keep = simd::first(simd::exp(simd::set1(m_old - m_new)));
      F16 l = simd::zero();
      const F16 mv = simd::set1(m_new);
      for (int64_t j = 0; j < n; j += 16) {
        F16 p = simd::exp(simd::sub(simd::loadu(s + j), mv));
        if (j + 16 > n) p = simd::keep_first(p, tail);
        simd::storeu(s + j, p);
        l = simd::add(l, p);
      }
      m_acc_[i] = m_new;
      l_acc_[i] = l_acc_[i] * keep + simd::reduce_add(l);
      if (kept_ > 0) {  // this range's probabilities relative to m_new, for add_probabilities()
        const int64_t kept = slot * kept_ + h;
        std::copy(s, s + n, probs_.data() + kept * Kp_ + (ids - keys_.token_ids(slot)));
        range_max_[kept * keys_.ranges() + (int64_t{ids[0]} >> keys_.shift())] = m_new;
      }
      float* o = o_acc_.data() + i * Dv_;
      const F16 kv = simd::set1(keep);
      for (int64_t c = 0; c < Dv_; c += 16) simd::storeu(o + c, simd::mul(simd::loadu(o + c), kv));
    }
    weighted_rows(S, Kp_, nh, vrows_.data(), n, Dv_, o_acc_.data() + slot * kMaxHeads * Dv_);
  }

  int64_t D_, Dv_, Kp_, kept_;
  float scale_;
  ranges::BlockKeys keys_;
  AlignedVector<float> q_;      // [T][8][D]    scaled queries per token
  AlignedVector<float> s_;      // [8][Kp]      scores, then probabilities, of one token and range
  AlignedVector<float> o_acc_;  // [T][8][Dv]   running unnormalised outputs
  std::vector<float> m_acc_;    // [T][8]       running max of the scaled scores
  std::vector<float> l_acc_;    // [T][8]       running sum of exp relative to it
  std::vector<uint8_t> nan_;    // [T][8]       heads that met a NaN score
  std::vector<const float*> krows_, vrows_;  // [Kp] gathered rows of one range
  std::vector<float> probs_;      // [T][kept][Kp]      probabilities per range visit (grouped order)
  std::vector<float> range_max_;  // [T][kept][ranges]  the running max they are relative to
  std::vector<float> mean_;       // [Kp]               one token's weighted sum over heads
};

}  // namespace rows
#endif  // SA_LANES
