// DSA sparse-stage indexer loss on CPU, fused: forward and gradient in one kernel, O(N * K) work
// and no gathered [N, K, D] copies.
//
// For every (batch b, query t) with selected key slots S = idx[b, t, :] (-1 = empty slot):
//   indexer logit  I[s]   = sum_j w[t, j] * ReLU(iq[j, t] . ik[s])               (lightning indexer)
//   target         p[s]   = (1 / H) sum_h exp(scale * q[h, t] . k[kv(h), s] - lse_h)
//                           lse_h = log sum_{s' in S} exp(scale * q[h, t] . k[kv(h), s'])
//   (each head's softmax restricted to S, i.e. the sparse attention's probabilities, averaged
//   over heads: the head-summed target L1-normalised, since every head's softmax sums to 1)
//   row loss       KL(p || softmax(I over S)),
// and, since the loss of a row depends only on that row's logits, its gradient in the same
// call: dL/dI[s] = softmax(I)[s] - p[s], then through the weighted ReLU sum to dw[t, :],
// diq[:, t] and dik[s] (scatter-added into a per-thread buffer, summed at the end).
// The selected keys are scattered over tables (ik, dik, k) far larger than L2 at long lengths,
// so a block of consecutive rows walks its keys one range of key positions at a time
// (key_ranges.h), twice: the logits, then (after each row's softmax) the gradients; while the
// block works in one range its rows stay in L2 or near it.
// Every slot counts (a key selected twice counts twice), as in the PyTorch formulation over
// slots; only the order of a row's sums follows the ranges.
// indexer_kl_from_target takes p as given instead (per slot, as the attention's
// forward_with_head_mean gathers it while computing the probabilities): the kernel then scores
// only the indexer, H_I x D_I products per key instead of that plus the attention's H x D.

#include "op_library.h"

#include "exp_neg.h"
#include "key_ranges.h"
#include "simd16.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

// a . b over n floats; `omp simd` lets the compiler reassociate the sum into vector lanes.
inline float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Four dot products sharing a: four independent accumulator chains (8 wide on both vector levels).
inline void dot4(const float* a, const float* b0, const float* b1, const float* b2, const float* b3, int64_t n,
                 float* out) {
  int64_t i = 0;
#if defined(SA_LANES)
  simd::F8 s0 = simd::zero8(), s1 = simd::zero8(), s2 = simd::zero8(), s3 = simd::zero8();
  for (; i + 8 <= n; i += 8) {
    const simd::F8 x = simd::loadu8(a + i);
    s0 = simd::fmadd(x, simd::loadu8(b0 + i), s0);
    s1 = simd::fmadd(x, simd::loadu8(b1 + i), s1);
    s2 = simd::fmadd(x, simd::loadu8(b2 + i), s2);
    s3 = simd::fmadd(x, simd::loadu8(b3 + i), s3);
  }
  simd::store_sum4(out, s0, s1, s2, s3);
#else
  out[0] = out[1] = out[2] = out[3] = 0.f;
#endif
  for (; i < n; ++i) {
    const float x = a[i];
    out[0] += x * b0[i];
    out[1] += x * b1[i];
    out[2] += x * b2[i];
    out[3] += x * b3[i];
  }
}

// dots[j * stride + s] = a[j] . rows[keys[s]] for j < J, s < count (rows: a [*, n] table). Keys
// are the outer loop, four at a time, so each gathered row comes from memory once and every
// head reuses it from L1.
template <typename I>
inline void head_dots(const float* const* a, int64_t J, const float* rows, const I* keys, int64_t count, int64_t n,
                      float* dots, int64_t stride) {
  int64_t s = 0;
  for (; s + 4 <= count; s += 4) {
    const float *r0 = rows + int64_t{keys[s]} * n, *r1 = rows + int64_t{keys[s + 1]} * n,
                *r2 = rows + int64_t{keys[s + 2]} * n, *r3 = rows + int64_t{keys[s + 3]} * n;
    for (int64_t j = 0; j < J; ++j) dot4(a[j], r0, r1, r2, r3, n, dots + j * stride + s);
  }
  for (; s < count; ++s)
    for (int64_t j = 0; j < J; ++j) dots[j * stride + s] = dot(a[j], rows + int64_t{keys[s]} * n, n);
}

