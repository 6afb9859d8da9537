// Fused scoring + top-k selection on CPU: memory O(N_q * K), never an N_q x N_k score matrix.
//
// For every score row r (a batch for the lightning indexer, a (batch, head) pair for exact
// top-k) and query t, the score of key s is
//     I[t, s] = sum_j w[t, j] * f(q[j, t] . k[s])      f = ReLU (indexer) or identity,
// and the kernel keeps the K keys of largest score. Keys are visited in panels of 64; a
// panel's scores for one query live in four registers and are compared with the query's
// running threshold (the K-th largest score seen so far), so after the first panels almost
// every key is rejected by one compare. Survivors are compress-stored into the query's
// candidate buffer, which is cut back to its best K (nth_element) whenever it holds 2K.
//
// Keys are stored once per call as transposed panels ([D][64] floats, or [D/2][64][2] bf16
// pairs for the AVX512-BF16 dot product), so one panel row is four aligned vector loads
// shared by every head and query that uses it. Work is one (row, block of queries); blocks
// are interleaved first/last so that the static thread split of at::parallel_for gets equal
// causal work. Ties at the threshold keep the key seen first. A NaN score ranks above every number
// (it is offered as +inf, as torch.topk orders NaN first), so a key whose score is NaN is selected
// wherever it is visible, and the attention over it then carries the NaN, as dense attention does.
//
// Vector code goes through simd16.h (SA_LANES*: F16, F8, compress stores, bf16 pair dot products);
// only the AMX tile code (_tile_* of amx_panel_logits) stays raw: tiles are matrices in tile
// registers configured per thread (amx_tiles.h), not vector lanes, and exist on no other level.

#include "op_library.h"

#include "aligned_vector.h"
#include "amx_tiles.h"
#include "simd16.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kPanel = 64;  // keys per panel: 4 simd::F16 of floats
constexpr int64_t kGrow = 2;  // a candidate buffer is cut back to K when it holds kGrow * K
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kPosInf = std::numeric_limits<float>::infinity();

struct TopKShapes {
  int64_t R, J, Nq, Nk, D, K, group, offset, panels;
  bool causal, relu, has_weights;
  int64_t limit(int64_t t) const { return causal ? t + offset : Nk - 1; }
};

// Per-thread buffers of the selection below (four, so that a pass never overwrites its input).
struct SelectScratch {
  std::vector<float> buf[4];
  explicit SelectScratch(int64_t capacity) {
    for (auto& b : buf) b.resize(capacity);
  }
};

// Value of the k-th largest of a[0 .. n) (1 <= k <= n; no NaN). Quickselect whose partition
// step writes the greater and the smaller elements to two buffers with compress stores
// (simd16.h: AVX-512 about a cycle per 16 elements; AVX2 a permutation per 8); elements equal
// to the pivot are only counted, so runs of equal scores (ReLU zeros) end the search at once.
float kth_largest(const float* a, int64_t n, int64_t k, SelectScratch& w) {
  int pair = 0;
  while (n > 32) {
    const float x = a[n / 4], y = a[n / 2], z = a[(3 * n) / 4];
    const float pivot = std::max(std::min(x, y), std::min(std::max(x, y), z));  // median of three
    float* gt = w.buf[2 * pair].data();
    float* lt = w.buf[2 * pair + 1].data();
    int64_t n_gt = 0, n_lt = 0, i = 0;
#if defined(SA_LANES_AVX512)
    const simd::F16 pv = simd::set1(pivot);
    for (; i + 16 <= n; i += 16) {  // n_gt + 16 <= i + 16 <= n: room for each 16-lane store
      const simd::F16 v = simd::loadu(a + i);
      const simd::KMask16 m_gt = simd::greater_mask(v, pv), m_lt = simd::less_mask(v, pv);
      simd::store_compressed(gt + n_gt, m_gt, v);
      simd::store_compressed(lt + n_lt, m_lt, v);
      n_gt += simd::count(m_gt);
      n_lt += simd::count(m_lt);
    }
#elif defined(SA_LANES_AVX2)
    const simd::F8 pv = simd::set1_8(pivot);
    for (; i + 8 <= n; i += 8) {  // gt, lt hold n >= i + 8 values: room for each 8-lane store
      const simd::F8 v = simd::loadu8(a + i);
      n_gt += simd::compress_store(gt + n_gt, simd::greater_mask(v, pv), v);
      n_lt += simd::compress_store(lt + n_lt, simd::greater_mask(pv, v), v);
    }
#endif
    for (; i < n; ++i) {
      if (a[i] > pivot) gt[n_gt++] = a[i];
      if (a[i] < pivot) lt[n_lt++] = a[i];
    }
    const int64_t n_eq = n - n_gt - n_lt;
    if (k <= n_gt) {
      a = gt;
      n = n_gt;
    } else if (k <= n_gt + n_eq) {
      return pivot;
    } else {
      k -= n_gt + n_eq;
      a = lt;
      n = n_lt;
    }
    pair ^= 1;
  }
  float small[32];
  std::copy(a, a + n, small);
  std::nth_element(small, small + (k - 1), small + n, std::greater<float>());
  return small[k - 1];
}

