// k-means on CPU for the clustering selections (ssa, routing): the k-means++ seeding and the
// Lloyd assignment step.
//
// Seeding (kmeanspp_picks):
// Each of the k draws depends on the previous one (a point is drawn with probability
// proportional to its squared distance to the nearest centroid so far), so the seeding is k
// passes over the L points. In PyTorch every pass is a handful of small operator calls plus a
// multinomial draw, which at these sizes costs far more than its arithmetic; here one thread
// runs the whole loop of one problem from L1/L2.
//
// The draws are inverse-CDF draws from uniforms the caller passes in (u[g, j] for draw j), and
// the distances and their running sums are computed in float64, so the pure-PyTorch reference
// (selection._kmeans.kmeanspp_picks_reference), given the same uniforms, picks the same points:
// the two differ only in the rounding of float64 sums, far below any gap between two points'
// cumulative weights in practice.
//
// Assignment (kmeans_assign): each point's nearest centroid, argmax_c (x . c + bias_c), the GEMM
// and the argmax fused: points are scored against panels of 64 centroids held transposed
// ([D][64] floats), four points per pass sharing the panel loads, and each point keeps a
// running best per lane, so the [L, C] score matrix is never written (in PyTorch a batched GEMM
// and an argmax over it).

#include "op_library.h"

#include "aligned_vector.h"
#include "simd16.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t kPoints = 32;  // points per inner block: independent accumulators the compiler vectorises

// dist[i] = squared distance of point i to centroid c: |x_i|^2 - 2 x_i.c + |c|^2 (Euclidean, clamped
// at 0) or 2 - 2 x_i.c (spherical: unit points), in float64. xt: [D][L] points transposed (float32:
// half the bytes of the pass over all points that every draw makes, which is what bounds it).
template <int64_t N>
inline void dot_block(const float* xt, int64_t L, int64_t D, const double* c, int64_t n, double* acc) {
  for (int64_t j = 0; j < N; ++j) acc[j] = 0.0;
  for (int64_t d = 0; d < D; ++d) {
    const double cd = c[d];
    const float* row = xt + d * L;
    for (int64_t j = 0; j < (N > 0 ? N : n); ++j) acc[j] += static_cast<double>(row[j]) * cd;
  }
}

void distances(const std::vector<float>& xt, const std::vector<double>& x_sq, const double* c, double c_sq,
               int64_t L, int64_t D, bool spherical, std::vector<double>& dist) {
  for (int64_t i0 = 0; i0 < L; i0 += kPoints) {
    const int64_t n = std::min(kPoints, L - i0);
    double acc[kPoints];
    if (n == kPoints) {
      dot_block<kPoints>(xt.data() + i0, L, D, c, n, acc);  // a fixed trip count: accumulators stay in registers
    } else {
      for (int64_t j = 0; j < kPoints; ++j) acc[j] = 0.0;
      dot_block<0>(xt.data() + i0, L, D, c, n, acc);
    }
    for (int64_t j = 0; j < n; ++j) {
      const double v = spherical ? 2.0 - 2.0 * acc[j] : x_sq[i0 + j] - 2.0 * acc[j] + c_sq;
      dist[i0 + j] = std::max(v, 0.0);
    }
  }
}

// The weight of a point in a draw: its distance, or 0 where that is not a positive finite number.
inline double weight(double d) { return (std::isfinite(d) && d > 0.0) ? d : 0.0; }

// min(a, b) as torch.minimum has it: NaN when either is NaN.
inline double nan_min(double a, double b) { return (std::isnan(a) || std::isnan(b)) ? NAN : std::min(a, b); }

// A uniform draw over L points from u in [0, 1).
inline int64_t uniform_pick(double u, int64_t L) { return std::min<int64_t>(static_cast<int64_t>(u * L), L - 1); }

// ----- assignment ------------------------------------------------------------------------------

constexpr int64_t kPanel = 64;  // centroids per panel
constexpr int64_t kPointsPerPass = 4;  // points sharing a pass over a panel

#if defined(SA_LANES)
// Running best of one point: per lane, the largest score seen and its centroid (as float:
// exact below 2^24). NaN scores count as +inf; a tie keeps the earlier centroid.
struct Best {
  simd::F16 value[4], index[4];
};

