// Sparse attention on CPU: forward and backward, fp32 compute, fp32 or bf16 storage (bf16
// forward passes on CPUs with AMX-BF16 multiply bf16 tiles instead: amx_attention.h).
//
// One work item is one query token of one selection group: the G query heads that share a
// KV head and one index row (shared or per-KV-head selections), or a single head (per-head
// selections). The item gathers its valid keys once and computes
//   S = Q_g K_sel^T   [G x n]     (a small GEMM: the selection is shared by the G heads)
//   P = softmax(S)    row-wise
//   O = P V_sel       [G x D_v]
// with register-blocked loops written so that the compiler vectorises the inner dimension
// (keys for S, features for O). Keys are processed in tiles of 16 gathered into a
// transposed buffer. The backward pass recomputes P from the saved log-sum-exp.
// dK and dV are scatter-added into per-thread buffers that are summed at the end, so the
// result does not depend on thread timing. When compiled with AVX-512 or AVX2 + FMA (SA_LANES,
// simd16.h; D, D_v multiples of 16) an item of up to 16 heads runs the lane kernels of lanes.h
// (one 16-float value = all heads; measured faster than the tiled path even for 1-2 heads) or,
// for groups of up to 8 heads, the per-(head, key) kernels of lanes_rows.h; the fp32 forward
// then runs blocks of query tokens that walk their keys range by range (lanes_blocks.h,
// key_ranges.h), as the AMX bf16 forward does. A build without FMA (generic x86-64) runs the
// tiled loops below for everything.

#include "op_library.h"

#include "aligned_vector.h"
#include "amx_attention.h"
#include "exp_neg.h"
#include "lanes.h"
#include "lanes_blocks.h"
#include "lanes_rows.h"
#include "lanes_rows_backward.h"

#include <algorithm>
#include <cmath>
#include <tuple>
#include <utility>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace {

// Large matrices read or scatter-added in random row order (the gathered keys and values, the
// per-thread dK/dV accumulators) are kept on 2 MiB pages: with 4 KiB pages nearly every
// selected row costs a TLB miss and a page walk, and Linux backs memory with huge pages only
// where asked (transparent_hugepage=madvise is common). Filling the array costs one
// sequential pass, small next to the gathers. Below kMinBytes, or when the request fails,
// the array is an ordinary allocation (or, for a copy, the source itself).
//
// The array is its own mapping (mmap), not a heap block: freed, it goes back to the OS at once.
// A heap block glibc hands out from its free lists would stay resident after the call, and, once
// advised onto huge pages, as whole 2 MiB pages, raising a training step's resident peak.
class HugePageArray {
 public:
  static constexpr int64_t kMinBytes = int64_t{1} << 20;
  static constexpr int64_t kHuge = int64_t{2} << 20;

  // A copy of src[0 .. numel), or src itself when !worth (see staging_pays).
  template <typename T>
  static HugePageArray copy_of(const T* src, int64_t numel, bool worth = true) {
    HugePageArray a(worth ? numel * static_cast<int64_t>(sizeof(T)) : 0);
    if (a.data_ == nullptr) {
      a.data_ = const_cast<T*>(src);
      return a;
    }
    T* dst = static_cast<T*>(a.data_);
    at::parallel_for(0, numel, int64_t{1} << 16, [&](int64_t begin, int64_t end) {
      std::memcpy(dst + begin, src + begin, (end - begin) * sizeof(T));
    });
    return a;
  }

  // numel zero floats.
  static HugePageArray zeros(int64_t numel) {
    HugePageArray a = floats(numel);
    float* p = a.data<float>();
    at::parallel_for(0, numel, int64_t{1} << 16, [&](int64_t begin, int64_t end) {
      std::memset(p + begin, 0, (end - begin) * sizeof(float));
    });
    return a;
  }

  // src[0 .. numel) widened to floats in one pass (no float copy beside this one).
  static HugePageArray widened(const at::BFloat16* src, int64_t numel) {
    HugePageArray a = floats(numel);
    float* p = a.data<float>();
    at::parallel_for(0, numel, int64_t{1} << 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) p[i] = static_cast<float>(src[i]);
    });
    return a;
  }

  HugePageArray(HugePageArray&& other) noexcept
      : data_(other.data_), heap_(other.heap_), mapped_(other.mapped_), mapped_bytes_(other.mapped_bytes_) {
    other.heap_ = other.mapped_ = nullptr;
  }
  HugePageArray(const HugePageArray&) = delete;
  HugePageArray& operator=(const HugePageArray&) = delete;
  ~HugePageArray() {
#if defined(__linux__)
    if (mapped_ != nullptr) munmap(mapped_, mapped_bytes_);
#endif
    std::free(heap_);
  }

  template <typename T>
  T* data() const { return static_cast<T*>(data_); }

 private:
  explicit HugePageArray(int64_t bytes) {
#if defined(__linux__)
    if (bytes < kMinBytes) return;
    // Map a huge page more than needed and unmap the ends, so the array starts on a 2 MiB boundary.
    const uintptr_t huge = kHuge, rounded = (bytes + huge - 1) / huge * huge, span = rounded + huge;
    void* p = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return;
    const uintptr_t first = reinterpret_cast<uintptr_t>(p), aligned = (first + huge - 1) / huge * huge;
    if (aligned > first) munmap(p, aligned - first);
    const uintptr_t end = aligned + rounded;
    if (first + span > end) munmap(reinterpret_cast<void*>(end), first + span - end);
    mapped_ = data_ = reinterpret_cast<void*>(aligned);
    mapped_bytes_ = rounded;
    madvise(mapped_, mapped_bytes_, MADV_HUGEPAGE);
#else
    (void)bytes;
#endif
  }

  // Room for numel floats: huge pages, or the heap below kMinBytes or where mmap failed.
  static HugePageArray floats(int64_t numel) {
    const int64_t bytes = numel * static_cast<int64_t>(sizeof(float));
    HugePageArray a(bytes);
    if (a.data_ == nullptr) {
      a.heap_ = std::malloc(std::max<int64_t>(bytes, 1));
      TORCH_CHECK(a.heap_ != nullptr, "sparse_attention_cpu: out of memory");
      a.data_ = a.heap_;
    }
    return a;
  }

  void* data_ = nullptr;    // the array (the source itself for a copy that did not pay)
  void* heap_ = nullptr;    // owned heap block (floats() below kMinBytes or where mmap failed)
  void* mapped_ = nullptr;  // owned mapping of mapped_bytes_
  size_t mapped_bytes_ = 0;
};

struct Shapes;
// Whether copying K and V onto huge pages pays: the copy reads every key row once, so it only
// does when the call gathers at least as many rows as it would copy. A decode step (a few
// queries against a long cache) gathers far fewer, and the copy alone would cost more than its
// gathers (one query, K = 2048 of 32768 keys: a 16 MiB copy for 2048 rows read).
bool staging_pays(const Shapes& s);

constexpr int kTile = 16;   // keys per tile (one AVX-512 register of floats)
constexpr int kHeads = 4;   // heads per register block

inline float to_float(float x) { return x; }
inline float to_float(at::BFloat16 x) { return static_cast<float>(x); }

template <typename T>
inline T from_float(float x) { return static_cast<T>(x); }

struct Shapes {
  int64_t B, H, Hkv, G, Hsel, Nq, Nk, D, Dv, K, offset;
  bool causal, per_head;
  // Memory layout of the output and of its gradient: [B][H][Nq][Dv] (false) or token-major
  // [B][Nq][H][Dv] (true), which the layer's output projection reads as [B, Nq, H * Dv] without
  // a copy, so that autograd keeps one tensor for both (see forward()).
  bool out_tokens_major = false, dout_tokens_major = false;
  int64_t items() const { return B * (per_head ? H : Hkv) * Nq; }
  // Element offset of output (gradient) row `row` = (b * H + h) * Nq + t.
  int64_t out_at(int64_t row) const { return offset_of_row(row, out_tokens_major); }
  int64_t dout_at(int64_t row) const { return offset_of_row(row, dout_tokens_major); }
  // Elements from one head's output (gradient) row to the next head's of the same token.
  int64_t out_head_stride() const { return out_tokens_major ? Dv : Nq * Dv; }
  int64_t dout_head_stride() const { return dout_tokens_major ? Dv : Nq * Dv; }
  int64_t offset_of_row(int64_t row, bool tokens_major) const {
    if (!tokens_major) return row * Dv;
    const int64_t t = row % Nq, bh = row / Nq;
    return ((bh / H * Nq + t) * H + bh % H) * Dv;
  }
};