// out[j] = sum_s G[j * stride + s] * rows[keys[s]] for j < J (n features): a small GEMM over
// gathered rows, accumulated in registers for four heads x 16 features at a time.
template <typename I>
inline void gathered_gemm(const float* G, int64_t J, int64_t stride, const float* rows, const I* keys, int64_t count,
                          int64_t n, float* const* out) {
  for (int64_t j0 = 0; j0 < J; j0 += 4) {
    const int64_t jn = std::min<int64_t>(4, J - j0);
    int64_t d = 0;
#if defined(SA_LANES)
    for (; d + 16 <= n; d += 16) {  // two F8 per row (8 wide on the AVX-512 level too)
      simd::F8 lo[4], hi[4];
      for (int j = 0; j < 4; ++j) lo[j] = hi[j] = simd::zero8();
      for (int64_t s = 0; s < count; ++s) {
        const float* row = rows + int64_t{keys[s]} * n + d;
        const simd::F8 r0 = simd::loadu8(row), r1 = simd::loadu8(row + 8);
        for (int64_t j = 0; j < jn; ++j) {
          const simd::F8 g = simd::broadcast8(G + (j0 + j) * stride + s);
          lo[j] = simd::fmadd(g, r0, lo[j]);
          hi[j] = simd::fmadd(g, r1, hi[j]);
        }
      }
      for (int64_t j = 0; j < jn; ++j) {
        float* o = out[j0 + j] + d;
        simd::storeu(o, simd::add(simd::loadu8(o), lo[j]));
        simd::storeu(o + 8, simd::add(simd::loadu8(o + 8), hi[j]));
      }
    }
#endif
    for (; d < n; ++d)
      for (int64_t j = 0; j < jn; ++j) {
        float acc = 0.f;
        for (int64_t s = 0; s < count; ++s) acc += G[(j0 + j) * stride + s] * rows[int64_t{keys[s]} * n + d];
        out[j0 + j][d] += acc;
      }
  }
}

// table[keys[s]] += sum_j G[j * stride + s] * a[j] for s < count (n features): the scatter of
// the key gradients, one read-modify-write of each selected row.
template <typename I>
inline void scatter_rows(const float* G, int64_t J, int64_t stride, const float* const* a, const I* keys,
                         int64_t count, int64_t n, float* table) {
  constexpr int64_t kHeads = 8;  // gradients of up to 8 heads held in registers per key
  constexpr int64_t kAhead = 8;  // rows prefetched ahead: they mostly come from L3
  for (int64_t s = 0; s < count; ++s) {
    float* __restrict row = table + int64_t{keys[s]} * n;
    if (s + kAhead < count) __builtin_prefetch(table + int64_t{keys[s + kAhead]} * n, 1);
    for (int64_t j0 = 0; j0 < J; j0 += kHeads) {
      const int64_t jn = std::min(kHeads, J - j0);
      float g[kHeads];
      for (int64_t j = 0; j < jn; ++j) g[j] = G[(j0 + j) * stride + s];
      int64_t d = 0;
#if defined(SA_LANES)
      simd::F8 gv[kHeads];
      for (int64_t j = 0; j < jn; ++j) gv[j] = simd::set1_8(g[j]);
      for (; d + 8 <= n; d += 8) {
        simd::F8 acc = simd::loadu8(row + d);
        for (int64_t j = 0; j < jn; ++j) acc = simd::fmadd(gv[j], simd::loadu8(a[j0 + j] + d), acc);
        simd::storeu(row + d, acc);
      }
#endif
      for (; d < n; ++d) {
        float acc = row[d];
        for (int64_t j = 0; j < jn; ++j) acc += g[j] * a[j0 + j][d];
        row[d] = acc;
      }
    }
  }
}

// Scratch rows are padded to whole vectors (kPad floats), so the loops below may read and write
// up to the next multiple of kPad past n; what they write there is never read.
constexpr int64_t kPad = 16;

inline int64_t padded(int64_t n) { return (n + kPad - 1) / kPad * kPad; }

// sum over s < n of exp(x[s] - shift), for shift >= max(x).
inline float sum_exp_shifted(const float* x, int64_t n, float shift) {
#if defined(SA_LANES)
  const simd::F16 sh = simd::set1(shift);
  simd::F16 acc = simd::zero();
  int64_t s = 0;
  for (; s + 16 <= n; s += 16) acc = simd::add(acc, simd::exp(simd::sub(simd::loadu(x + s), sh)));
  if (s < n) acc = simd::add(acc, simd::keep_first(simd::exp(simd::sub(simd::loadu(x + s), sh)), int(n - s)));
  return simd::reduce_add(acc);
#else
  float total = 0.f;
  for (int64_t s = 0; s < n; ++s) total += exp_neg(x[s] - shift);
  return total;
#endif
}

