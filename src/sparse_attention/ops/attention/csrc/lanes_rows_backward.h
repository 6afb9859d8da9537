// fp32 sparse attention backward for blocks of query tokens of a KV group with few heads
// (rows::fits_backward), walking keys range by range (key_ranges.h) as the forward does.
//
// Per token and key the backward reads the key and value rows and adds into the dK and dV rows,
// all scattered over tables far larger than L2 at long lengths. Unlike the forward it needs no
// running state across ranges: with the forward's log-sum-exp, P = exp(S - lse) and
// dS = P (dP - delta) of one key depend on that key alone, so a range's keys are finished when
// visited; only dQ = dS K is summed over the ranges, in a per-token accumulator. While a block
// works in one range, that range's K, V, dK and dV rows stay in L2 or near it.
#pragma once

#include "lanes_rows.h"

#include <unistd.h>

#include <algorithm>
#include <type_traits>

#if defined(SA_LANES)

namespace rows {

// From the scores S and dP = dO V^T of nh heads over n keys ([nh][kp], padded to whole blocks of
// 16 as scores() writes them), in place: S -> P = exp(S - lse_h), dP -> dS = P (dP - delta_h).
inline void probabilities_and_ds(float* S, float* dS, int64_t kp, int64_t nh, const float* lse, const float* delta,
                                 int64_t n) {
  for (int64_t h = 0; h < nh; ++h) {
    const F16 lse_v = simd::set1(lse[h]), delta_v = simd::set1(delta[h]);
    for (int64_t j = 0; j < n; j += 16) {  // the padding up to kp is scratch
      const F16 p = simd::exp(simd::sub(simd::loadu(S + h * kp + j), lse_v));
      simd::storeu(S + h * kp + j, p);
      simd::storeu(dS + h * kp + j, simd::mul(p, simd::sub(simd::loadu(dS + h * kp + j), delta_v)));
    }
  }
}

class BlockBackward {
 public:
  // K: most keys per token; Nk: key positions; D, Dv: key and value widths; scale: of the scores.
  BlockBackward(int64_t K, int64_t Nk, int64_t D, int64_t Dv, float scale)
      : D_(D), Dv_(Dv), Kp_(padded_keys(K)), scale_(scale),
        keys_(K, Nk, bytes_per_key(D, Dv), range_bytes()), q_(keys_.tokens() * kMaxHeads * D),
        do_(keys_.tokens() * kMaxHeads * Dv), delta_(keys_.tokens() * kMaxHeads), lse_(keys_.tokens() * kMaxHeads),
        dq_acc_(keys_.tokens() * kMaxHeads * D), s_(kMaxHeads * Kp_), ds_(kMaxHeads * Kp_), krows_(Kp_), vrows_(Kp_),
        dkrows_(Kp_), dvrows_(Kp_) {}

  // Tokens per block (the stage() slots) for Nk keys of widths D, Dv.
  static int64_t block_tokens(int64_t Nk, int64_t D, int64_t Dv) {
    return ranges::tokens_per_block(Nk, bytes_per_key(D, Dv), range_bytes());
  }

  // Token `slot` of the block takes its n > 0 valid keys ids. Staged once for every KV group
  // that shares the selection (grouping the keys by range costs about as much as a group's
  // gradient accumulation over them).
  void stage_keys(int64_t slot, const int64_t* ids, int64_t n) { keys_.stage(slot, ids, n); }

  // Token `slot` of the block, nh heads of one KV group (each argument points at head 0's row,
  // heads *_stride apart): its queries, outputs, output gradients and log-sum-exps.
  // T: float, or at::BFloat16 (widened here, row by row, so that the caller needs no float copy
  // of these N x H rows).
  template <typename T>
  void stage_heads(int64_t slot, int64_t nh, const T* q, int64_t q_stride, const T* out, int64_t out_stride,
                   const T* dout, int64_t dout_stride, const float* lse, int64_t lse_stride) {
    float* qs = q_.data() + slot * kMaxHeads * D_;
    float* dos = do_.data() + slot * kMaxHeads * Dv_;
    for (int64_t h = 0; h < nh; ++h) {
      for (int64_t d = 0; d < D_; ++d) qs[h * D_ + d] = static_cast<float>(q[h * q_stride + d]) * scale_;
      float dl = 0.0f;  // delta = dO . O
      for (int64_t c = 0; c < Dv_; ++c) {
        const float g = static_cast<float>(dout[h * dout_stride + c]);
        dos[h * Dv_ + c] = g;
        dl += g * static_cast<float>(out[h * out_stride + c]);
      }
      delta_[slot * kMaxHeads + h] = dl;
      lse_[slot * kMaxHeads + h] = lse[h * lse_stride];
    }
    std::fill_n(dq_acc_.begin() + slot * kMaxHeads * D_, kMaxHeads * D_, 0.0f);
  }

  // Tokens [0, tokens) of nh heads over every range of the group's keys k [Nk][D] and values
  // v [Nk][Dv], adding into dk [Nk][D] and dv [Nk][Dv].
  void run(int64_t tokens, int64_t nh, const float* k, const float* v, float* dk, float* dv) {
    keys_.walk(tokens, [&](int64_t slot, const int32_t* ids, int64_t n) { range(slot, nh, k, v, dk, dv, ids, n); });
  }