// Scores of points x[0 .. 4) (rows of D floats) against the first 16 * NC centroids of one panel
// ([D][64] floats, bias [64]) into best: NC < 4 for the last panel, so that a centroid count just
// above a multiple of 64 does not pay for a whole panel of padding.
template <int NC>
__attribute__((noinline)) void assign_panel(const float* const* x, int64_t D, const float* panel, const float* bias,
                                            float first_index, Best* best) {
  simd::F16 acc[kPointsPerPass][NC];
  for (int r = 0; r < kPointsPerPass; ++r)
    for (int c = 0; c < NC; ++c) acc[r][c] = simd::loadu(bias + 16 * c);
  for (int64_t d = 0; d < D; ++d) {
    const float* kr = panel + d * kPanel;
    simd::F16 k[NC];
    for (int c = 0; c < NC; ++c) k[c] = simd::loadu(kr + 16 * c);
    for (int r = 0; r < kPointsPerPass; ++r) {
      const simd::F16 b = simd::set1(x[r][d]);
      for (int c = 0; c < NC; ++c) acc[r][c] = simd::fmadd(b, k[c], acc[r][c]);
    }
  }
  alignas(64) float lane_index[16];
  for (int l = 0; l < 16; ++l) lane_index[l] = first_index + l;
  for (int c = 0; c < NC; ++c) {
    const simd::F16 idx = simd::add(simd::loadu(lane_index), simd::set1(16.0f * c));
    for (int r = 0; r < kPointsPerPass; ++r) {
      const simd::F16 v = simd::nan_to_posinf(acc[r][c]);
      best[r].index[c] = simd::where_greater(v, best[r].value[c], idx, best[r].index[c]);
      best[r].value[c] = simd::where_greater(v, best[r].value[c], v, best[r].value[c]);
    }
  }
}
#endif

// The centroid of largest score: largest value over lanes, smallest centroid among its lanes.
#if defined(SA_LANES)
int64_t best_centroid(const Best& b) {
  alignas(64) float value[64], index[64];
  for (int c = 0; c < 4; ++c) {
    simd::store(value + 16 * c, b.value[c]);
    simd::store(index + 16 * c, b.index[c]);
  }
  float best_v = value[0], best_i = index[0];
  for (int l = 1; l < 64; ++l)
    if (value[l] > best_v || (value[l] == best_v && index[l] < best_i)) {
      best_v = value[l];
      best_i = index[l];
    }
  return static_cast<int64_t>(best_i);
}
#endif

}  // namespace

// x: [G, L, D] float32 points, c: [G, C, D] float32 centroids, bias: [G, C] float32 (or empty: 0).
// Returns [G, L] int64: argmax_c (x . c + bias_c), the first such c on ties, NaN scores counted
// as +inf.
at::Tensor kmeans_assign(at::Tensor x, at::Tensor c, at::Tensor bias) {
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == at::kFloat, "kmeans_assign: x must be [G, L, D] float32");
  TORCH_CHECK(c.dim() == 3 && c.scalar_type() == at::kFloat && c.size(0) == x.size(0) && c.size(2) == x.size(2)
                  && c.size(1) >= 1, "kmeans_assign: c must be [G, C >= 1, D] float32");
  const bool has_bias = bias.numel() > 0;
  TORCH_CHECK(!has_bias || (bias.scalar_type() == at::kFloat && bias.dim() == 2 && bias.size(0) == c.size(0)
                            && bias.size(1) == c.size(1)), "kmeans_assign: bias must be [G, C] float32");
  x = x.contiguous();
  c = c.contiguous();
  if (has_bias) bias = bias.contiguous();
  const int64_t G = x.size(0), L = x.size(1), D = x.size(2), C = c.size(1);
  const int64_t panels = (C + kPanel - 1) / kPanel;
  auto out = at::empty({G, L}, x.options().dtype(at::kLong));
  const float* xp = x.data_ptr<float>();
  const float* cp = c.data_ptr<float>();
  const float* bp = has_bias ? bias.data_ptr<float>() : nullptr;
  int64_t* op = out.data_ptr<int64_t>();
  // Centroid panels [G][panels][D][64] and biases [G][panels][64]; padding centroids score -inf.
  AlignedVector<float> cT(G * panels * D * kPanel, 0.0f), cb(G * panels * kPanel, -__builtin_inff());
  for (int64_t g = 0; g < G; ++g)
    for (int64_t j = 0; j < C; ++j) {
      const int64_t p = j / kPanel, l = j % kPanel;
      for (int64_t d = 0; d < D; ++d) cT[((g * panels + p) * D + d) * kPanel + l] = cp[(g * C + j) * D + d];
      cb[(g * panels + p) * kPanel + l] = bp ? bp[g * C + j] : 0.0f;
    }
  constexpr int64_t kPointBlock = 256;
  const int64_t blocks = (L + kPointBlock - 1) / kPointBlock;
  at::parallel_for(0, G * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t g = item / blocks, i0 = (item % blocks) * kPointBlock, i1 = std::min(L, i0 + kPointBlock);
      const float* gT = cT.data() + g * panels * D * kPanel;
      const float* gb = cb.data() + g * panels * kPanel;
#if defined(SA_LANES)
      for (int64_t i = i0; i < i1; i += kPointsPerPass) {
        const float* rows[kPointsPerPass];
        for (int64_t r = 0; r < kPointsPerPass; ++r) rows[r] = xp + (g * L + std::min(i + r, i1 - 1)) * D;
        Best best[kPointsPerPass];
        for (auto& b : best)
          for (int c4 = 0; c4 < 4; ++c4) {
            b.value[c4] = simd::set1(-__builtin_inff());
            b.index[c4] = simd::set1(0.0f);
          }
        for (int64_t p = 0; p < panels; ++p) {
          const float* panel = gT + p * D * kPanel;
          const float* pb = gb + p * kPanel;
          const float first = static_cast<float>(p * kPanel);
          switch (std::min<int64_t>(4, (C - p * kPanel + 15) / 16)) {  // 16-centroid chunks holding centroids
            case 1: assign_panel<1>(rows, D, panel, pb, first, best); break;
            case 2: assign_panel<2>(rows, D, panel, pb, first, best); break;
            case 3: assign_panel<3>(rows, D, panel, pb, first, best); break;
            default: assign_panel<4>(rows, D, panel, pb, first, best); break;
          }
        }
        for (int64_t r = 0; r < kPointsPerPass && i + r < i1; ++r) op[g * L + i + r] = best_centroid(best[r]);
      }
#else
      for (int64_t i = i0; i < i1; ++i) {
        const float* xi = xp + (g * L + i) * D;
        float best_v = -__builtin_inff();
        int64_t best_j = 0;
        for (int64_t j = 0; j < C; ++j) {
          const int64_t p = j / kPanel, l = j % kPanel;
          float v = gb[p * kPanel + l];
          for (int64_t d = 0; d < D; ++d) v += xi[d] * gT[(p * D + d) * kPanel + l];
          if (v != v) v = __builtin_inff();
          if (v > best_v) {
            best_v = v;
            best_j = j;
          }
        }
        op[g * L + i] = best_j;
      }
#endif
    }
  });
  return out;
}