// Candidates of one query: (score, key) pairs and the running K-th best score.
struct Candidates {
  std::vector<float> score, next_score;
  std::vector<int32_t> key, next_key;
  int64_t count = 0;
  float threshold = kNegInf;

  void reset(int64_t capacity) {
    for (auto* v : {&score, &next_score}) v->resize(capacity);
    for (auto* v : {&key, &next_key}) v->resize(capacity);
    count = 0;
    threshold = kNegInf;
  }

  // Keep the best k candidates (k < count) and raise the threshold to the worst of them:
  // one pass keeps the scores above the k-th largest, a second fills up with its ties.
  void shrink(int64_t k, SelectScratch& w) {
    const float kth = kth_largest(score.data(), count, k, w);
    int64_t kept = 0, i = 0;
#if defined(SA_LANES_AVX512)
    const simd::F16 kv = simd::set1(kth);
    for (; i + 16 <= count; i += 16) {  // kept <= i: room for 16
      const simd::F16 v = simd::loadu(score.data() + i);
      const simd::KMask16 m = simd::greater_mask(v, kv);
      simd::store_compressed(next_score.data() + kept, m, v);
      simd::store_compressed(next_key.data() + kept, m, simd::loadu(key.data() + i));
      kept += simd::count(m);
    }
#elif defined(SA_LANES_AVX2)
    const simd::F8 kv = simd::set1_8(kth);
    for (; i + 8 <= count; i += 8) {  // kept <= i: each 8-lane store stays within the buffers
      const simd::F8 v = simd::loadu8(score.data() + i);
      const uint32_t m = simd::greater_mask(v, kv);
      simd::compress_store(next_key.data() + kept, m, simd::loadu8(key.data() + i));
      kept += simd::compress_store(next_score.data() + kept, m, v);
    }
#endif
    for (; i < count; ++i) {
      if (score[i] > kth) {
        next_score[kept] = score[i];
        next_key[kept++] = key[i];
      }
    }
    for (i = 0; i < count && kept < k; ++i) {
      if (score[i] == kth) {
        next_score[kept] = kth;
        next_key[kept++] = key[i];
      }
    }
    score.swap(next_score);
    key.swap(next_key);
    threshold = kth;
    count = k;
  }