  // Writes token `slot`'s dQ rows (dq: head 0's row, heads dq_stride apart). T: float, or
  // at::BFloat16 (rounded here, so that a bf16 backward needs no float dQ of N x H rows).
  template <typename T>
  void finish(int64_t slot, int64_t nh, T* dq, int64_t dq_stride) const {
    const F16 scale = simd::set1(scale_);
    for (int64_t h = 0; h < nh; ++h) {
      const float* acc = dq_acc_.data() + (slot * kMaxHeads + h) * D_;
      for (int64_t d = 0; d < D_; d += 16) {
        const F16 g = simd::mul(simd::loadu(acc + d), scale);
        if constexpr (std::is_same_v<T, float>) {
          simd::storeu(dq + h * dq_stride + d, g);
        } else {
          alignas(64) float row[16];
          simd::storeu(row, g);
          for (int e = 0; e < 16; ++e) dq[h * dq_stride + d + e] = static_cast<T>(row[e]);
        }
      }
    }
  }

 private:
  // K, V, dK and dV bytes per key range (the gradient rows are read and written as well): one
  // core's L2 as the C library reports it (512 KiB where it does not), within [256 KiB, 2 MiB].
  // Measured on an AMD EPYC with 512 KiB of L2 (fp32, 4:2 heads, D = 32, K = 1024, DSA
  // selections): forward + backward N = 16384 ~2160 -> ~1750 ms with 512 KiB ranges; 2 MiB were
  // slower than none (N = 8192 ~650 -> ~760 ms), 256 KiB no better than 512. On a Zen 4 EPYC
  // (1 MiB of L2; 16:4 heads, D = 64, K = 1024, N = 16384, backward): 1 MiB ~1700 ms, 512 KiB
  // ~1860, 2 MiB ~1740.
  static int64_t range_bytes() {
    static const int64_t bytes = [] {
#if defined(_SC_LEVEL2_CACHE_SIZE)  // a glibc extension; elsewhere the default below
      const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
#else
      const long l2 = 0;
#endif
      return l2 > 0 ? std::clamp<int64_t>(l2, int64_t{256} << 10, int64_t{2} << 20) : int64_t{512} << 10;
    }();
    return bytes;
  }
  static int64_t bytes_per_key(int64_t D, int64_t Dv) { return 2 * (D + Dv) * int64_t{sizeof(float)}; }

  // Token `slot` over its n keys ids of one range.
  void range(int64_t slot, int64_t nh, const float* k, const float* v, float* dk, float* dv, const int32_t* ids,
             int64_t n) {
    bool distinct = true;  // blocks of 4 keys may be accumulated together only without repeats
    for (int64_t j = 0; j < n; ++j) {
      const int64_t id = ids[j];
      krows_[j] = k + id * D_;
      vrows_[j] = v + id * Dv_;
      dkrows_[j] = dk + id * D_;
      dvrows_[j] = dv + id * Dv_;
      for (int64_t p = j & ~int64_t{3}; p < j; ++p) distinct &= ids[p] != ids[j];
    }
    const float* q = q_.data() + slot * kMaxHeads * D_;
    const float* dout = do_.data() + slot * kMaxHeads * Dv_;
    float* S = s_.data();    // [nh][Kp] S, then P
    float* dS = ds_.data();  // [nh][Kp] dP = dO V^T, then dS
    scores(q, nh, D_, krows_.data(), n, S, Kp_, vrows_.data(), Dv_);
    scores(dout, nh, Dv_, vrows_.data(), n, dS, Kp_);
    probabilities_and_ds(S, dS, Kp_, nh, lse_.data() + slot * kMaxHeads, delta_.data() + slot * kMaxHeads, n);
    weighted_rows(dS, Kp_, nh, krows_.data(), n, D_, dq_acc_.data() + slot * kMaxHeads * D_);  // dQ / scale
    lanes::accumulate_rows({dS, 1, Kp_}, nh, q, D_, dkrows_.data(), n, distinct);  // read as [nh][Kp]
    lanes::accumulate_rows({S, 1, Kp_}, nh, dout, Dv_, dvrows_.data(), n, distinct);
  }

  int64_t D_, Dv_, Kp_;
  float scale_;
  ranges::BlockKeys keys_;
  AlignedVector<float> q_;       // [T][8][D]   scaled queries per token
  AlignedVector<float> do_;      // [T][8][Dv]  output gradients per token
  std::vector<float> delta_;     // [T][8]      dO . O
  std::vector<float> lse_;       // [T][8]      the forward's log-sum-exp
  AlignedVector<float> dq_acc_;  // [T][8][D]   dS K summed over the ranges (unscaled)
  AlignedVector<float> s_, ds_;  // [8][Kp]     of one token and range
  std::vector<const float*> krows_, vrows_;  // [Kp] gathered rows of one range
  std::vector<float*> dkrows_, dvrows_;
};

}  // namespace rows
#endif  // SA_LANES