// acc[s] += exp(x[s] - shift).
inline void add_exp_shifted(float* acc, const float* x, int64_t n, float shift) {
#if defined(SA_LANES)
  const simd::F16 sh = simd::set1(shift);
  for (int64_t s = 0; s < n; s += 16)
    simd::storeu(acc + s, simd::add(simd::loadu(acc + s), simd::exp(simd::sub(simd::loadu(x + s), sh))));
#else
  for (int64_t s = 0; s < n; ++s) acc[s] += exp_neg(x[s] - shift);
#endif
}

// x[s] = exp(x[s] - shift) - t[s]: the softmax minus the target.
inline void exp_shifted_minus(float* x, const float* t, int64_t n, float shift) {
#if defined(SA_LANES)
  const simd::F16 sh = simd::set1(shift);
  for (int64_t s = 0; s < n; s += 16)
    simd::storeu(x + s, simd::sub(simd::exp(simd::sub(simd::loadu(x + s), sh)), simd::loadu(t + s)));
#else
  for (int64_t s = 0; s < n; ++s) x[s] = exp_neg(x[s] - shift) - t[s];
#endif
}

// log sum exp of x[0..n) (n > 0).
inline float log_sum_exp(const float* x, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) m = std::max(m, x[i]);
  return m + std::log(sum_exp_shifted(x, n, m));
}

// Per thread: a block of consecutive query rows of one sequence, whose selected keys are walked
// range by range (key_ranges.h) twice, once for the logits and once for the gradients. Per row,
// slot arrays follow the row's keys as BlockKeys groups them (slot o = the o-th grouped key).
struct BlockScratch {
  std::vector<int64_t> keys;   // [K] valid key positions of the row being staged
  std::vector<int32_t> pos;    // [K] their slots
  std::vector<int32_t> slot_of;  // [T][K] the slot of each row's o-th key in grouped order (given target)
  std::vector<int64_t> count;  // [T] valid keys per staged row
  std::vector<int64_t> row;    // [T] the staged rows (b * N + t)
  std::vector<float> dots;     // [T][H_I][Kp] indexer head dot products (before ReLU), then dL/d(dot)
  std::vector<float> head;     // [T][H][Kp] scaled attention logits
  std::vector<float> logits;   // [Kp] indexer logits of one row, then their gradient
  std::vector<float> target;   // [Kp]
  std::vector<const float*> iq_rows, q_rows;  // one row's indexer rows [H_I], attention rows [H / H_kv]
  std::vector<float*> diq_rows;               // [H_I]
};

// Bytes a key range holds per key: the indexer key row read twice and its gradient row written,
// and the attention key rows of every KV head.
inline int64_t kl_bytes_per_key(int64_t DI, int64_t Hkv, int64_t D) {
  return (3 * DI + Hkv * D) * int64_t{sizeof(float)};
}
// Measured on a 2-core AMD EPYC (512 KiB L2 per core; D_I = 64, 4:2 heads of D = 32, K = 1024,
// DSA selections): N = 8192 ~680 -> ~550 ms, N = 16384 ~2100 -> ~1200 ms; 2 MiB ranges gained
// less at N = 8192 (~650 ms), 256 KiB no more than 512.
constexpr int64_t kRangeBytes = int64_t{512} << 10;
}  // namespace

// The attention side of the target: either the attention queries and keys (q [B, H, N, D],
// k [B, H_kv, N_k, D], the softmax scale), whose scores the kernel computes, or the target itself,
// given ([B, N, K]: per slot the mean over heads of the attention probabilities, as the
// attention's forward_with_head_mean returns it; then q and k are null).
struct AttentionSide {
  const float* q = nullptr;
  const float* k = nullptr;
  int64_t H = 1, Hkv = 1, D = 0;
  float scale = 1.f;
  const float* target = nullptr;
};