bool staging_pays(const Shapes& s) { return s.items() * s.K >= s.B * s.Hkv * s.Nk; }

// Decode an item into (batch, kv head, first query head, heads in group, selection row).
struct Item {
  int64_t b, kvh, h0, nh, t, sel_row;
};

inline Item decode(const Shapes& s, int64_t item) {
  Item it;
  it.t = item % s.Nq;
  int64_t rest = item / s.Nq;
  if (s.per_head) {
    int64_t h = rest % s.H;
    it.b = rest / s.H;
    it.kvh = h / s.G;
    it.h0 = h;
    it.nh = 1;
    it.sel_row = (it.b * s.Hsel + h) * s.Nq + it.t;
  } else {
    it.kvh = rest % s.Hkv;
    it.b = rest / s.Hkv;
    it.h0 = it.kvh * s.G;
    it.nh = s.G;
    const int64_t sel_head = s.Hsel == 1 ? 0 : it.kvh;
    it.sel_row = (it.b * s.Hsel + sel_head) * s.Nq + it.t;
  }
  return it;
}

// Raises ValueError for the first entry of an index row outside [-1, Nk).
template <typename I>
[[noreturn]] __attribute__((noinline, cold)) void index_out_of_range(const I* row, int64_t K, int64_t Nk) {
  const I* bad = std::find_if(row, row + K, [Nk](I j) { return j < -1 || j >= Nk; });
  TORCH_CHECK_VALUE(false, "indices out of range: found value ", bad == row + K ? 0 : int64_t{*bad},
                    ", expected -1 (empty) or 0..", Nk - 1);
  __builtin_unreachable();
}