// x: [G, L, D] float32 points (unit vectors when spherical); u: [G, k] float64 uniforms in [0, 1).
// Returns [G, k] int64: the points chosen as initial centroids. Draw 0 is uniform (floor(u * L));
// draw j > 0 takes the first point whose cumulative weight exceeds u * (total weight), the weight
// being the squared distance to the nearest point drawn so far (uniform again when all weights are 0).
at::Tensor kmeanspp_picks(at::Tensor x, at::Tensor u, bool spherical) {
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == at::kFloat, "kmeanspp_picks: x must be [G, L, D] float32");
  TORCH_CHECK(u.dim() == 2 && u.scalar_type() == at::kDouble && u.size(0) == x.size(0),
              "kmeanspp_picks: u must be [G, k] float64");
  TORCH_CHECK(x.size(1) >= 1, "kmeanspp_picks: every problem needs a point");
  x = x.contiguous();
  u = u.contiguous();
  const int64_t G = x.size(0), L = x.size(1), D = x.size(2), k = u.size(1);
  auto out = at::empty({G, k}, x.options().dtype(at::kLong));
  const float* xp = x.data_ptr<float>();
  const double* up = u.data_ptr<double>();
  int64_t* op = out.data_ptr<int64_t>();
  at::parallel_for(0, G, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> xt(static_cast<size_t>(D * L));
    std::vector<double> x_sq(static_cast<size_t>(L)), min_d(static_cast<size_t>(L)),
        dist(static_cast<size_t>(L)), c(static_cast<size_t>(D));
    for (int64_t g = begin; g < end; ++g) {
      const float* xg = xp + g * L * D;
      for (int64_t i = 0; i < L; ++i) {
        double sq = 0.0;
        for (int64_t d = 0; d < D; ++d) {
          const double v = xg[i * D + d];
          xt[d * L + i] = xg[i * D + d];
          sq += v * v;
        }
        x_sq[i] = sq;
      }
      const double* ug = up + g * k;
      int64_t* picks = op + g * k;
      for (int64_t j = 0; j < k; ++j) {
        int64_t pick;
        if (j == 0) {
          pick = uniform_pick(ug[0], L);
        } else {
          double total = 0.0;
          for (int64_t i = 0; i < L; ++i) total += weight(min_d[i]);
          if (!(total > 0.0)) {
            pick = uniform_pick(ug[j], L);
          } else {
            const double target = ug[j] * total;
            double run = 0.0;
            pick = L - 1;
            for (int64_t i = 0; i < L; ++i) {
              run += weight(min_d[i]);
              if (run > target) {
                pick = i;
                break;
              }
            }
          }
        }
        picks[j] = pick;
        if (j + 1 == k) break;  // the last draw needs no distances
        double c_sq = 0.0;
        for (int64_t d = 0; d < D; ++d) {
          c[d] = xg[pick * D + d];
          c_sq += c[d] * c[d];
        }
        distances(xt, x_sq, c.data(), c_sq, L, D, spherical, dist);
        if (j == 0) {
          min_d = dist;
        } else {
          for (int64_t i = 0; i < L; ++i) min_d[i] = nan_min(min_d[i], dist[i]);
        }
      }
    }
  });
  return out;
}

SA_OP_LIBRARY(m) {
  // Nearest centroid of every point, GEMM and argmax fused.
  m.def("kmeans_assign(Tensor x, Tensor c, Tensor bias) -> Tensor", &kmeans_assign);
  // k-means++ seeding from given uniforms, float64 distances.
  m.def("kmeanspp_picks(Tensor x, Tensor u, bool spherical) -> Tensor", &kmeanspp_picks);
}