// Checks the indexer inputs iq [B, H_I, N, D_I], ik [B, N_k, D_I], w [B, N, H_I], idx [B, N, K].
void check_indexer_inputs(const at::Tensor& iq, const at::Tensor& ik, const at::Tensor& w, const at::Tensor& idx,
                          int64_t B, int64_t N, int64_t Nk) {
  TORCH_CHECK(iq.dim() == 4 && ik.dim() == 3 && w.dim() == 3 && idx.dim() == 3,
              "indexer_kl: expected iq [B, H_I, N, D_I], ik [B, N_k, D_I], w [B, N, H_I], idx [B, N, K]");
  for (const auto* t : {&iq, &ik, &w})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous(), "indexer_kl: tensors must be contiguous float32");
  TORCH_CHECK(idx.scalar_type() == at::kLong && idx.is_contiguous(), "indexer_kl: idx must be contiguous int64");
  const int64_t HI = iq.size(1), DI = iq.size(3);
  TORCH_CHECK(iq.size(0) == B && iq.size(2) == N && ik.size(0) == B && ik.size(1) == Nk && ik.size(2) == DI,
              "indexer_kl: iq must be [B, H_I, N, D_I] and ik [B, N_k, D_I]");
  TORCH_CHECK(w.size(0) == B && w.size(1) == N && w.size(2) == HI, "indexer_kl: w must be [B, N, H_I]");
  TORCH_CHECK(idx.size(0) == B && idx.size(1) == N, "indexer_kl: idx must be [B, N, K]");
}