#if defined(__AVX512F__)
// Eight index entries widened to int64 (the backward keeps the selection as int16 or int32).
inline __m512i load8_as_int64(const int64_t* p) { return _mm512_loadu_si512(p); }
inline __m512i load8_as_int64(const int32_t* p) {
  return _mm512_cvtepi32_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline __m512i load8_as_int64(const int16_t* p) {
  return _mm512_cvtepi16_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
#endif

// Valid keys of one index row (>= 0 and causally visible), in slot order. ids: room for K.
// Entries outside [-1, Nk) raise ValueError: checking them here, where every entry is read
// anyway, replaces a separate pass over the N_q x K indices (~9 ms at N = 16384, K = 1024).
// I: int64_t, or int16_t / int32_t (the selection as the backward saved it: a quarter or half the
// bytes; no int64 copy).
template <typename I>
inline int64_t collect(const Shapes& s, const I* row, int64_t t, int64_t* ids) {
  const int64_t limit = s.causal ? t + s.offset : s.Nk - 1;
  int64_t n = 0, slot = 0;
  bool bad = false;
#if defined(__AVX512F__)
  // 8 slots per step: the valid ones packed to the front of a register stored whole (n <= slot,
  // so the store stays within the K slots of ids).
  const __m512i lo = _mm512_setzero_si512(), hi = _mm512_set1_epi64(limit);
  const __m512i empty = _mm512_set1_epi64(-1), nk = _mm512_set1_epi64(s.Nk);
  __mmask8 out_of_range = 0;
  for (; slot + 8 <= s.K; slot += 8) {
    const __m512i x = load8_as_int64(row + slot);
    const __mmask8 valid = _mm512_cmpge_epi64_mask(x, lo) & _mm512_cmple_epi64_mask(x, hi);
    out_of_range |= _mm512_cmplt_epi64_mask(x, empty) | _mm512_cmpge_epi64_mask(x, nk);
    _mm512_storeu_si512(ids + n, _mm512_maskz_compress_epi64(valid, x));
    n += __builtin_popcount(valid);
  }
  bad = out_of_range != 0;
#endif
  for (; slot < s.K; ++slot) {  // branchless: selections are unpredictable
    const int64_t j = row[slot];
    ids[n] = j;
    n += (j >= 0) & (j <= limit);
    bad |= (j < -1) | (j >= s.Nk);
  }
  if (__builtin_expect(bad, 0)) index_out_of_range(row, s.K, s.Nk);
  return n;
}

// collect() that also records each valid key's slot: pos[v] is the slot of ids[v]. pos: room for K.
inline int64_t collect_slots(const Shapes& s, const int64_t* row, int64_t t, int64_t* ids, int32_t* pos) {
  const int64_t n = collect(s, row, t, ids);
  const int64_t limit = s.causal ? t + s.offset : s.Nk - 1;
  int64_t v = 0;
  for (int64_t slot = 0; slot < s.K; ++slot) {  // branchless, as collect()
    const int64_t j = row[slot];
    pos[v] = static_cast<int32_t>(slot);
    v += (j >= 0) & (j <= limit);
  }
  return n;
}

// out[i][j] = sum_d A[i][d] * rows[ids[j]][d] for i < nh, j < n.
// A: [nh x D] float (row stride D); rows: base pointer of a [Nk x D] matrix of type T.
template <typename T>
void rows_gemm_nt(const float* A, int64_t nh, const T* rows, const int64_t* ids, int64_t n, int64_t D,
                  float* out, int64_t out_stride, float* tile /* [D x kTile] */) {
  for (int64_t j0 = 0; j0 < n; j0 += kTile) {
    const int64_t nt = std::min<int64_t>(kTile, n - j0);
    // Transposed tile: tile[d][l] = rows[ids[j0 + l]][d], zero padded.
    for (int64_t l = 0; l < kTile; ++l) {
      if (l < nt) {
        const T* r = rows + ids[j0 + l] * D;
        for (int64_t d = 0; d < D; ++d) tile[d * kTile + l] = to_float(r[d]);
      } else {
        for (int64_t d = 0; d < D; ++d) tile[d * kTile + l] = 0.0f;
      }
    }
    int64_t i = 0;
    for (; i + kHeads <= nh; i += kHeads) {
      float acc[kHeads][kTile] = {};
      const float* a0 = A + i * D;
      for (int64_t d = 0; d < D; ++d) {
        const float* tr = tile + d * kTile;
        for (int hh = 0; hh < kHeads; ++hh) {
          const float av = a0[hh * D + d];
#pragma omp simd
          for (int l = 0; l < kTile; ++l) acc[hh][l] += av * tr[l];
        }
      }
      for (int hh = 0; hh < kHeads; ++hh)
        for (int64_t l = 0; l < nt; ++l) out[(i + hh) * out_stride + j0 + l] = acc[hh][l];
    }
    for (; i < nh; ++i) {
      float acc[kTile] = {};
      const float* a = A + i * D;
      for (int64_t d = 0; d < D; ++d) {
        const float av = a[d];
        const float* tr = tile + d * kTile;
#pragma omp simd
        for (int l = 0; l < kTile; ++l) acc[l] += av * tr[l];
      }
      for (int64_t l = 0; l < nt; ++l) out[i * out_stride + j0 + l] = acc[l];
    }
  }
}

// out[i][:] = sum_j W[i][j] * rows[ids[j]][:] for i < nh (D_v features).
// W: [nh x n] float with row stride w_stride. out: [nh x Dv] float.
template <typename T>
void rows_gemm_nn(const float* W, int64_t w_stride, int64_t nh, const T* rows, const int64_t* ids, int64_t n,
                  int64_t Dv, float* out, float* rowbuf /* [Dv] */) {
  constexpr int kChunk = 64;  // features per register block (4 AVX-512 registers)
  for (int64_t c0 = 0; c0 < Dv; c0 += kChunk) {
    const int64_t nc = std::min<int64_t>(kChunk, Dv - c0);
    for (int64_t i0 = 0; i0 < nh; i0 += kHeads) {
      const int64_t hb = std::min<int64_t>(kHeads, nh - i0);
      float acc[kHeads][kChunk] = {};
      for (int64_t j = 0; j < n; ++j) {
        const T* r = rows + ids[j] * Dv + c0;
        const float* rf;
        if constexpr (std::is_same<T, float>::value) {
          rf = r;
        } else {
          for (int64_t c = 0; c < nc; ++c) rowbuf[c] = to_float(r[c]);
          rf = rowbuf;
        }
        if (nc == kChunk) {
          for (int hh = 0; hh < hb; ++hh) {
            const float w = W[(i0 + hh) * w_stride + j];
#pragma omp simd
            for (int c = 0; c < kChunk; ++c) acc[hh][c] += w * rf[c];
          }
        } else {
          for (int hh = 0; hh < hb; ++hh) {
            const float w = W[(i0 + hh) * w_stride + j];
            for (int64_t c = 0; c < nc; ++c) acc[hh][c] += w * rf[c];
          }
        }
      }
      for (int hh = 0; hh < hb; ++hh)
        for (int64_t c = 0; c < nc; ++c) out[(i0 + hh) * Dv + c0 + c] = acc[hh][c];
    }
  }
}

Shapes make_shapes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& idx, bool causal) {
  Shapes s;
  s.B = q.size(0); s.H = q.size(1); s.Nq = q.size(2); s.D = q.size(3);
  s.Hkv = k.size(1); s.Nk = k.size(2); s.Dv = v.size(3);
  s.G = s.H / s.Hkv; s.Hsel = idx.size(1); s.K = idx.size(3);
  s.offset = s.Nk - s.Nq; s.causal = causal;
  s.per_head = (s.Hsel == s.H) && (s.H != s.Hkv) && (s.Hsel != 1);
  return s;
}

#if defined(SA_LANES)
// Scratch of the lane kernels, one per thread.
struct LaneScratch {
  AlignedVector<float> at, st, dst, o, rows_q, rows_do, kconv, vconv, delta;
  int64_t kp;                         // padded_keys(K): row stride of s_rows and dp_rows
  AlignedVector<float> s_rows, dp_rows;  // [8][kp] per-(head, key) scores (lanes_rows.h)
  std::vector<const float*> krows, vrows;
  std::vector<float*> dkrows, dvrows;
  explicit LaneScratch(const Shapes& s)
      : at(std::max(s.D, s.Dv) * lanes::kLanes), st(std::max<int64_t>(s.K, 1) * lanes::kLanes),
        dst(std::max<int64_t>(s.K, 1) * lanes::kLanes), o(lanes::kLanes * std::max(s.D, s.Dv)),
        rows_q(lanes::kLanes * s.D), rows_do(lanes::kLanes * s.Dv), delta(lanes::kLanes),
        kp(rows::padded_keys(s.K)), s_rows(rows::kMaxHeads * kp), dp_rows(rows::kMaxHeads * kp), krows(s.K),
        vrows(s.K), dkrows(s.K), dvrows(s.K) {}
};

inline bool use_lanes(const Shapes& s, int64_t nh) {
  return nh <= lanes::kLanes && s.D % 16 == 0 && s.Dv % 16 == 0;
}

// Row pointers of the selected keys and values, as float (bf16 rows are converted once).
template <typename T>
void gather_rows(const Shapes& s, const T* k, const T* v, int64_t kv_off, const int64_t* ids, int64_t n,
                 LaneScratch& w) {
  if constexpr (std::is_same<T, float>::value) {
    for (int64_t j = 0; j < n; ++j) {
      w.krows[j] = k + (kv_off + ids[j]) * s.D;
      w.vrows[j] = v + (kv_off + ids[j]) * s.Dv;
    }
  } else {
    // bf16 rows widened 16 values at a time (the lane kernels need D, D_v multiples of 16): a
    // per-value conversion here cost more than the item's arithmetic.
    w.kconv.resize(n * s.D);
    w.vconv.resize(n * s.Dv);
    for (int64_t j = 0; j < n; ++j) {
      const auto* kr = reinterpret_cast<const uint16_t*>(k + (kv_off + ids[j]) * s.D);
      const auto* vr = reinterpret_cast<const uint16_t*>(v + (kv_off + ids[j]) * s.Dv);
      float* kc = w.kconv.data() + j * s.D;
      float* vc = w.vconv.data() + j * s.Dv;
      for (int64_t d = 0; d < s.D; d += 16) simd::storeu(kc + d, simd::load_bf16(kr + d));
      for (int64_t c = 0; c < s.Dv; c += 16) simd::storeu(vc + c, simd::load_bf16(vr + c));
      w.krows[j] = kc;
      w.vrows[j] = vc;
    }
  }
}

template <typename T>
void forward_item_lanes(const Shapes& s, const Item& it, const int64_t* ids, int64_t n, const T* q, const T* k,
                        const T* v, double scale, T* out, float* lse, LaneScratch& w) {
  const int64_t kv_off = (it.b * s.Hkv + it.kvh) * s.Nk;
  const int64_t row0 = (it.b * s.H + it.h0) * s.Nq + it.t;  // row of head i: row0 + i * Nq
  gather_rows(s, k, v, kv_off, ids, n, w);
  // Q^T of the group's heads (rows of q for consecutive heads are Nq * D apart).
  std::fill(w.at.begin(), w.at.begin() + s.D * lanes::kLanes, 0.0f);
  for (int64_t i = 0; i < it.nh; ++i) {
    const T* r = q + (row0 + i * s.Nq) * s.D;
    for (int64_t d = 0; d < s.D; ++d) w.at[d * lanes::kLanes + i] = to_float(r[d]) * static_cast<float>(scale);
  }
  float* st = w.st.data();
  simd::Mask16 nan = 0;
  const simd::F16 m = lanes::scores(w.at.data(), w.krows.data(), n, s.D, st, nan, w.vrows.data(), s.Dv);
  simd::F16 l = simd::zero();
  for (int64_t j = 0; j < n; ++j) {
    const simd::F16 p = simd::exp(simd::sub(simd::loadu(st + j * lanes::kLanes), m));
    simd::storeu(st + j * lanes::kLanes, p);
    l = simd::add(l, p);
  }
  alignas(64) float mm[lanes::kLanes], ll[lanes::kLanes];
  simd::store(mm, m);
  simd::store(ll, l);
  lanes::weighted_rows(st, it.nh, w.vrows.data(), n, s.Dv, w.o.data());
  for (int64_t i = 0; i < it.nh; ++i) {
    const bool is_nan = (nan >> i) & 1;
    const int64_t row = row0 + i * s.Nq;
    lse[row] = is_nan ? std::numeric_limits<float>::quiet_NaN() : mm[i] + std::log(ll[i]);
    const float inv = is_nan ? std::numeric_limits<float>::quiet_NaN() : 1.0f / ll[i];
    for (int64_t c = 0; c < s.Dv; ++c) out[s.out_at(row) + c] = from_float<T>(w.o[i * s.Dv + c] * inv);
  }
}

// First step of an item's backward: row pointers of its selected keys and values (w.krows,
// w.vrows), the scaled queries and output gradients of its heads (w.rows_q [nh][D], w.rows_do
// [nh][Dv]), delta_i = dO_i . O_i and the log-sum-exp per head.
template <typename T>
void load_backward_rows(const Shapes& s, const Item& it, const int64_t* ids, int64_t n, const T* q, const T* k,
                        const T* v, double scale, const T* out, const float* lse, const T* dout, LaneScratch& w,
                        float* delta, float* lse_h) {
  gather_rows(s, k, v, (it.b * s.Hkv + it.kvh) * s.Nk, ids, n, w);
  const int64_t row0 = (it.b * s.H + it.h0) * s.Nq + it.t;
  for (int64_t i = 0; i < it.nh; ++i) {
    const int64_t row = row0 + i * s.Nq;
    for (int64_t d = 0; d < s.D; ++d) w.rows_q[i * s.D + d] = to_float(q[row * s.D + d]) * static_cast<float>(scale);
    float dl = 0.0f;
    for (int64_t c = 0; c < s.Dv; ++c) {
      const float g = to_float(dout[s.dout_at(row) + c]);
      w.rows_do[i * s.Dv + c] = g;
      dl += g * to_float(out[s.out_at(row) + c]);
    }
    delta[i] = dl;
    lse_h[i] = lse[row];
  }
}

// Last step of an item's backward: dQ_i = scale * w.o[i] (w.o: dS K per head, [nh][D]), and the
// dK and dV rows of the selected keys: dK_j += sum_i dS^T[j][i] q_i, dV_j += sum_i P^T[j][i] dO_i
// (pt, dst: [n][16] transposed, w.rows_q / w.rows_do: the item's rows).
inline void store_backward_grads(const Shapes& s, const Item& it, const int64_t* ids, int64_t n,
                                 const lanes::Weights& pt, const lanes::Weights& dst, double scale, float* dq,
                                 float* dk, float* dv, LaneScratch& w) {
  const int64_t row0 = (it.b * s.H + it.h0) * s.Nq + it.t;
  for (int64_t i = 0; i < it.nh; ++i) {
    float* dqr = dq + (row0 + i * s.Nq) * s.D;
    for (int64_t d = 0; d < s.D; ++d) dqr[d] = w.o[i * s.D + d] * static_cast<float>(scale);
  }
  const int64_t kv_off = (it.b * s.Hkv + it.kvh) * s.Nk;
  bool distinct = true;  // blocks of 4 keys may be accumulated together only without repeats
  for (int64_t j = 0; j < n; ++j) {
    w.dkrows[j] = dk + (kv_off + ids[j]) * s.D;
    w.dvrows[j] = dv + (kv_off + ids[j]) * s.Dv;
    for (int64_t p = j & ~int64_t{3}; p < j; ++p) distinct &= ids[p] != ids[j];
  }
  lanes::accumulate_rows(dst, it.nh, w.rows_q.data(), s.D, w.dkrows.data(), n, distinct);
  lanes::accumulate_rows(pt, it.nh, w.rows_do.data(), s.Dv, w.dvrows.data(), n, distinct);
}

// Backward of an item whose group has few heads (rows::fits_backward): S and dP as one score
// per (head, key) (lanes_rows.h), where backward_item_lanes would spend a register per key on
// a handful of heads.
template <typename T>
void backward_item_rows(const Shapes& s, const Item& it, const int64_t* ids, int64_t n, const T* q, const T* k,
                        const T* v, double scale, const T* out, const float* lse, const T* dout, float* dq,
                        float* dk, float* dv, LaneScratch& w) {
  const int64_t kp = w.kp;
  float delta[rows::kMaxHeads], lse_h[rows::kMaxHeads];
  load_backward_rows(s, it, ids, n, q, k, v, scale, out, lse, dout, w, delta, lse_h);
  float* S = w.s_rows.data();    // [nh][kp] S, then P
  float* dS = w.dp_rows.data();  // [nh][kp] dP = dO V^T, then dS
  rows::scores(w.rows_q.data(), it.nh, s.D, w.krows.data(), n, S, kp, w.vrows.data(), s.Dv);
  rows::scores(w.rows_do.data(), it.nh, s.Dv, w.vrows.data(), n, dS, kp);
  rows::probabilities_and_ds(S, dS, kp, it.nh, lse_h, delta, n);
  std::fill(w.o.begin(), w.o.begin() + it.nh * s.D, 0.0f);
  rows::weighted_rows(dS, kp, it.nh, w.krows.data(), n, s.D, w.o.data());  // dQ / scale
  store_backward_grads(s, it, ids, n, {S, 1, kp}, {dS, 1, kp}, scale, dq, dk, dv, w);  // read as [nh][kp]
}

template <typename T>
void backward_item_lanes(const Shapes& s, const Item& it, const int64_t* ids, int64_t n, const T* q, const T* k,
                         const T* v, double scale, const T* out, const float* lse, const T* dout, float* dq,
                         float* dk, float* dv, LaneScratch& w) {
  const int64_t L = lanes::kLanes;
  alignas(64) float lse_l[lanes::kLanes] = {}, delta_l[lanes::kLanes] = {};
  load_backward_rows(s, it, ids, n, q, k, v, scale, out, lse, dout, w, delta_l, lse_l);
  std::fill(w.at.begin(), w.at.end(), 0.0f);
  float* qt = w.at.data();  // [D][16] scaled q, then reused as dO^T
  for (int64_t i = 0; i < it.nh; ++i)
    for (int64_t d = 0; d < s.D; ++d) qt[d * L + i] = w.rows_q[i * s.D + d];
  float* pt = w.st.data();
  float* dst = w.dst.data();
  simd::Mask16 unused_nan;  // NaN rows already have a NaN log-sum-exp
  lanes::scores(qt, w.krows.data(), n, s.D, pt, unused_nan);  // S^T
  std::fill(w.at.begin(), w.at.end(), 0.0f);
  for (int64_t i = 0; i < it.nh; ++i)
    for (int64_t c = 0; c < s.Dv; ++c) qt[c * L + i] = w.rows_do[i * s.Dv + c];
  lanes::scores(qt, w.vrows.data(), n, s.Dv, dst, unused_nan);  // dP^T = dO V^T
  const simd::F16 lse_v = simd::load(lse_l), delta_v = simd::load(delta_l);
  for (int64_t j = 0; j < n; ++j) {
    const simd::F16 p = simd::exp(simd::sub(simd::loadu(pt + j * L), lse_v));
    simd::storeu(pt + j * L, p);
    simd::storeu(dst + j * L, simd::mul(p, simd::sub(simd::loadu(dst + j * L), delta_v)));
  }
  // Padding lanes: p = exp(0) but dO = 0 and delta = 0 there, so dS = 0; P is only read for i < nh.
  lanes::weighted_rows(dst, it.nh, w.krows.data(), n, s.D, w.o.data());  // dQ / scale
  store_backward_grads(s, it, ids, n, {pt, L, 1}, {dst, L, 1}, scale, dq, dk, dv, w);  // [n][16]
}
#endif  // SA_LANES

// An item without a visible key: zero output rows (all-zero bits, also for bf16 stored as
// uint16_t), log-sum-exp -inf.
template <typename T>
void write_no_keys(const Shapes& s, const Item& it, T* out, float* lse) {
  for (int64_t i = 0; i < it.nh; ++i) {
    const int64_t row = (it.b * s.H + it.h0 + i) * s.Nq + it.t;
    std::fill_n(out + s.out_at(row), s.Dv, T(0));
    lse[row] = -std::numeric_limits<float>::infinity();
  }
}

// Whether bf16 items run on the AMX tile unit (see amx_attention.h): the CPU and OS allow it,
// the caller did not opt out, an item's heads fit one tile (<= 16) and D, D_v are multiples of 32.
template <typename T>
bool use_amx(const Shapes& s, bool allow_amx) {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
  return std::is_same<T, at::BFloat16>::value && allow_amx && (s.per_head || s.G <= 16) &&
         amx::attention_fits(s.D, s.Dv) && amx::permitted();
#else
  (void)s;
  (void)allow_amx;
  return false;
#endif
}

#if defined(SA_LANES)
// The forward pass in blocks of Engine::block_tokens() consecutive query tokens of one selection
// group, so that a block can walk its keys range by range (key_ranges.h). Engine (one per
// thread, made from (K, Nk, D, Dv, scale)): lanes::BlockForward (fp32) or amx::BlockForward
// (bf16 as uint16_t).
template <typename Engine, typename E>
void forward_token_blocks(const Shapes& s, const E* q, const E* k, const E* v, const int64_t* idx, double scale,
                          E* out, float* lse) {
  const int64_t T = Engine::block_tokens(s.Nk, s.D, s.Dv);
  const int64_t blocks_per_group = (s.Nq + T - 1) / T;
  const int64_t groups = s.items() / s.Nq;  // items are (group, token) with the token fastest
  at::parallel_for(0, groups * blocks_per_group, 1, [&](int64_t begin, int64_t end) {
    Engine engine(s.K, s.Nk, s.D, s.Dv, static_cast<float>(scale));
    std::vector<int64_t> ids(s.K);
    std::vector<Item> staged(T);
    for (int64_t block = begin; block < end; ++block) {
      const int64_t g = block / blocks_per_group, t0 = (block % blocks_per_group) * T;
      const int64_t t1 = std::min(s.Nq, t0 + T);
      int64_t tokens = 0;
      for (int64_t t = t0; t < t1; ++t) {
        const Item it = decode(s, g * s.Nq + t);
        const int64_t row0 = (it.b * s.H + it.h0) * s.Nq + it.t;  // row of head i: row0 + i * Nq
        const int64_t n = collect(s, idx + it.sel_row * s.K, it.t, ids.data());
        if (n == 0) {
          write_no_keys(s, it, out, lse);
          continue;
        }
        engine.stage(tokens, q + row0 * s.D, s.Nq * s.D, it.nh, ids.data(), n);
        staged[tokens++] = it;
      }
      const Item first = decode(s, g * s.Nq);
      const int64_t kv_off = (first.b * s.Hkv + first.kvh) * s.Nk;
      engine.attend(tokens, first.nh, k + kv_off * s.D, v + kv_off * s.Dv);
      for (int64_t slot = 0; slot < tokens; ++slot) {
        const Item& it = staged[slot];
        const int64_t row0 = (it.b * s.H + it.h0) * s.Nq + it.t;
        engine.finish(slot, it.nh, out + s.out_at(row0), s.out_head_stride(), lse + row0, s.Nq);
      }
    }
  });
}
#endif

#if defined(SA_LANES)
// Whether forward_blocks_with_head_mean() runs these shapes: one selection shared by every head, groups
// the few-heads kernels take (rows::fits).
bool head_mean_fits(const Shapes& s) { return s.Hsel == 1 && !s.per_head && rows::fits(s.G, s.D, s.Dv); }

// The fp32 forward of a selection shared by every head (head_mean_fits) that also adds, for each
// query and slot, the mean over all H heads of the attention probabilities into target
// [B][Nq][K] (empty and causally hidden slots get zero): the target of the DSA
// indexer's sparse-stage KL, which would otherwise recompute every head's scores. A block's keys
// are grouped by range once and then attended by each KV group in turn; each thread owns whole
// blocks, so each target row has a single writer.
void forward_blocks_with_head_mean(const Shapes& s, const float* q, const float* k, const float* v, const int64_t* idx,
                                   double scale, float* out, float* lse, float* target) {
  const int64_t T = rows::BlockForward::block_tokens(s.Nk, s.D, s.Dv);
  const int64_t blocks_per_seq = (s.Nq + T - 1) / T;
  const float weight = 1.0f / static_cast<float>(s.H);
  at::parallel_for(0, s.B * blocks_per_seq, 1, [&](int64_t begin, int64_t end) {
    rows::BlockForward engine(s.K, s.Nk, s.D, s.Dv, static_cast<float>(scale), s.G);
    std::vector<int64_t> ids(s.K), staged(T);
    std::vector<int32_t> pos(s.K), slot_of(T * s.K);
    std::vector<uint8_t> in_order(T);
    for (int64_t block = begin; block < end; ++block) {
      const int64_t b = block / blocks_per_seq, t0 = (block % blocks_per_seq) * T;
      const int64_t t1 = std::min(s.Nq, t0 + T);
      int64_t tokens = 0;
      for (int64_t t = t0; t < t1; ++t) {
        float* target_row = target + (b * s.Nq + t) * s.K;
        std::fill_n(target_row, s.K, 0.0f);  // here rather than at::zeros: spread over threads
        const int64_t n = collect_slots(s, idx + (b * s.Nq + t) * s.K, t, ids.data(), pos.data());
        if (n == 0) {
          for (int64_t g = 0; g < s.Hkv; ++g) write_no_keys(s, decode(s, (b * s.Hkv + g) * s.Nq + t), out, lse);
          continue;
        }
        const bool kept_order = ranges::grouped_positions(ids.data(), pos.data(), n, engine.shift(), engine.ranges(),
                                                          slot_of.data() + tokens * s.K);
        in_order[tokens] = kept_order && pos[n - 1] == n - 1;  // the o-th key is in slot o
        engine.stage_keys(tokens, ids.data(), n);
        staged[tokens++] = t;
      }
      for (int64_t g = 0; g < s.Hkv; ++g) {
        for (int64_t slot = 0; slot < tokens; ++slot) {
          const int64_t row0 = (b * s.H + g * s.G) * s.Nq + staged[slot];  // row of head i: row0 + i * Nq
          engine.stage_heads(slot, q + row0 * s.D, s.Nq * s.D, s.G);
        }
        const int64_t kv_off = (b * s.Hkv + g) * s.Nk;
        engine.attend(tokens, s.G, k + kv_off * s.D, v + kv_off * s.Dv);
        for (int64_t slot = 0; slot < tokens; ++slot) {
          const int64_t t = staged[slot], row0 = (b * s.H + g * s.G) * s.Nq + t;
          engine.finish(slot, s.G, out + s.out_at(row0), s.out_head_stride(), lse + row0, s.Nq);
          engine.add_probabilities(slot, s.G, in_order[slot] ? nullptr : slot_of.data() + slot * s.K, weight,
                                   target + (b * s.Nq + t) * s.K);
        }
      }
    }
  });
}
#endif

template <typename T>
void forward_impl(const Shapes& s, const T* q, const T* k_in, const T* v_in, const int64_t* idx, double scale, T* out,
                  float* lse, bool allow_amx) {
  const auto k_copy = HugePageArray::copy_of(k_in, s.B * s.Hkv * s.Nk * s.D, staging_pays(s));
  const auto v_copy = HugePageArray::copy_of(v_in, s.B * s.Hkv * s.Nk * s.Dv, staging_pays(s));
  const T* k = k_copy.template data<T>();
  const T* v = v_copy.template data<T>();
  if (use_amx<T>(s, allow_amx)) {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
    forward_token_blocks<amx::BlockForward>(s, reinterpret_cast<const uint16_t*>(q),
                                            reinterpret_cast<const uint16_t*>(k), reinterpret_cast<const uint16_t*>(v),
                                            idx, scale, reinterpret_cast<uint16_t*>(out), lse);
    return;
#endif
  }
#if defined(SA_LANES)
  if constexpr (std::is_same<T, float>::value) {
    if (rows::fits(s.per_head ? 1 : s.G, s.D, s.Dv)) {  // few heads per group: one score per (head, key)
      forward_token_blocks<rows::BlockForward>(s, q, k, v, idx, scale, out, lse);
      return;
    }
    if (use_lanes(s, s.per_head ? 1 : s.G)) {
      forward_token_blocks<lanes::BlockForward>(s, q, k, v, idx, scale, out, lse);
      return;
    }
  }
#endif
  const int64_t grain = std::max<int64_t>(1, 16 / std::max<int64_t>(1, s.G));
  at::parallel_for(0, s.items(), grain, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> ids(s.K);
    std::vector<float> qf(s.G * s.D), scores(s.G * std::max<int64_t>(s.K, 1)), tile(s.D * kTile), o(s.G * s.Dv),
        rowbuf(s.Dv);
#if defined(SA_LANES)
    LaneScratch lane_scratch(s);
#endif
    for (int64_t item = begin; item < end; ++item) {
      const Item it = decode(s, item);
      const int64_t n = collect(s, idx + it.sel_row * s.K, it.t, ids.data());
      const int64_t kv_off = (it.b * s.Hkv + it.kvh) * s.Nk;
#if defined(SA_LANES)
      if (n > 0 && use_lanes(s, it.nh)) {
        forward_item_lanes(s, it, ids.data(), n, q, k, v, scale, out, lse, lane_scratch);
        continue;
      }
#endif
      if (n == 0) {
        write_no_keys(s, it, out, lse);
        continue;
      }
      for (int64_t i = 0; i < it.nh; ++i) {
        const T* qr = q + ((it.b * s.H + it.h0 + i) * s.Nq + it.t) * s.D;
        for (int64_t d = 0; d < s.D; ++d) qf[i * s.D + d] = to_float(qr[d]) * static_cast<float>(scale);
      }
      rows_gemm_nt(qf.data(), it.nh, k + kv_off * s.D, ids.data(), n, s.D, scores.data(), s.K, tile.data());
      for (int64_t i = 0; i < it.nh; ++i) {
        float* srow = scores.data() + i * s.K;
        float m = -std::numeric_limits<float>::infinity();
        bool nan = false;
        for (int64_t j = 0; j < n; ++j) {
          m = std::max(m, srow[j]);
          nan |= std::isnan(srow[j]);
        }
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < n; ++j) {
          const float p = exp_neg(srow[j] - m);
          srow[j] = p;
          sum += p;
        }
        const int64_t row = (it.b * s.H + it.h0 + i) * s.Nq + it.t;
        lse[row] = nan ? std::numeric_limits<float>::quiet_NaN() : m + std::log(sum);
        const float inv = nan ? std::numeric_limits<float>::quiet_NaN() : 1.0f / sum;
        for (int64_t j = 0; j < n; ++j) srow[j] *= inv;
      }
      rows_gemm_nn(scores.data(), s.K, it.nh, v + kv_off * s.Dv, ids.data(), n, s.Dv, o.data(), rowbuf.data());
      for (int64_t i = 0; i < it.nh; ++i) {
        T* orow = out + s.out_at((it.b * s.H + it.h0 + i) * s.Nq + it.t);
        for (int64_t c = 0; c < s.Dv; ++c) orow[c] = from_float<T>(o[i * s.Dv + c]);
      }
    }
  });
}