  // Add the panel's scores above the threshold (scores: kPanel floats for keys key0 ...).
  void offer(const float* panel_scores, int64_t key0, int64_t valid) {
    for (int64_t l = 0; l < valid; ++l) {
      const float s = panel_scores[l] != panel_scores[l] ? kPosInf : panel_scores[l];  // NaN ranks first
      if (s > threshold) {
        score[count] = s;
        key[count] = static_cast<int32_t>(key0 + l);
        ++count;
      }
    }
  }

#if defined(SA_LANES_AVX512)
  // Same, from four registers (keys key0 + 16c + lane); lanes at or beyond ``valid`` are ignored.
  // Most panels hold no score above the threshold once the first panels are seen, so one
  // compare per register (greater or NaN: not-less-equal, unordered) and one branch reject them.
  void offer(const simd::F16* s, int64_t key0, int64_t valid) {
    const simd::F16 thr = simd::set1(threshold);
    simd::KMask16 m[4];
    for (int c = 0; c < 4; ++c) m[c] = simd::not_less_equal_mask(s[c], thr);
    if (valid < kPanel) {
      for (int c = 0; c < 4; ++c) {
        const int64_t rest = std::clamp<int64_t>(valid - 16 * c, 0, 16);
        m[c] &= static_cast<simd::KMask16>((uint32_t{1} << rest) - 1u);
      }
    }
    if (!(m[0] | m[1] | m[2] | m[3])) return;
    for (int c = 0; c < 4; ++c) {
      if (!m[c]) continue;
      const simd::F16 x = simd::nan_to_posinf(s[c]);  // NaN -> +inf
      const simd::I16 keys = simd::iota(static_cast<int32_t>(key0 + 16 * c));
      // count <= kGrow * K + 48 here and the capacity is kGrow * K + kPanel: room for 16.
      simd::store_compressed(score.data() + count, m[c], x);
      simd::store_compressed(key.data() + count, m[c], keys);
      count += simd::count(m[c]);
    }
  }
#elif defined(SA_LANES_AVX2)
  // Same on AVX2 (no compress store): one compare per 8 keys, then the rare survivors one by one.
  void offer(const simd::F16* s, int64_t key0, int64_t valid) {
    const simd::F8 thr = simd::set1_8(threshold);
    for (int c = 0; c < 8; ++c) {
      const int64_t rest = valid - 8 * c;
      if (rest <= 0) break;
      const simd::F8 x = simd::nan_to_posinf((c & 1) ? simd::upper(s[c / 2]) : simd::lower(s[c / 2]));  // NaN -> +inf
      uint32_t m = simd::greater_mask(x, thr);
      if (rest < 8) m &= (1u << rest) - 1u;
      if (!m) continue;
      alignas(32) float v[8];
      simd::store(v, x);
      for (; m; m &= m - 1) {
        const int l = __builtin_ctz(m);
        score[count] = v[l];
        key[count++] = static_cast<int32_t>(key0 + 8 * c + l);
      }
    }
  }
#endif
};

// ----- portable scorer: one query, one panel --------------------------------------------------

// panel: [D][kPanel] floats. q_rows[j]: the query's D features for head j. out: kPanel scores.
void panel_scores_generic(const TopKShapes& s, const float* panel, const float* const* q_rows, const float* w,
                          float* out) {
  float acc[kPanel];
  std::fill(out, out + kPanel, 0.0f);
  for (int64_t j = 0; j < s.J; ++j) {
    std::fill(acc, acc + kPanel, 0.0f);
    for (int64_t d = 0; d < s.D; ++d) {
      const float qv = q_rows[j][d];
      const float* kr = panel + d * kPanel;
#pragma omp simd
      for (int64_t l = 0; l < kPanel; ++l) acc[l] += qv * kr[l];
    }
    const float wj = w ? w[j] : 1.0f;
    for (int64_t l = 0; l < kPanel; ++l) out[l] += wj * (s.relu ? std::max(acc[l], 0.0f) : acc[l]);
  }
}

#if defined(SA_LANES)
// ----- vector scorers: HB heads x QN queries per pass over a panel (simd16.h) --------------------
//
// A panel's 64 scores of one (query, head) are four F16 accumulators. AVX-512 keeps up to
// 4 x 4 of them and the panel row in registers; AVX2 (16 registers of 8 floats) one query and
// head at a time, its FMAs reading the panel row from L1.
constexpr bool kWideScorer = simd::kRegisterBudget >= 32;
constexpr int kMaxHeadsPerPass = kWideScorer ? 4 : 1;
constexpr int kQueriesPerPass = kWideScorer ? 4 : 1;  // queries sharing a panel pass (single-head rows)

// s[qn][c] += sum_{h < HB} w[qn][j0 + h] * f(acc[qn * HB + h][c]), f = ReLU or identity.
template <int HB, int QN>
inline void add_weighted_heads(const TopKShapes& sh, const simd::F16 (*acc)[4], int64_t j0, const float* const* w,
                               simd::F16 (*s)[4]) {
  const simd::F16 zero = simd::zero();
  for (int qn = 0; qn < QN; ++qn)
    for (int h = 0; h < HB; ++h) {
      const simd::F16 wv = simd::set1(w ? w[qn][j0 + h] : 1.0f);
      for (int c = 0; c < 4; ++c) {
        const simd::F16 a = sh.relu ? simd::max(zero, acc[qn * HB + h][c]) : acc[qn * HB + h][c];  // max(0, NaN) = NaN
        s[qn][c] = simd::fmadd(wv, a, s[qn][c]);
      }
    }
}