// The kernel. Returns {row_kl [B, N], row_has_keys [B, N] bool, diq, dik, dw}: the gradients are
// those of sum(row_kl) (zeros when need_grad is false).
std::vector<at::Tensor> run_indexer_kl(const AttentionSide& att, at::Tensor iq, at::Tensor ik, at::Tensor w,
                                       at::Tensor idx, bool need_grad) {
  const int64_t B = iq.size(0), N = iq.size(2), Nk = ik.size(1), HI = iq.size(1), DI = iq.size(3), K = idx.size(2);
  const int64_t H = att.H, Hkv = att.Hkv, D = att.D;
  const auto fopt = iq.options();
  auto row_kl = at::zeros({B, N}, fopt);
  auto row_has_keys = at::zeros({B, N}, fopt.dtype(at::kBool));
  auto diq = at::zeros_like(iq);
  auto dw = at::zeros_like(w);
  const int threads = need_grad ? at::get_num_threads() : 1;
  // One dik buffer per thread: rows of different queries scatter into the same keys.
  auto dik_all = at::zeros({need_grad ? threads : 1, B, Nk, DI}, fopt);

  const float* qp = att.q;
  const float* kp = att.k;
  const float* given_target = att.target;
  const float* iqp = iq.data_ptr<float>();
  const float* ikp = ik.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const int64_t* idxp = idx.data_ptr<int64_t>();
  float* klp = row_kl.data_ptr<float>();
  bool* hasp = row_has_keys.data_ptr<bool>();
  float* diqp = diq.data_ptr<float>();
  float* dwp = dw.data_ptr<float>();
  float* dik_base = dik_all.data_ptr<float>();
  const float fscale = att.scale;
  const int64_t group = H / Hkv;
  std::atomic<bool> out_of_range{false};

  const int64_t Kp = padded(K);
  const int64_t bytes_per_key = kl_bytes_per_key(DI, Hkv, D);
  const int64_t T = ranges::tokens_per_block(Nk, bytes_per_key, kRangeBytes);
  const int64_t blocks_per_seq = (N + T - 1) / T;
  at::parallel_for(0, B * blocks_per_seq, 1, [&](int64_t begin, int64_t end) {
    ranges::BlockKeys grouped(K, Nk, bytes_per_key, kRangeBytes);
    BlockScratch w_;
    w_.keys.resize(K);
    w_.count.resize(T);
    w_.row.resize(T);
    w_.dots.resize(T * HI * Kp);
    if (!given_target) w_.head.resize(T * H * Kp);
    w_.slot_of.resize(T * K);
    w_.pos.resize(K);
    w_.logits.resize(Kp);
    w_.target.resize(Kp);
    w_.iq_rows.resize(HI);
    w_.diq_rows.resize(HI);
    w_.q_rows.resize(group);
    float* dik = dik_base + (need_grad ? at::get_thread_num() : 0) * B * Nk * DI;
    for (int64_t block = begin; block < end; ++block) {
      const int64_t b = block / blocks_per_seq, t0 = (block % blocks_per_seq) * T, t1 = std::min(N, t0 + T);
      const float* ik_b = ikp + b * Nk * DI;
      int64_t tokens = 0;
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t* slots = idxp + (b * N + t) * K;
        int64_t n = 0;
        for (int64_t s = 0; s < K; ++s) {
          const int64_t key = slots[s];
          if (key < 0) continue;
          if (key >= Nk) {
            out_of_range = true;
            continue;
          }
          w_.pos[n] = static_cast<int32_t>(s);
          w_.keys[n++] = key;
        }
        if (n == 0) continue;  // a row without keys has no loss and no gradient
        hasp[b * N + t] = true;
        grouped.stage(tokens, w_.keys.data(), n);
        if (given_target)
          ranges::grouped_positions(w_.keys.data(), w_.pos.data(), n, grouped.shift(), grouped.ranges(),
                                    w_.slot_of.data() + tokens * K);
        w_.count[tokens] = n;
        w_.row[tokens++] = b * N + t;
      }
      // Pass 1, range by range: indexer and attention logits at each row's keys.
      grouped.walk(tokens, [&](int64_t slot, const int32_t* keys, int64_t n) {
        const int64_t t = w_.row[slot] % N, o = keys - grouped.token_ids(slot);
        for (int64_t j = 0; j < HI; ++j) w_.iq_rows[j] = iqp + ((b * HI + j) * N + t) * DI;
        head_dots(w_.iq_rows.data(), HI, ik_b, keys, n, DI, w_.dots.data() + slot * HI * Kp + o, Kp);
        if (given_target) return;
        for (int64_t g = 0; g < Hkv; ++g) {
          for (int64_t h = 0; h < group; ++h) w_.q_rows[h] = qp + ((b * H + g * group + h) * N + t) * D;
          head_dots(w_.q_rows.data(), group, kp + (b * Hkv + g) * Nk * D, keys, n, D,
                    w_.head.data() + (slot * H + g * group) * Kp + o, Kp);
        }
      });
      // Per row: the KL and dL/d(dot) (in place of the dots).
      for (int64_t slot = 0; slot < tokens; ++slot) {
        const int64_t row = w_.row[slot], n = w_.count[slot];
        const float* w_row = wp + row * HI;
        float* dots = w_.dots.data() + slot * HI * Kp;  // [H_I, Kp]
        float* logits = w_.logits.data();
        std::fill(logits, logits + n, 0.f);
        for (int64_t j = 0; j < HI; ++j)
          for (int64_t s = 0; s < n; ++s) logits[s] += w_row[j] * std::max(dots[j * Kp + s], 0.f);
        // Target: each head's softmax over the selected keys, averaged over heads (summed here,
        // divided by H below), or given.
        float* target = w_.target.data();
        float inv_h = 1.f / static_cast<float>(H);
        if (given_target) {
          const float* given = given_target + row * K;
          const int32_t* slot_of = w_.slot_of.data() + slot * K;
          for (int64_t s = 0; s < n; ++s) target[s] = given[slot_of[s]];
          inv_h = 1.f;
        } else {
          std::fill(target, target + n, 0.f);
        }
        for (int64_t h = 0; h < (given_target ? 0 : H); ++h) {
          float* l = w_.head.data() + (slot * H + h) * Kp;
          for (int64_t s = 0; s < n; ++s) l[s] *= fscale;
          const float lse = log_sum_exp(l, n);
          add_exp_shifted(target, l, n, lse);
        }
        const float lse_i = log_sum_exp(logits, n);
        float kl = 0.f;
        for (int64_t s = 0; s < n; ++s) {
          const float p = target[s] * inv_h;
          target[s] = p;
          if (p > 0.f) kl += p * (std::log(p) - (logits[s] - lse_i));
        }
        klp[row] = kl;
        if (!need_grad) continue;
        // dKL/dI[s] = softmax(I)[s] - p[s], reusing the logits buffer.
        exp_shifted_minus(logits, target, n, lse_i);
        // Through the weighted ReLU sum: G[j, s] = dL/d(dot_js) = g_s w_j [dot_js > 0] (into the dots
        // buffer) and dw_j = sum_s g_s ReLU(dot_js); diq and dik follow in pass 2.
        float* dw_row = dwp + row * HI;
        for (int64_t j = 0; j < HI; ++j) {
          float* Gj = dots + j * Kp;
          const float wj = w_row[j];
          float dwj = 0.f;
          // Branch-free (the ReLU passes about half the keys: a branch would mispredict).
#pragma omp simd reduction(+ : dwj)
          for (int64_t s = 0; s < n; ++s) {
            const float pass = Gj[s] > 0.f ? 1.f : 0.f;
            dwj += logits[s] * Gj[s] * pass;
            Gj[s] = pass * logits[s] * wj;
          }
          dw_row[j] = dwj;
        }
      }
      if (!need_grad) continue;
      // Pass 2, range by range: diq_j += G[j] . keys and dik[s] += G[:, s] . iq.
      grouped.walk(tokens, [&](int64_t slot, const int32_t* keys, int64_t n) {
        const int64_t t = w_.row[slot] % N, o = keys - grouped.token_ids(slot);
        for (int64_t j = 0; j < HI; ++j) {
          w_.iq_rows[j] = iqp + ((b * HI + j) * N + t) * DI;
          w_.diq_rows[j] = diqp + ((b * HI + j) * N + t) * DI;
        }
        const float* G = w_.dots.data() + slot * HI * Kp + o;
        gathered_gemm(G, HI, Kp, ik_b, keys, n, DI, w_.diq_rows.data());
        scatter_rows(G, HI, Kp, w_.iq_rows.data(), keys, n, DI, dik + b * Nk * DI);
      });
    }
  });
  TORCH_CHECK(!out_of_range, "indexer_kl: idx holds key positions >= N_k (", Nk, ")");
  auto dik = need_grad ? dik_all.sum(0) : dik_all[0];
  return {row_kl, row_has_keys, diq, dik, dw};
}