#if defined(SA_LANES)
// The fp32 backward in blocks of rows::BlockBackward::block_tokens() consecutive query tokens,
// walking their keys range by range (lanes_rows_backward.h); dK and dV into this thread's
// accumulators (dk_all, dv_all: kv_numel_* floats per thread). A block's keys are staged once
// for all the KV groups that share its selection (DSA: one selection for every head), then run
// group by group. E: the type of q, out, dout and dq (float or at::BFloat16, widened as each
// token is staged, dq rounded as it is written); k and v are float.
template <typename E, typename I>
void backward_token_blocks(const Shapes& s, const E* q, const float* k, const float* v, const I* idx,
                           double scale, const E* out, const float* lse, const E* dout, E* dq,
                           float* dk_all, float* dv_all, int64_t kv_numel_k, int64_t kv_numel_v) {
  const int64_t T = rows::BlockBackward::block_tokens(s.Nk, s.D, s.Dv);
  const int64_t blocks_per_group = (s.Nq + T - 1) / T;
  const int64_t groups = s.items() / s.Nq;  // items are (group, token) with the token fastest
  // Groups g .. g + sharing - 1 read the same selection rows (decode: the KV heads of one batch
  // are consecutive groups). Sharing leaves fewer, longer work units: only where there are
  // enough of them to keep every thread busy.
  int64_t sharing = !s.per_head && s.Hsel == 1 ? s.Hkv : 1;
  if (groups / sharing * blocks_per_group < 4 * at::get_num_threads()) sharing = 1;
  at::parallel_for(0, groups / sharing * blocks_per_group, 1, [&](int64_t begin, int64_t end) {
    const int tid = at::get_thread_num();
    float* dk = dk_all + tid * kv_numel_k;
    float* dv = dv_all + tid * kv_numel_v;
    rows::BlockBackward engine(s.K, s.Nk, s.D, s.Dv, static_cast<float>(scale));
    std::vector<int64_t> ids(s.K);
    std::vector<int64_t> staged(T);  // the block's tokens with keys
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t g0 = unit / blocks_per_group * sharing, t0 = (unit % blocks_per_group) * T;
      const int64_t t1 = std::min(s.Nq, t0 + T);
      int64_t tokens = 0;
      for (int64_t t = t0; t < t1; ++t) {
        const Item it = decode(s, g0 * s.Nq + t);
        const int64_t n = collect(s, idx + it.sel_row * s.K, it.t, ids.data());
        if (n == 0) continue;  // dq rows stay zero
        engine.stage_keys(tokens, ids.data(), n);
        staged[tokens++] = t;
      }
      if (tokens == 0) continue;
      for (int64_t g = g0; g < g0 + sharing; ++g) {
        for (int64_t slot = 0; slot < tokens; ++slot) {
          const Item it = decode(s, g * s.Nq + staged[slot]);
          const int64_t row0 = (it.b * s.H + it.h0) * s.Nq + it.t;  // row of head i: row0 + i * Nq
          engine.stage_heads(slot, it.nh, q + row0 * s.D, s.Nq * s.D, out + s.out_at(row0), s.out_head_stride(),
                             dout + s.dout_at(row0), s.dout_head_stride(), lse + row0, s.Nq);
        }
        const Item first = decode(s, g * s.Nq);
        const int64_t kv_off = (first.b * s.Hkv + first.kvh) * s.Nk;
        engine.run(tokens, first.nh, k + kv_off * s.D, v + kv_off * s.Dv, dk + kv_off * s.D, dv + kv_off * s.Dv);
        for (int64_t slot = 0; slot < tokens; ++slot)
          engine.finish(slot, first.nh, dq + ((first.b * s.H + first.h0) * s.Nq + staged[slot]) * s.D, s.Nq * s.D);
      }
    }
  });
}
#endif