// s[qn][c] += sum_{h < HB} w[qn][j0 + h] * f(q[j0 + h, qn] . panel[:, 16c : 16c + 16]).
template <int HB, int QN>
inline void panel_block_f32(const TopKShapes& sh, const float* panel, const float* const* q_rows, int64_t j0,
                            const float* const* w, simd::F16 (*s)[4]) {
  simd::F16 acc[HB * QN][4];
  for (int r = 0; r < HB * QN; ++r)
    for (int c = 0; c < 4; ++c) acc[r][c] = simd::zero();
  const float* q[HB * QN];
  for (int qn = 0; qn < QN; ++qn)
    for (int h = 0; h < HB; ++h) q[qn * HB + h] = q_rows[qn * sh.J + j0 + h];
  for (int64_t d = 0; d < sh.D; ++d) {
    const float* kr = panel + d * kPanel;
    const simd::F16 k0 = simd::loadu(kr), k1 = simd::loadu(kr + 16), k2 = simd::loadu(kr + 32),
                    k3 = simd::loadu(kr + 48);
    for (int r = 0; r < HB * QN; ++r) {
      const simd::F16 b = simd::set1(q[r][d]);
      acc[r][0] = simd::fmadd(b, k0, acc[r][0]);
      acc[r][1] = simd::fmadd(b, k1, acc[r][1]);
      acc[r][2] = simd::fmadd(b, k2, acc[r][2]);
      acc[r][3] = simd::fmadd(b, k3, acc[r][3]);
    }
  }
  add_weighted_heads<HB, QN>(sh, acc, j0, w, s);
}

#if defined(SA_LANES_BF16)
// bf16 version: panel is [D/2][kPanel][2] bf16 pairs, q rows are bf16 with an even length;
// one simd::dot_pairs (vdpbf16ps) does two multiply-adds per lane (products exact, sums in fp32).
template <int HB, int QN>
inline void panel_block_bf16(const TopKShapes& sh, const at::BFloat16* panel, const at::BFloat16* const* q_rows,
                             int64_t j0, const float* const* w, simd::F16 (*s)[4]) {
  simd::F16 acc[HB * QN][4];
  for (int r = 0; r < HB * QN; ++r)
    for (int c = 0; c < 4; ++c) acc[r][c] = simd::zero();
  const int32_t* q[HB * QN];
  for (int qn = 0; qn < QN; ++qn)
    for (int h = 0; h < HB; ++h) q[qn * HB + h] = reinterpret_cast<const int32_t*>(q_rows[qn * sh.J + j0 + h]);
  const int64_t pairs = (sh.D + 1) / 2;
  for (int64_t p = 0; p < pairs; ++p) {
    const at::BFloat16* kr = panel + p * kPanel * 2;
    const simd::BF16Pairs k0 = simd::loadu_pairs(kr), k1 = simd::loadu_pairs(kr + 32),
                          k2 = simd::loadu_pairs(kr + 64), k3 = simd::loadu_pairs(kr + 96);
    for (int r = 0; r < HB * QN; ++r) {
      const simd::BF16Pairs b = simd::set1_pair(q[r][p]);
      acc[r][0] = simd::dot_pairs(acc[r][0], b, k0);
      acc[r][1] = simd::dot_pairs(acc[r][1], b, k1);
      acc[r][2] = simd::dot_pairs(acc[r][2], b, k2);
      acc[r][3] = simd::dot_pairs(acc[r][3], b, k3);
    }
  }
  add_weighted_heads<HB, QN>(sh, acc, j0, w, s);
}
#endif  // SA_LANES_BF16

