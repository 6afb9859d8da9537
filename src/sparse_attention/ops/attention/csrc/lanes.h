// Lane kernels for one query token of a KV group whose heads (up to 16) share a selection.
//
// The 16 lanes of a simd::F16 (one AVX-512 register, or two AVX2 registers: simd16.h) hold 16
// query heads, so for each selected key the scores of all heads are one value:
// S^T[j] = sum_d Q^T[d] * k_j[d] (broadcast k_j[d], no transpose of the gathered keys). Softmax
// then runs lane-wise over keys, and P V accumulates blocks of heads x features in registers.
// Padding lanes (heads >= nh) hold zero queries and are never written back. Used when compiled
// with AVX-512 or AVX2 + FMA (SA_LANES) and D, D_v are multiples of 16; the register blocks are
// sized from simd::kRegisterBudget (AVX2 has half the registers, each half as wide).
#pragma once

#include "simd16.h"

#if defined(SA_LANES)

#include <algorithm>
#include <cstdint>
#include <limits>

namespace lanes {

using simd::F16;
using simd::Mask16;

constexpr int kLanes = 16;
constexpr bool kWide = simd::kRegisterBudget >= 32;  // AVX-512: 32 registers of 16 floats
// Keys per block of the score loop (one F16 accumulator each, beside Q^T's row and a broadcast).
constexpr int kScoreKeys = kWide ? 16 : 6;
// P V register block: heads x (16 * kValueChunks) features.
constexpr int kValueHeads = kWide ? 4 : 2;
constexpr int kValueChunks = kWide ? 4 : 2;
// Key-gradient register block: keys x (16 * kGradChunks) features.
constexpr int kGradKeys = kWide ? 4 : 2;
constexpr int kGradChunks = kWide ? 4 : 2;

// Ask for the cache lines of rows[j .. j + count) ahead of use: selected rows are scattered
// over the whole K/V matrix (often beyond L2), and the hardware prefetcher cannot guess them.
template <int Hint = _MM_HINT_T0>
inline void prefetch_rows(const float* const* rows, int64_t j, int64_t count, int64_t n, int64_t width,
                          int64_t first = 0) {
  const int64_t stop = std::min(j + count, n);
  for (int64_t r = j; r < stop; ++r)
    for (int64_t off = first; off < first + width; off += 16)
      _mm_prefetch(reinterpret_cast<const char*>(rows[r] + off), static_cast<_mm_hint>(Hint));
}

// Folds the scores acc[0 .. KB) of keys j0 .. into ST, the running lane-wise max ``mx`` and NaN
// mask ``nan`` (softmax needs both; doing it here saves a pass over the scores).
template <int KB>
inline void store_scores(const F16* acc, int64_t j0, float* ST, F16& mx, Mask16& nan) {
  for (int b = 0; b < KB; ++b) {
    simd::storeu(ST + (j0 + b) * kLanes, acc[b]);
    nan |= simd::unordered(acc[b]);
    mx = simd::max(acc[b], mx);  // a NaN lane keeps the previous max (flagged in nan)
  }
}

// ST[j0 + b][:] = sum_d AT[d][:] * rows[j0 + b][d] for b < KB: KB independent accumulators
// hide the FMA latency; the key values are broadcast straight from the gathered rows.
template <int KB>
inline void scores_block(const float* AT, const float* const* rows, int64_t j0, int64_t D, float* ST, F16& mx,
                         Mask16& nan) {
  F16 acc[KB];
  const float* r[KB];
  for (int b = 0; b < KB; ++b) {
    acc[b] = simd::zero();
    r[b] = rows[j0 + b];
  }
  for (int64_t d = 0; d < D; ++d) {
    const F16 at = simd::loadu(AT + d * kLanes);
    for (int b = 0; b < KB; ++b) acc[b] = simd::fmadd(at, simd::set1(r[b][d]), acc[b]);
  }
  store_scores<KB>(acc, j0, ST, mx, nan);
}

// scores_block for a width D known at compile time: the KB rows are first copied into one
// contiguous block, so that every broadcast addresses it at a constant offset from a single
// register. (KB separate row pointers do not fit the general registers: GCC reloaded them from
// the stack for every feature, and the loop ran ~20% slower.)
template <int KB, int D>
inline void scores_block_copied(const float* AT, const float* const* rows, int64_t j0, float* ST, F16& mx,
                                Mask16& nan) {
  alignas(64) float block[KB * D];
  for (int b = 0; b < KB; ++b)
    for (int f = 0; f < D; f += kLanes) simd::store(block + b * D + f, simd::loadu(rows[j0 + b] + f));
  F16 acc[KB];
  for (int b = 0; b < KB; ++b) acc[b] = simd::zero();
#pragma GCC unroll 4
  for (int d = 0; d < D; ++d) {
    const F16 at = simd::loadu(AT + d * kLanes);
    for (int b = 0; b < KB; ++b) acc[b] = simd::fmadd(at, simd::set1(block[b * D + d]), acc[b]);
  }
  store_scores<KB>(acc, j0, ST, mx, nan);
}

// scores() for blocks of KB keys; FixedD > 0: the width D, known at compile time.
template <int KB, int FixedD>
inline F16 scores_blocks(const float* AT, const float* const* rows, int64_t n, int64_t D, float* ST,
                            Mask16& nan, const float* const* next_rows, int64_t next_width) {
  F16 mx = simd::set1(-std::numeric_limits<float>::infinity());
  nan = 0;
  constexpr int kAhead = 3;  // blocks of rows in flight: selected rows mostly come from L3 or DRAM
  int64_t j = 0;
  prefetch_rows(rows, 0, kAhead * KB, n, D);
  for (; j + KB <= n; j += KB) {
    prefetch_rows(rows, j + kAhead * KB, KB, n, D);
    if (next_rows) prefetch_rows<_MM_HINT_T1>(next_rows, j, KB, n, next_width);
    if constexpr (FixedD > 0)
      scores_block_copied<KB, FixedD>(AT, rows, j, ST, mx, nan);
    else
      scores_block<KB>(AT, rows, j, D, ST, mx, nan);
  }
  if (j < n) {
    // The last n - j < KB keys run as a full block whose missing rows repeat the last key (the
    // max and NaN mask do not change): one key at a time would wait on each FMA's latency (a
    // tail of ~8 keys per range and token then cost as much as ~60 keys in blocks).
    const float* tail[KB];
    for (int b = 0; b < KB; ++b) tail[b] = rows[std::min<int64_t>(j + b, n - 1)];
    alignas(64) float tail_st[KB * kLanes];
    if constexpr (FixedD > 0)
      scores_block_copied<KB, FixedD>(AT, tail, 0, tail_st, mx, nan);
    else
      scores_block<KB>(AT, tail, 0, D, tail_st, mx, nan);
    std::copy(tail_st, tail_st + (n - j) * kLanes, ST + j * kLanes);
  }
  return mx;
}

// ST[j][:] = sum_d AT[d][:] * rows[j][d]  for j < n.  AT: [D][16], ST: [n][16].
// Returns the lane-wise max over keys; NaN lanes are flagged in ``nan``. ``next_rows`` (width
// ``next_width``), when given, are the rows the caller reads next (values after keys): they
// are prefetched into L2 alongside, so that the next pass does not wait on memory.
inline F16 scores(const float* AT, const float* const* rows, int64_t n, int64_t D, float* ST, Mask16& nan,
                  const float* const* next_rows = nullptr, int64_t next_width = 0) {
  switch (D) {  // the common head widths get the copied-block loop
    case 64: return scores_blocks<kScoreKeys, 64>(AT, rows, n, D, ST, nan, next_rows, next_width);
    case 128: return scores_blocks<kScoreKeys, 128>(AT, rows, n, D, ST, nan, next_rows, next_width);
    default: return scores_blocks<kWide ? 12 : kScoreKeys, 0>(AT, rows, n, D, ST, nan, next_rows, next_width);
  }
}

// O[i][c0:c0+16*NC] (+)= sum_{j in [j0, j1)} WT[j][i] * rows[j][c0:...] for heads i in
// [i0, i0 + kValueHeads): the first key chunk (j0 == 0) starts from zero unless ``accumulate``,
// later chunks continue from O.
template <int NC>
inline void weighted_rows_block(const float* WT, int64_t i0, int64_t hb, const float* const* rows, int64_t j0,
                                int64_t j1, int64_t n, int64_t c0, int64_t Dv, float* O, bool accumulate) {
  constexpr int HB = kValueHeads;
  F16 acc[HB][NC];
  for (int h = 0; h < HB; ++h)
    for (int c = 0; c < NC; ++c)
      acc[h][c] = ((j0 == 0 && !accumulate) || h >= hb) ? simd::zero()
                                                         : simd::loadu(O + (i0 + h) * Dv + c0 + 16 * c);
  for (int64_t j = j0; j < j1; ++j) {
    if (i0 == 0) prefetch_rows(rows, j + 8, 1, n, Dv);
    const float* r = rows[j] + c0;
    F16 v[NC];
    for (int c = 0; c < NC; ++c) v[c] = simd::loadu(r + 16 * c);
    const float* w = WT + j * kLanes + i0;
    for (int h = 0; h < HB; ++h) {
      const F16 wb = simd::set1(w[h]);
      for (int c = 0; c < NC; ++c) acc[h][c] = simd::fmadd(wb, v[c], acc[h][c]);
    }
  }
  // A constant trip count with the bound as a condition: a loop to hb would index acc at run
  // time and keep the accumulators in memory (GCC then spilled all 16 on every key).
  for (int h = 0; h < HB; ++h)
    if (h < hb)
      for (int c = 0; c < NC; ++c) simd::storeu(O + (i0 + h) * Dv + c0 + 16 * c, acc[h][c]);
}

// O[i][:] (+)= sum_j WT[j][i] * rows[j][:] for i < nh; O: [nh][Dv], Dv % 16 == 0; adds to O when
// ``accumulate``, else overwrites it.
// Keys go in chunks small enough to stay in L1 while every block of heads reads them
// (one pass over all keys per head block would stream the rows from L2 several times).
inline void weighted_rows(const float* WT, int64_t nh, const float* const* rows, int64_t n, int64_t Dv, float* O,
                          bool accumulate = false) {
  constexpr int64_t kKeyChunk = 64;
  for (int64_t c0 = 0; c0 < Dv; c0 += 16 * kValueChunks) {
    const int64_t nc = std::min<int64_t>(kValueChunks, (Dv - c0) / 16);
    for (int64_t j0 = 0; j0 < n; j0 += kKeyChunk) {
      const int64_t j1 = std::min(n, j0 + kKeyChunk);
      for (int64_t i0 = 0; i0 < nh; i0 += kValueHeads) {
        const int64_t hb = std::min<int64_t>(kValueHeads, nh - i0);
        switch (nc) {
          case 4: weighted_rows_block<4>(WT, i0, hb, rows, j0, j1, n, c0, Dv, O, accumulate); break;
          case 3: weighted_rows_block<3>(WT, i0, hb, rows, j0, j1, n, c0, Dv, O, accumulate); break;
          case 2: weighted_rows_block<2>(WT, i0, hb, rows, j0, j1, n, c0, Dv, O, accumulate); break;
          default: weighted_rows_block<1>(WT, i0, hb, rows, j0, j1, n, c0, Dv, O, accumulate); break;
        }
      }
    }
  }
}

// Weights of the key-gradient accumulation: W[j][i] (key j, head i) at w[j * key_stride +
// i * head_stride], so that both the lane kernels' transposed [n][16] scores (key_stride 16,
// head_stride 1) and the few-heads kernels' [nh][kp] rows (1, kp) are read where they are.
struct Weights {
  const float* w;
  int64_t key_stride, head_stride;
};

// out_rows[j0 + b][c0 : c0 + 16 NC] += sum_{i < nh} W[j0 + b][i] * A[i][c0 : ...] for b < KB.
// Blocking KB keys lets each loaded row of A serve KB keys (loads per FMA drop from ~1.25 to
// ~0.5 for KB = 4, NC = 4). NH > 0: nh == NH, known at compile time. The row pointers and
// weights are copied into locals first: the stores (vector types may alias anything) would
// otherwise make the compiler reload each pointer after every store, and with nh unknown GCC
// kept the KB x NC accumulators on the stack across the head loop (measured: the loads, spills
// and reloads around the FMAs took more samples than the FMAs).
template <int KB, int NC, int NH = 0>
inline void accumulate_block(const Weights& W, int64_t nh, const float* A, int64_t Dc, int64_t c0,
                             float* const* out_rows, int64_t j0) {
  if constexpr (NH > 0) nh = NH;
  float* row[KB];
  for (int b = 0; b < KB; ++b) row[b] = out_rows[j0 + b] + c0;
  const float* w = W.w + j0 * W.key_stride;
  const int64_t key_stride = W.key_stride, head_stride = W.head_stride;
  F16 acc[KB][NC];
  for (int b = 0; b < KB; ++b)
    for (int c = 0; c < NC; ++c) acc[b][c] = simd::loadu(row[b] + 16 * c);
  const float* a_row = A + c0;
  for (int64_t i = 0; i < nh; ++i) {
    F16 a[NC];
    for (int c = 0; c < NC; ++c) a[c] = simd::loadu(a_row + i * Dc + 16 * c);
    for (int b = 0; b < KB; ++b) {
      const F16 wb = simd::set1(w[b * key_stride + i * head_stride]);
      for (int c = 0; c < NC; ++c) acc[b][c] = simd::fmadd(wb, a[c], acc[b][c]);
    }
  }
  for (int b = 0; b < KB; ++b)
    for (int c = 0; c < NC; ++c) simd::storeu(row[b] + 16 * c, acc[b][c]);
}

template <int NC, int NH = 0>
inline void accumulate_chunk(const Weights& W, int64_t nh, const float* A, int64_t Dc, int64_t c0,
                             float* const* out_rows, int64_t n) {
  int64_t j = 0;
  // The gradient rows are scattered like the keys: without a prefetch each block of rows waits
  // on L2 (or further) before its first FMA.
  constexpr int64_t kAhead = 4 * kGradKeys;
  prefetch_rows(out_rows, 0, kAhead, n, 16 * NC, c0);
  // Duplicate keys inside one block would race on the same row (read-modify-write of a copy):
  // the caller passes rows deduplicated per block (see accumulate_rows).
  for (; j + kGradKeys <= n; j += kGradKeys) {
    prefetch_rows(out_rows, j + kAhead, kGradKeys, n, 16 * NC, c0);
    accumulate_block<kGradKeys, NC, NH>(W, nh, A, Dc, c0, out_rows, j);
  }
  for (; j < n; ++j) accumulate_block<1, NC, NH>(W, nh, A, Dc, c0, out_rows, j);
}

// out_rows[j][:] += sum_{i < nh} W[j][i] * A[i][:] for j < n; A: [nh][Dc], Dc % 16 == 0.
// ``distinct``: no row pointer repeats within any aligned block of 4 keys (kGradKeys divides 4;
// else every key is its own block).
inline void accumulate_rows(const Weights& W, int64_t nh, const float* A, int64_t Dc, float* const* out_rows,
                            int64_t n, bool distinct) {
  static_assert(4 % kGradKeys == 0, "the caller checks repeats in aligned blocks of 4 keys");
  for (int64_t c0 = 0; c0 < Dc; c0 += 16 * kGradChunks) {
    const int64_t nc = std::min<int64_t>(kGradChunks, (Dc - c0) / 16);
    if (!distinct) {
      for (int64_t j = 0; j < n; ++j) {
        switch (nc) {
          case 4: accumulate_block<1, 4>(W, nh, A, Dc, c0, out_rows, j); break;
          case 3: accumulate_block<1, 3>(W, nh, A, Dc, c0, out_rows, j); break;
          case 2: accumulate_block<1, 2>(W, nh, A, Dc, c0, out_rows, j); break;
          default: accumulate_block<1, 1>(W, nh, A, Dc, c0, out_rows, j); break;
        }
      }
      continue;
    }
    if (nc == kGradChunks && nh == 4) {  // 4 heads per KV group (GQA 16:4, 8:2): the head loop unrolled
      accumulate_chunk<kGradChunks, 4>(W, nh, A, Dc, c0, out_rows, n);
      continue;
    }
    switch (nc) {
      case 4: accumulate_chunk<4>(W, nh, A, Dc, c0, out_rows, n); break;
      case 3: accumulate_chunk<3>(W, nh, A, Dc, c0, out_rows, n); break;
      case 2: accumulate_chunk<2>(W, nh, A, Dc, c0, out_rows, n); break;
      default: accumulate_chunk<1>(W, nh, A, Dc, c0, out_rows, n); break;
    }
  }
}

}  // namespace lanes
#endif  // SA_LANES