template <typename T, typename I>
void backward_impl(const Shapes& s, const T* q, const T* k_in, const T* v_in, const I* idx, double scale,
                   const T* out, const float* lse, const T* dout, float* dq, float* dk_all, float* dv_all,
                   int64_t kv_numel_k, int64_t kv_numel_v) {
  const auto k_copy = HugePageArray::copy_of(k_in, kv_numel_k, staging_pays(s));
  const auto v_copy = HugePageArray::copy_of(v_in, kv_numel_v, staging_pays(s));
  const T* k = k_copy.template data<T>();
  const T* v = v_copy.template data<T>();
#if defined(SA_LANES)
  if constexpr (std::is_same<T, float>::value) {
    if (rows::fits_backward(s.per_head ? 1 : s.G, s.D, s.Dv)) {  // few heads per group
      backward_token_blocks(s, q, k, v, idx, scale, out, lse, dout, dq, dk_all, dv_all, kv_numel_k, kv_numel_v);
      return;
    }
  }
#endif
  const int64_t grain = std::max<int64_t>(1, 16 / std::max<int64_t>(1, s.G));
  at::parallel_for(0, s.items(), grain, [&](int64_t begin, int64_t end) {
    const int tid = at::get_thread_num();
    float* dk = dk_all + tid * kv_numel_k;
    float* dv = dv_all + tid * kv_numel_v;
    std::vector<int64_t> ids(s.K);
    std::vector<float> qf(s.G * s.D), dof(s.G * s.Dv), p(s.G * std::max<int64_t>(s.K, 1)),
        dp(s.G * std::max<int64_t>(s.K, 1)), tile(std::max(s.D, s.Dv) * kTile), delta(s.G), dqf(s.G * s.D),
        rowbuf(std::max(s.D, s.Dv));
#if defined(SA_LANES)
    LaneScratch lane_scratch(s);
#endif
    for (int64_t item = begin; item < end; ++item) {
      const Item it = decode(s, item);
      const int64_t n = collect(s, idx + it.sel_row * s.K, it.t, ids.data());
      if (n == 0) continue;  // dq rows stay zero
#if defined(SA_LANES)
      if (rows::fits_backward(it.nh, s.D, s.Dv)) {
        backward_item_rows(s, it, ids.data(), n, q, k, v, scale, out, lse, dout, dq, dk, dv, lane_scratch);
        continue;
      }
      if (use_lanes(s, it.nh)) {
        backward_item_lanes(s, it, ids.data(), n, q, k, v, scale, out, lse, dout, dq, dk, dv, lane_scratch);
        continue;
      }
#endif
      const int64_t kv_off = (it.b * s.Hkv + it.kvh) * s.Nk;
      for (int64_t i = 0; i < it.nh; ++i) {
        const int64_t row = (it.b * s.H + it.h0 + i) * s.Nq + it.t;
        float dl = 0.0f;
        for (int64_t d = 0; d < s.D; ++d) qf[i * s.D + d] = to_float(q[row * s.D + d]) * static_cast<float>(scale);
        for (int64_t c = 0; c < s.Dv; ++c) {
          const float g = to_float(dout[s.dout_at(row) + c]);
          dof[i * s.Dv + c] = g;
          dl += g * to_float(out[s.out_at(row) + c]);
        }
        delta[i] = dl;
      }
      // P = exp(S - lse), dP = dO V^T
      rows_gemm_nt(qf.data(), it.nh, k + kv_off * s.D, ids.data(), n, s.D, p.data(), s.K, tile.data());
      rows_gemm_nt(dof.data(), it.nh, v + kv_off * s.Dv, ids.data(), n, s.Dv, dp.data(), s.K, tile.data());
      for (int64_t i = 0; i < it.nh; ++i) {
        const float l = lse[(it.b * s.H + it.h0 + i) * s.Nq + it.t];
        float* prow = p.data() + i * s.K;
        float* dprow = dp.data() + i * s.K;
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
          const float pj = exp_neg(prow[j] - l);
          prow[j] = pj;
          dprow[j] = pj * (dprow[j] - delta[i]);  // dS
        }
      }
      // dQ = scale * dS K
      rows_gemm_nn(dp.data(), s.K, it.nh, k + kv_off * s.D, ids.data(), n, s.D, dqf.data(), rowbuf.data());
      for (int64_t i = 0; i < it.nh; ++i) {
        float* dqr = dq + ((it.b * s.H + it.h0 + i) * s.Nq + it.t) * s.D;
        for (int64_t d = 0; d < s.D; ++d) dqr[d] = dqf[i * s.D + d] * static_cast<float>(scale);
      }
      // dK_j += dS[:, j]^T (scale q) (qf is already scaled); dV_j += P[:, j]^T dO
      for (int64_t j = 0; j < n; ++j) {
        float* dkr = dk + (kv_off + ids[j]) * s.D;
        float* dvr = dv + (kv_off + ids[j]) * s.Dv;
        for (int64_t i = 0; i < it.nh; ++i) {
          const float ds = dp[i * s.K + j];
          const float pj = p[i * s.K + j];
          const float* qi = qf.data() + i * s.D;
          const float* gi = dof.data() + i * s.Dv;
#pragma omp simd
          for (int64_t d = 0; d < s.D; ++d) dkr[d] += ds * qi[d];
#pragma omp simd
          for (int64_t c = 0; c < s.Dv; ++c) dvr[c] += pj * gi[c];
        }
      }
    }
  });
}