// Scores of QN queries against one panel, all J heads: s[qn][0..3].
// Not inlined: inside the large driver loop GCC kept the accumulators on the stack as well and
// stored them back on every feature, which made the scoring store-bound; as a function of its
// own they stay in registers (one call per panel and query pass is negligible next to its FMAs).
template <typename P, int QN>
__attribute__((noinline)) void panel_scores_vector(const TopKShapes& sh, const P* panel, const P* const* q_rows, const float* const* w,
                                simd::F16 (*s)[4]) {
  for (int qn = 0; qn < QN; ++qn)
    for (int c = 0; c < 4; ++c) s[qn][c] = simd::zero();
  auto block = [&](auto hb_tag, int64_t j0) {
    constexpr int HB = decltype(hb_tag)::value;
    if constexpr (std::is_same<P, float>::value) {
      panel_block_f32<HB, QN>(sh, panel, q_rows, j0, w, s);
    } else {
#if defined(SA_LANES_BF16)
      panel_block_bf16<HB, QN>(sh, panel, q_rows, j0, w, s);
#endif
    }
  };
  int64_t j0 = 0;
  if constexpr (QN == 1 && kMaxHeadsPerPass == 4) {
    for (; j0 + 4 <= sh.J; j0 += 4) block(std::integral_constant<int, 4>{}, j0);
    switch (sh.J - j0) {
      case 3: block(std::integral_constant<int, 3>{}, j0); break;
      case 2: block(std::integral_constant<int, 2>{}, j0); break;
      case 1: block(std::integral_constant<int, 1>{}, j0); break;
      default: break;
    }
  } else {
    for (; j0 < sh.J; ++j0) block(std::integral_constant<int, 1>{}, j0);
  }
}
#endif  // SA_LANES

// ----- key panels -----------------------------------------------------------------------------

// [Rk][panels][D][kPanel] floats, zero padded past N_k.
AlignedVector<float> float_panels(const TopKShapes& s, const float* k, int64_t Rk) {
  AlignedVector<float> out(Rk * s.panels * s.D * kPanel, 0.0f);
  at::parallel_for(0, Rk * s.panels, 16, [&](int64_t begin, int64_t end) {
    for (int64_t rp = begin; rp < end; ++rp) {
      const int64_t r = rp / s.panels, p = rp % s.panels;
      float* dst = out.data() + rp * s.D * kPanel;
      for (int64_t l = 0; l < kPanel && p * kPanel + l < s.Nk; ++l) {
        const float* src = k + (r * s.Nk + p * kPanel + l) * s.D;
        for (int64_t d = 0; d < s.D; ++d) dst[d * kPanel + l] = src[d];
      }
    }
  });
  return out;
}

// [Rk][panels][pairs][kPanel][2] bf16 (round to nearest even), zero padded (pairs >= D / 2).
// One pair row of 16 keys is also the row of an AMX B tile (16 keys x 2 features).
AlignedVector<at::BFloat16> bf16_panels(const TopKShapes& s, const float* k, int64_t Rk, int64_t pairs) {
  AlignedVector<at::BFloat16> out(Rk * s.panels * pairs * kPanel * 2, at::BFloat16(0.0f));
  at::parallel_for(0, Rk * s.panels, 16, [&](int64_t begin, int64_t end) {
    for (int64_t rp = begin; rp < end; ++rp) {
      const int64_t r = rp / s.panels, p = rp % s.panels;
      at::BFloat16* dst = out.data() + rp * pairs * kPanel * 2;
      for (int64_t l = 0; l < kPanel && p * kPanel + l < s.Nk; ++l) {
        const float* src = k + (r * s.Nk + p * kPanel + l) * s.D;
        for (int64_t d = 0; d < s.D; ++d) dst[((d / 2) * kPanel + l) * 2 + (d % 2)] = at::BFloat16(src[d]);
      }
    }
  });
  return out;
}

// ----- drivers --------------------------------------------------------------------------------------

// Work item u of ``blocks`` -> query block: first, last, second, second-to-last, ... so that a
// contiguous range of items mixes long and short causal rows and the static thread split of
// at::parallel_for is balanced.
inline int64_t interleaved_block(int64_t u, int64_t blocks) {
  return (u % 2 == 0) ? u / 2 : blocks - 1 - u / 2;
}

// Cut the candidates to K and write them, -1 padded, to dst[0 .. K).
inline void write_selection(Candidates& c, int64_t K, SelectScratch& scratch, int64_t* dst) {
  if (c.count > K) c.shrink(K, scratch);
  for (int64_t i = 0; i < c.count; ++i) dst[i] = c.key[i];
  for (int64_t i = c.count; i < K; ++i) dst[i] = -1;
}