// q: [B, H, N, D]; k: [B, H_kv, N_k, D]; iq: [B, H_I, N, D_I]; ik: [B, N_k, D_I]; w: [B, N, H_I];
// idx: [B, N, K] int64 (-1 = empty slot), all float32 and contiguous (the wrapper makes them so).
std::vector<at::Tensor> indexer_kl(at::Tensor q, at::Tensor k, at::Tensor iq, at::Tensor ik, at::Tensor w,
                                   at::Tensor idx, double scale, bool need_grad) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4, "indexer_kl: expected q [B, H, N, D], k [B, H_kv, N_k, D]");
  for (const auto* t : {&q, &k})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous(), "indexer_kl: tensors must be contiguous float32");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(3), Hkv = k.size(1);
  TORCH_CHECK(k.size(0) == B && k.size(3) == D && Hkv > 0 && H % Hkv == 0, "indexer_kl: k must be [B, H_kv, N_k, D]");
  check_indexer_inputs(iq, ik, w, idx, B, q.size(2), k.size(2));
  AttentionSide att;
  att.q = q.data_ptr<float>();
  att.k = k.data_ptr<float>();
  att.H = H;
  att.Hkv = Hkv;
  att.D = D;
  att.scale = static_cast<float>(scale);
  return run_indexer_kl(att, iq, ik, w, idx, need_grad);
}

// target: [B, N, K] float32, per slot the mean over heads of the attention probabilities; the
// other inputs as indexer_kl's.
std::vector<at::Tensor> indexer_kl_from_target(at::Tensor target, at::Tensor iq, at::Tensor ik, at::Tensor w,
                                               at::Tensor idx, bool need_grad) {
  TORCH_CHECK(target.dim() == 3 && target.scalar_type() == at::kFloat && target.is_contiguous() &&
                  target.sizes() == idx.sizes(),
              "indexer_kl: target must be contiguous float32 shaped like idx [B, N, K]");
  check_indexer_inputs(iq, ik, w, idx, iq.size(0), iq.size(2), ik.size(1));
  AttentionSide att;
  att.target = target.data_ptr<float>();
  return run_indexer_kl(att, iq, ik, w, idx, need_grad);
}

SA_OP_LIBRARY(m) {
  // The same from the target the attention's forward_with_head_mean returns (no attention scores here).
  m.def("indexer_kl_from_target(Tensor target, Tensor iq, Tensor ik, Tensor w, Tensor idx, bool need_grad)"
        " -> Tensor[]", &indexer_kl_from_target);
  // DSA sparse-stage indexer KL per query row and its gradient. Returns (row_kl, has_keys, diq, dik, dw).
  m.def("indexer_kl(Tensor q, Tensor k, Tensor iq, Tensor ik, Tensor w, Tensor idx, float scale, bool need_grad)"
        " -> Tensor[]", &indexer_kl);
}