#if defined(SA_LANES)
// bf16 inputs where the fp32 token-block kernels apply and AMX does not: those kernels run on
// float copies of the inputs (the output rounded back to bf16 once). They walk each block of
// query tokens' keys one key range at a time; the per-item path instead reads every item's
// scattered rows from the whole table and widens them per item, which made the bf16 forward
// ~2.5x and its backward ~1.2x slower than fp32 (16:4 heads of 64, N = 8192, K = 1024, Zen 4).
// The forward's copies are transient: 4 bytes per element of q, k, v and the output; the backward
// widens only k and v (backward_bf16_blocks).
bool widen_bf16_forward(const Shapes& s, bool allow_amx) {
  const int64_t g = s.per_head ? 1 : s.G;
  return !use_amx<at::BFloat16>(s, allow_amx) && (rows::fits(g, s.D, s.Dv) || use_lanes(s, g));
}
bool widen_bf16_backward(const Shapes& s) { return rows::fits_backward(s.per_head ? 1 : s.G, s.D, s.Dv); }

// The bf16 backward where widen_bf16_backward(s): only K and V are widened to float, straight
// into the staging arrays (the kernels read gathered rows as float; B x H_kv x N rows); the
// queries, outputs and output gradients (B x H x N rows each, the backward's largest transient as
// float copies) are widened token by token as BlockBackward stages them, and dQ is written in
// bf16 (no float dQ of B x H x N rows to round afterwards).
template <typename I>
void backward_bf16_blocks(const Shapes& s, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const I* idx, double scale, const at::Tensor& out, const float* lse, const at::Tensor& dout,
                          at::BFloat16* dq, float* dk_all, float* dv_all, int64_t kv_numel_k, int64_t kv_numel_v) {
  const auto k_copy = HugePageArray::widened(k.data_ptr<at::BFloat16>(), kv_numel_k);
  const auto v_copy = HugePageArray::widened(v.data_ptr<at::BFloat16>(), kv_numel_v);
  backward_token_blocks(s, q.data_ptr<at::BFloat16>(), k_copy.data<float>(), v_copy.data<float>(), idx, scale,
                        out.data_ptr<at::BFloat16>(), lse, dout.data_ptr<at::BFloat16>(), dq, dk_all, dv_all,
                        kv_numel_k, kv_numel_v);
}
#endif