template <typename P>
void select_rows(const TopKShapes& s, const AlignedVector<P>& panels, const P* q, int64_t q_len, const float* w,
                 int64_t* out) {
  const int64_t QB = s.J == 1 ? 64 : 32;  // queries per work item
  const int64_t blocks = (s.Nq + QB - 1) / QB;
  const int64_t panel_elems = (std::is_same<P, float>::value ? s.D : q_len) * kPanel;
  const int64_t capacity = kGrow * s.K + kPanel;
  at::parallel_for(0, s.R * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<Candidates> cand(QB);
    SelectScratch select_scratch(capacity);
    std::vector<const P*> q_rows(4 * s.J);
    const float* w_rows[4];
    alignas(64) float scores[kPanel];
    (void)scores;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t r = item / blocks, u = item % blocks;
      const int64_t blk = interleaved_block(u, blocks);
      const int64_t t0 = blk * QB, t1 = std::min(s.Nq, t0 + QB);
      const int64_t rk = r / s.group;
      const P* rk_panels = panels.data() + rk * s.panels * panel_elems;
      for (int64_t t = t0; t < t1; ++t) cand[t - t0].reset(capacity);
      const int64_t last_key = std::min(s.Nk - 1, s.limit(t1 - 1));
      const int64_t n_panels = last_key < 0 ? 0 : last_key / kPanel + 1;
      for (int64_t p = 0; p < n_panels; ++p) {
        const P* panel = rk_panels + p * panel_elems;
        const int64_t key0 = p * kPanel;
        int64_t t = t0;
        while (t < t1) {
          // Four queries at once when a score row has a single head (exact top-k): the panel
          // loads are then shared by four accumulator sets.
#if defined(SA_LANES)
          const int64_t qn = (s.J == 1 && kQueriesPerPass == 4 && t + 4 <= t1) ? 4 : 1;
#else
          const int64_t qn = 1;
#endif
          if (qn == 1 && s.limit(t) < key0) {  // the whole panel is in this query's future
            ++t;
            continue;
          }
          for (int64_t i = 0; i < qn; ++i) {
            for (int64_t j = 0; j < s.J; ++j) q_rows[i * s.J + j] = q + ((r * s.J + j) * s.Nq + t + i) * q_len;
            w_rows[i] = s.has_weights ? w + (r * s.Nq + t + i) * s.J : nullptr;
          }
          const float* const* w_ptr = s.has_weights ? w_rows : nullptr;
#if defined(SA_LANES)
          simd::F16 sc[4][4];
          if (qn == 4) {
            panel_scores_vector<P, kQueriesPerPass>(s, panel, q_rows.data(), w_ptr, sc);
          } else {
            panel_scores_vector<P, 1>(s, panel, q_rows.data(), w_ptr, sc);
          }
#endif
          for (int64_t i = 0; i < qn; ++i) {
            const int64_t valid = std::min({kPanel, s.limit(t + i) - key0 + 1, s.Nk - key0});
            if (valid <= 0) continue;
            Candidates& c = cand[t + i - t0];
#if defined(SA_LANES)
            c.offer(sc[i], key0, valid);
#else
            panel_scores_generic(s, panel, q_rows.data() + i * s.J, w_rows[i], scores);
            c.offer(scores, key0, valid);
#endif
            if (c.count > kGrow * s.K) c.shrink(s.K, select_scratch);
          }
          t += qn;
        }
      }
      for (int64_t t = t0; t < t1; ++t) write_selection(cand[t - t0], s.K, select_scratch, out + (r * s.Nq + t) * s.K);
    }
  });
}

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
// ----- AMX (bf16 tiles) -------------------------------------------------------------------------
//
// The per-head logits of a block of queries against one 64-key panel are one small GEMM,
// [QB * J rows, D] x [D, 64], computed on the AMX tile unit (16 x 16 fp32 results per
// instruction, products of bf16 inputs accumulated in fp32), stored to an L1 buffer, then
// reduced over heads (ReLU, weights) and offered to the candidates with simd::F16 (AVX-512).

