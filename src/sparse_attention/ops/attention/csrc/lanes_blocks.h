// fp32 sparse attention forward for blocks of query tokens of a KV group whose heads (up to
// 16) share a selection (per-head selections: groups of one head), on the lane kernels of
// lanes.h (one 16-float value holds all heads of a key's scores).
//
// A block walks its keys range by range (key_ranges.h) so that the gathered K and V rows
// mostly come from L2; each token keeps a running max, sum and unnormalised output per head,
// rescaled when a later range raises the max (online softmax). Needs D, D_v multiples of 16.
#pragma once

#include "aligned_vector.h"
#include "key_ranges.h"
#include "lanes.h"

#if defined(SA_LANES)
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace lanes {

// K and V bytes per key range (key_ranges.h). Larger than the bf16 path's: here the FMA loops,
// not the gathers, bound the time, and fewer ranges mean fewer partial blocks and merges
// (blocks of 32 tokens, N = 32768, K = 2048: 1547 ms with 4 MiB ranges, 1659 ms with 1 MiB,
// 1686 ms with one range; blocks of 128 tokens: ~1300 ms with 2 MiB, ~1340 with 1 MiB, ~1450
// with 4 MiB, whose range and token states no longer fit in L2 together).
constexpr int64_t kRangeBytes = int64_t{2} << 20;

class BlockForward {
 public:
  // K: most keys per token; Nk: key positions; D, Dv: key and value widths; scale: of the scores.
  BlockForward(int64_t K, int64_t Nk, int64_t D, int64_t Dv, float scale)
      : D_(D), Dv_(Dv), scale_(scale), keys_(K, Nk, bytes_per_key(D, Dv), kRangeBytes), qt_(keys_.tokens() * D * kLanes),
        st_(std::max<int64_t>(K, 1) * kLanes), o_acc_(keys_.tokens() * kLanes * Dv), m_acc_(keys_.tokens() * kLanes),
        l_acc_(keys_.tokens() * kLanes), nan_(keys_.tokens()), krows_(std::max<int64_t>(K, 1)),
        vrows_(std::max<int64_t>(K, 1)) {}

  // Tokens per block (the stage() slots) for Nk keys of widths D, Dv.
  static int64_t block_tokens(int64_t Nk, int64_t D, int64_t Dv) {
    return ranges::tokens_per_block(Nk, bytes_per_key(D, Dv), kRangeBytes);
  }

  // Token `slot` of the block: the scaled Q^T of its nh <= 16 heads (q: head 0's row, heads
  // q_stride apart; padding lanes zero), its n > 0 valid keys ids, an empty softmax state.
  void stage(int64_t slot, const float* q, int64_t q_stride, int64_t nh, const int64_t* ids, int64_t n) {
    float* qt = qt_.data() + slot * D_ * kLanes;
    std::fill(qt, qt + D_ * kLanes, 0.0f);
    for (int64_t h = 0; h < nh; ++h)
      for (int64_t d = 0; d < D_; ++d) qt[d * kLanes + h] = q[h * q_stride + d] * scale_;
    keys_.stage(slot, ids, n);
    std::fill(m_acc_.begin() + slot * kLanes, m_acc_.begin() + (slot + 1) * kLanes,
              -std::numeric_limits<float>::infinity());
    std::fill(l_acc_.begin() + slot * kLanes, l_acc_.begin() + (slot + 1) * kLanes, 0.0f);
    std::fill(o_acc_.begin() + slot * kLanes * Dv_, o_acc_.begin() + (slot + 1) * kLanes * Dv_, 0.0f);
    nan_[slot] = 0;
  }

  // Runs tokens [0, tokens) of nh heads over every range of the group's keys k [Nk][D] and
  // values v [Nk][Dv].
  void attend(int64_t tokens, int64_t nh, const float* k, const float* v) {
    keys_.walk(tokens, [&](int64_t slot, const int32_t* ids, int64_t n) { attend_range(slot, nh, k, v, ids, n); });
  }

  // Writes token `slot`'s normalised output (out: head 0's row, heads out_stride apart) and
  // log-sum-exp (head 0's, heads lse_stride apart) for its nh heads; NaN for a head that met one.
  void finish(int64_t slot, int64_t nh, float* out, int64_t out_stride, float* lse, int64_t lse_stride) const {
    const float* m = m_acc_.data() + slot * kLanes;
    const float* l = l_acc_.data() + slot * kLanes;
    const float* o = o_acc_.data() + slot * kLanes * Dv_;
    for (int64_t h = 0; h < nh; ++h) {
      const bool is_nan = (nan_[slot] >> h) & 1;
      lse[h * lse_stride] = is_nan ? std::numeric_limits<float>::quiet_NaN() : m[h] + std::log(l[h]);
      const F16 inv = simd::set1(is_nan ? std::numeric_limits<float>::quiet_NaN() : 1.0f / l[h]);
      for (int64_t c = 0; c < Dv_; c += kLanes)
        simd::storeu(out + h * out_stride + c, simd::mul(simd::load(o + h * Dv_ + c), inv));
    }
  }

 private:
  // Token `slot` over its n keys ids of one range, merged into its state.
  void attend_range(int64_t slot, int64_t nh, const float* k, const float* v, const int32_t* ids, int64_t n) {
    for (int64_t j = 0; j < n; ++j) {
      krows_[j] = k + int64_t{ids[j]} * D_;
      vrows_[j] = v + int64_t{ids[j]} * Dv_;
    }
    float* st = st_.data();
    Mask16 nan = 0;
    const F16 mx = scores(qt_.data() + slot * D_ * kLanes, krows_.data(), n, D_, st, nan, vrows_.data(), Dv_);
    nan_[slot] |= nan;
    float* m_acc = m_acc_.data() + slot * kLanes;
    float* l_acc = l_acc_.data() + slot * kLanes;
    const F16 m_old = simd::load(m_acc);
    const F16 m_new = simd::max(mx, m_old);
    const F16 keep = simd::exp(simd::sub(m_old, m_new));  // ~0 for the first range
    F16 l = simd::zero();
    for (int64_t j = 0; j < n; ++j) {
      const F16 p = simd::exp(simd::sub(simd::load(st + j * kLanes), m_new));
      simd::store(st + j * kLanes, p);
      l = simd::add(l, p);
    }
    simd::store(m_acc, m_new);
    simd::store(l_acc, simd::fmadd(simd::load(l_acc), keep, l));
    alignas(64) float kk[kLanes];
    simd::store(kk, keep);
    float* o = o_acc_.data() + slot * kLanes * Dv_;
    for (int64_t h = 0; h < nh; ++h) {
      const F16 f = simd::set1(kk[h]);
      for (int64_t c = h * Dv_; c < (h + 1) * Dv_; c += kLanes)
        simd::store(o + c, simd::mul(simd::load(o + c), f));
    }
    weighted_rows(st, nh, vrows_.data(), n, Dv_, o, /*accumulate=*/true);
  }

  static int64_t bytes_per_key(int64_t D, int64_t Dv) { return (D + Dv) * int64_t{sizeof(float)}; }

  int64_t D_, Dv_;
  float scale_;
  ranges::BlockKeys keys_;
  AlignedVector<float> qt_;     // [T][D][16]   scaled Q^T per token
  AlignedVector<float> st_;     // [K][16]      S^T, then P^T, of one token and range
  AlignedVector<float> o_acc_;  // [T][16][Dv]  running unnormalised outputs
  AlignedVector<float> m_acc_;  // [T][16]      running max of the scaled scores
  AlignedVector<float> l_acc_;  // [T][16]      running sum of exp relative to it
  std::vector<Mask16> nan_;  // [T]          heads that met a NaN score
  std::vector<const float*> krows_, vrows_;  // [K] gathered rows of one range
};

}  // namespace lanes
#endif  // SA_LANES