// narrow_ok: the backward also takes int16 and int32 indices (the selection as the forward saved it).
void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& idx,
                  bool narrow_ok = false) {
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous() && idx.is_contiguous(),
              "sparse_attention_cpu: inputs must be contiguous");
  const bool narrow = idx.scalar_type() == at::kInt || idx.scalar_type() == at::kShort;
  TORCH_CHECK(idx.scalar_type() == at::kLong || (narrow_ok && narrow),
              "sparse_attention_cpu: indices must be int64", narrow_ok ? ", int32 or int16" : "");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "sparse_attention_cpu: q, k, v must share a dtype");
}

// An output [B, H, Nq, Dv] stored token-major (Shapes::out_tokens_major).
at::Tensor empty_tokens_major(const Shapes& s, const at::TensorOptions& options) {
  return at::empty({s.B, s.Nq, s.H, s.Dv}, options).transpose(1, 2);
}

// `t` [B, H, Nq, Dv] in a layout the kernels read, and whether that layout is token-major: as it is
// when it is either layout (a gradient of the token-major output usually is), else a contiguous copy.
std::pair<at::Tensor, bool> readable_layout(const at::Tensor& t) {
  if (t.is_contiguous()) return {t, false};
  if (t.transpose(1, 2).is_contiguous()) return {t, true};
  return {t.contiguous(), false};
}

}  // namespace

std::vector<at::Tensor> forward(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor idx, bool causal, double scale,
                                bool allow_amx) {
  check_inputs(q, k, v, idx);
  Shapes s = make_shapes(q, k, v, idx, causal);
  s.out_tokens_major = true;
  auto out = empty_tokens_major(s, q.options());
  auto lse = at::empty({s.B, s.H, s.Nq}, q.options().dtype(at::kFloat));
  if (q.scalar_type() == at::kFloat) {
    forward_impl<float>(s, q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(), idx.data_ptr<int64_t>(),
                        scale, out.data_ptr<float>(), lse.data_ptr<float>(), allow_amx);
  } else if (q.scalar_type() == at::kBFloat16) {
#if defined(SA_LANES)
    if (widen_bf16_forward(s, allow_amx)) {
      const auto qf = q.to(at::kFloat), kf = k.to(at::kFloat), vf = v.to(at::kFloat);
      auto outf = empty_tokens_major(s, qf.options());
      forward_impl<float>(s, qf.data_ptr<float>(), kf.data_ptr<float>(), vf.data_ptr<float>(),
                          idx.data_ptr<int64_t>(), scale, outf.data_ptr<float>(), lse.data_ptr<float>(), allow_amx);
      out.copy_(outf);
      return {out, lse};
    }
#endif
    forward_impl<at::BFloat16>(s, q.data_ptr<at::BFloat16>(), k.data_ptr<at::BFloat16>(), v.data_ptr<at::BFloat16>(),
                               idx.data_ptr<int64_t>(), scale, out.data_ptr<at::BFloat16>(), lse.data_ptr<float>(),
                               allow_amx);
  } else {
    TORCH_CHECK(false, "sparse_attention_cpu: dtype must be float32 or bfloat16");
  }
  return {out, lse};
}