// S[row][0 .. 64) = A[row] . panel keys for row < rows (a multiple of 32).
// A: [rows][Dp] bf16, Dp a multiple of 32; panel: [Dp / 2][64][2] bf16; S: [rows][64] fp32.
inline void amx_panel_logits(const at::BFloat16* A, int64_t rows, int64_t Dp, const at::BFloat16* panel, float* S) {
  const int64_t ksteps = Dp / 32;
  for (int64_t half = 0; half < 2; ++half) {  // keys [32 half, 32 half + 32)
    for (int64_t g = 0; g < rows; g += 32) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t ks = 0; ks < ksteps; ++ks) {
        _tile_loadd(4, A + g * Dp + ks * 32, Dp * 2);
        _tile_loadd(5, A + (g + 16) * Dp + ks * 32, Dp * 2);
        const at::BFloat16* b = panel + ks * 16 * kPanel * 2 + half * 64;  // pair rows 16 ks .. 16 ks + 15
        _tile_loadd(6, b, kPanel * 4);
        _tile_loadd(7, b + 32, kPanel * 4);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      float* o = S + g * kPanel + half * 32;
      _tile_stored(0, o, kPanel * 4);
      _tile_stored(1, o + 16, kPanel * 4);
      _tile_stored(2, o + 16 * kPanel, kPanel * 4);
      _tile_stored(3, o + 16 * kPanel + 16, kPanel * 4);
    }
  }
}

// q: [R, J, N_q, Dp] bf16 (zero padded); panels: bf16_panels with Dp / 2 pairs.
void select_rows_amx(const TopKShapes& s, const AlignedVector<at::BFloat16>& panels, const at::BFloat16* q,
                     int64_t Dp, const float* w, int64_t* out) {
  const int64_t QB = std::max<int64_t>(1, 128 / s.J);  // ~128 logit rows per block: S stays in L1
  const int64_t rows = (QB * s.J + 31) / 32 * 32;
  const int64_t blocks = (s.Nq + QB - 1) / QB;
  const int64_t panel_elems = Dp * kPanel;
  const int64_t capacity = kGrow * s.K + kPanel;
  at::parallel_for(0, s.R * blocks, 1, [&](int64_t begin, int64_t end) {
    amx::configure_full_tiles();
    std::vector<Candidates> cand(QB);
    SelectScratch select_scratch(capacity);
    AlignedVector<at::BFloat16> A(rows * Dp);
    AlignedVector<float> S(rows * kPanel);
    const simd::F16 zero = simd::zero();
    for (int64_t item = begin; item < end; ++item) {
      const int64_t r = item / blocks;
      const int64_t t0 = interleaved_block(item % blocks, blocks) * QB, t1 = std::min(s.Nq, t0 + QB);
      const at::BFloat16* rk_panels = panels.data() + (r / s.group) * s.panels * panel_elems;
      std::fill(A.begin(), A.end(), at::BFloat16(0.0f));
      for (int64_t t = t0; t < t1; ++t) {
        cand[t - t0].reset(capacity);
        for (int64_t j = 0; j < s.J; ++j)
          std::memcpy(A.data() + ((t - t0) * s.J + j) * Dp, q + ((r * s.J + j) * s.Nq + t) * Dp,
                      Dp * sizeof(at::BFloat16));
      }
      const int64_t last_key = std::min(s.Nk - 1, s.limit(t1 - 1));
      const int64_t n_panels = last_key < 0 ? 0 : last_key / kPanel + 1;
      for (int64_t p = 0; p < n_panels; ++p) {
        const int64_t key0 = p * kPanel;
        amx_panel_logits(A.data(), rows, Dp, rk_panels + p * panel_elems, S.data());
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t valid = std::min({kPanel, s.limit(t) - key0 + 1, s.Nk - key0});
          if (valid <= 0) continue;
          simd::F16 sc[4] = {zero, zero, zero, zero};
          for (int64_t j = 0; j < s.J; ++j) {
            const float* row = S.data() + ((t - t0) * s.J + j) * kPanel;
            const simd::F16 wv = simd::set1(s.has_weights ? w[(r * s.Nq + t) * s.J + j] : 1.0f);
            for (int c = 0; c < 4; ++c) {
              const simd::F16 x = simd::loadu(row + 16 * c);
              sc[c] = simd::fmadd(wv, s.relu ? simd::max(zero, x) : x, sc[c]);
            }
          }
          Candidates& c = cand[t - t0];
          c.offer(sc, key0, valid);
          if (c.count > kGrow * s.K) c.shrink(s.K, select_scratch);
        }
      }
      for (int64_t t = t0; t < t1; ++t) write_selection(cand[t - t0], s.K, select_scratch, out + (r * s.Nq + t) * s.K);
    }
    _tile_release();
  });
}
#endif  // AMX

}  // namespace

// q: [R, J, N_q, D] float32; k: [R / group, N_k, D] float32; w: [R, N_q, J] float32 or an
// empty tensor (all weights 1). bf16: 0 = fp32 products, 1 = bf16 inputs (AMX when permitted),
// 2 = bf16 inputs on AVX512-BF16 even where AMX is available (for tests). Returns [R, N_q, min(top_k, N_k)] int64 key positions in no
// particular order, -1 where fewer keys are visible (causal prefix).
at::Tensor fused_topk(at::Tensor q, at::Tensor k, at::Tensor w, int64_t top_k, bool causal, bool relu,
                      int64_t group, int64_t bf16) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 3, "fused_topk: q must be [R, J, N_q, D] and k [R_k, N_k, D]");
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat, "fused_topk: q, k must be float32");
  TORCH_CHECK(group >= 1 && q.size(0) == k.size(0) * group, "fused_topk: R must equal R_k * group");
  TORCH_CHECK(k.size(2) == q.size(3), "fused_topk: q and k feature sizes differ");
  TORCH_CHECK(k.size(1) < (int64_t{1} << 31), "fused_topk: N_k must fit in int32");
  q = q.contiguous();
  k = k.contiguous();
  TopKShapes s;
  s.R = q.size(0); s.J = q.size(1); s.Nq = q.size(2); s.D = q.size(3); s.Nk = k.size(1);
  s.K = std::min(top_k, s.Nk); s.group = group; s.offset = s.Nk - s.Nq;
  s.panels = (s.Nk + kPanel - 1) / kPanel; s.causal = causal; s.relu = relu;
  s.has_weights = w.numel() > 0;
  if (s.has_weights) {
    TORCH_CHECK(w.scalar_type() == at::kFloat && w.dim() == 3 && w.size(0) == s.R && w.size(1) == s.Nq &&
                    w.size(2) == s.J, "fused_topk: w must be float32 [R, N_q, J]");
    w = w.contiguous();
  }
  auto out = at::empty({s.R, s.Nq, s.K}, q.options().dtype(at::kLong));
  const float* wp = s.has_weights ? w.data_ptr<float>() : nullptr;
  if (bf16) {
    // Products of bf16-rounded inputs, accumulated in fp32: AMX tiles when the CPU and the
    // kernel allow them, else AVX512-BF16 dot products.
    const int64_t Dp = (s.D + 31) / 32 * 32;
    auto qb = at::zeros({s.R, s.J, s.Nq, Dp}, q.options().dtype(at::kBFloat16));
    qb.narrow(3, 0, s.D).copy_(q);
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
    if (bf16 == 1 && amx::permitted()) {
      auto panels = bf16_panels(s, k.data_ptr<float>(), k.size(0), Dp / 2);
      select_rows_amx(s, panels, qb.data_ptr<at::BFloat16>(), Dp, wp, out.data_ptr<int64_t>());
      return out;
    }
#endif
#if defined(SA_LANES_BF16)
    auto panels = bf16_panels(s, k.data_ptr<float>(), k.size(0), Dp / 2);
    select_rows<at::BFloat16>(s, panels, qb.data_ptr<at::BFloat16>(), Dp, wp, out.data_ptr<int64_t>());
#else
    TORCH_CHECK(false, "fused_topk: bfloat16 scoring needs a CPU with AMX-BF16 or AVX512-BF16");
#endif
  } else {
    auto panels = float_panels(s, k.data_ptr<float>(), k.size(0));
    select_rows<float>(s, panels, q.data_ptr<float>(), s.D, wp, out.data_ptr<int64_t>());
  }
  return out;
}

// Which bf16 scoring path fused_topk(bf16=true) takes: "amx", "avx512_bf16" or "" (none).
std::string fused_topk_bf16_path() {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
  if (amx::permitted()) return "amx";
#endif
#if defined(SA_LANES_BF16)
  return "avx512_bf16";
#else
  return "";
#endif
}

SA_OP_LIBRARY(m) {
  // Fused scoring + top-k selection.
  m.def("fused_topk(Tensor q, Tensor k, Tensor w, int top_k, bool causal, bool relu, int group, int bf16) -> Tensor",
        &fused_topk);
  // The bf16 scoring path: amx, avx512_bf16 or empty.
  m.def("fused_topk_bf16_path() -> str", &fused_topk_bf16_path);
}