// forward() that also returns the mean over heads of the attention probabilities per query and
// slot, target [B, N_q, K] float32, for a selection shared by every head where the few-heads
// kernels run (fp32, or bf16 on float copies without AMX); elsewhere target is an empty tensor
// and the caller computes it another way. Returns (out, lse, target).
std::vector<at::Tensor> forward_with_head_mean(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor idx, bool causal,
                                               double scale) {
  check_inputs(q, k, v, idx);
  Shapes s = make_shapes(q, k, v, idx, causal);
  s.out_tokens_major = true;
#if defined(SA_LANES)
  const bool dtype_ok = q.scalar_type() == at::kFloat ||
                        (q.scalar_type() == at::kBFloat16 && !use_amx<at::BFloat16>(s, true));
  if (dtype_ok && head_mean_fits(s)) {
    const auto qf = q.to(at::kFloat), kf = k.to(at::kFloat), vf = v.to(at::kFloat);  // no copy for fp32
    auto outf = empty_tokens_major(s, qf.options());  // .to(bf16) below keeps the layout
    auto lse = at::empty({s.B, s.H, s.Nq}, qf.options());
    auto target = at::empty({s.B, s.Nq, s.K}, qf.options());
    const auto k_copy = HugePageArray::copy_of(kf.data_ptr<float>(), s.B * s.Hkv * s.Nk * s.D, staging_pays(s));
    const auto v_copy = HugePageArray::copy_of(vf.data_ptr<float>(), s.B * s.Hkv * s.Nk * s.Dv, staging_pays(s));
    forward_blocks_with_head_mean(s, qf.data_ptr<float>(), k_copy.data<float>(), v_copy.data<float>(),
                           idx.data_ptr<int64_t>(), scale, outf.data_ptr<float>(), lse.data_ptr<float>(),
                           target.data_ptr<float>());
    return {outf.to(q.scalar_type()), lse, target};
  }
#endif
  auto result = forward(q, k, v, idx, causal, scale, true);
  result.push_back(at::empty({0}, q.options().dtype(at::kFloat)));
  return result;
}

std::vector<at::Tensor> backward(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor idx, bool causal, double scale,
                                 at::Tensor out, at::Tensor lse, at::Tensor dout) {
  check_inputs(q, k, v, idx, /*narrow_ok=*/true);
  Shapes s = make_shapes(q, k, v, idx, causal);
  std::tie(out, s.out_tokens_major) = readable_layout(out);
  std::tie(dout, s.dout_tokens_major) = readable_layout(dout);
  const int64_t threads = at::get_num_threads();
  auto fopt = q.options().dtype(at::kFloat);
#if defined(SA_LANES)
  const bool bf16_blocks = q.scalar_type() == at::kBFloat16 && widen_bf16_backward(s);
#else
  const bool bf16_blocks = false;
#endif
  auto dq = at::zeros({s.B, s.H, s.Nq, s.D}, bf16_blocks ? q.options() : fopt);  // bf16 blocks write bf16
  const int64_t nk = s.B * s.Hkv * s.Nk * s.D, nv = s.B * s.Hkv * s.Nk * s.Dv;
  // One dK/dV accumulator per thread (scatter-adds need no atomics; the sum is deterministic).
  const auto dk_acc = HugePageArray::zeros(threads * nk), dv_acc = HugePageArray::zeros(threads * nv);
  float* dk_all = dk_acc.data<float>();
  float* dv_all = dv_acc.data<float>();
  auto run = [&](const auto* index) {  // int64, int32 or int16 indices
    if (q.scalar_type() == at::kFloat) {
      backward_impl<float>(s, q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(), index,
                           scale, out.data_ptr<float>(), lse.data_ptr<float>(), dout.data_ptr<float>(),
                           dq.data_ptr<float>(), dk_all, dv_all, nk, nv);
    } else if (q.scalar_type() == at::kBFloat16) {
#if defined(SA_LANES)
      if (bf16_blocks) {
        backward_bf16_blocks(s, q, k, v, index, scale, out, lse.data_ptr<float>(), dout, dq.data_ptr<at::BFloat16>(),
                             dk_all, dv_all, nk, nv);
      } else
#endif
      backward_impl<at::BFloat16>(s, q.data_ptr<at::BFloat16>(), k.data_ptr<at::BFloat16>(),
                                  v.data_ptr<at::BFloat16>(), index, scale,
                                  out.data_ptr<at::BFloat16>(), lse.data_ptr<float>(),
                                  dout.data_ptr<at::BFloat16>(), dq.data_ptr<float>(), dk_all, dv_all, nk, nv);
    } else {
      TORCH_CHECK(false, "sparse_attention_cpu: dtype must be float32 or bfloat16");
    }
  };
  if (idx.scalar_type() == at::kInt)
    run(idx.data_ptr<int32_t>());
  else if (idx.scalar_type() == at::kShort)
    run(idx.data_ptr<int16_t>());
  else
    run(idx.data_ptr<int64_t>());
  auto dk = at::from_blob(dk_all, {threads, s.B, s.Hkv, s.Nk, s.D}, fopt).sum(0);
  auto dv = at::from_blob(dv_all, {threads, s.B, s.Hkv, s.Nk, s.Dv}, fopt).sum(0);
  return {dq.to(q.scalar_type()), dk.to(q.scalar_type()), dv.to(q.scalar_type())};
}

SA_OP_LIBRARY(m) {
  // Forward: bf16 items use AMX tiles where allowed and possible. Returns (out, lse).
  m.def("forward(Tensor q, Tensor k, Tensor v, Tensor idx, bool causal, float scale, bool allow_amx=True) -> Tensor[]",
        &forward);
  // Forward that also returns the head-mean probabilities per slot (empty where unsupported).
  m.def("forward_with_head_mean(Tensor q, Tensor k, Tensor v, Tensor idx, bool causal, float scale) -> Tensor[]",
        &forward_with_head_mean);
  // Whether bf16 attention can run on AMX tiles here.
  m.def("amx_attention_available() -> bool", [] {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
    return amx::permitted();
#else
    return false;
#endif
  });
  // Backward from the saved log-sum-exp. Returns (dq, dk, dv).
  m.def("backward(Tensor q, Tensor k, Tensor v, Tensor idx, bool causal, float scale, Tensor out, Tensor lse,"
        " Tensor dout) -> Tensor[]", &backward);
  // Instruction sets this build's code may use, and which lane kernels it has.
  m.def("compiled_features() -> str[]", [] {
    std::vector<std::string> f;
#if defined(__AVX2__)
    f.push_back("avx2");
#endif
#if defined(__FMA__)
    f.push_back("fma");
#endif
#if defined(__AVX512F__)
    f.push_back("avx512f");
#endif
#if defined(__AVX512BF16__)
    f.push_back("avx512_bf16");
#endif
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
    f.push_back("amx_bf16");
#endif
#if defined(SA_LANES_AVX512)
    f.push_back("lanes:avx512");
#elif defined(SA_LANES_AVX2)
    f.push_back("lanes:avx2");
#else
    f.push_back("lanes:none");
#endif
    return f;
  });
}
