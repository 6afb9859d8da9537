// AVX-512 kernels for one query token of a KV group whose heads (up to 16) share a selection.
//
// The 16 lanes of a register hold 16 query heads, so for each selected key the scores of all
// heads are one register: S^T[j] = sum_d Q^T[d] * k_j[d] (broadcast k_j[d], no transpose of
// the gathered keys). Softmax then runs lane-wise over keys, and P V accumulates blocks of
// 4 heads x 64 features in registers. Padding lanes (heads >= nh) hold zero queries and are
// never written back. Used only when compiled with AVX-512 and D, D_v are multiples of 16.
#pragma once

#if defined(__AVX512F__)
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <limits>

namespace lanes {

constexpr int kLanes = 16;

// exp(x), lane-wise: 2^(x log2 e), floor split, degree-6 polynomial, scalef. NaN stays NaN.
inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-88.0f), x);  // second operand returned for NaN
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
  const __m512 fi = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, fi);
  __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, fi);
}

// Ask for the cache lines of rows[j .. j + count) ahead of use: selected rows are scattered
// over the whole K/V matrix (often beyond L2), and the hardware prefetcher cannot guess them.
template <int Hint = _MM_HINT_T0>
inline void prefetch_rows(const float* const* rows, int64_t j, int64_t count, int64_t n, int64_t width) {
  const int64_t stop = std::min(j + count, n);
  for (int64_t r = j; r < stop; ++r)
    for (int64_t off = 0; off < width; off += 16)
      _mm_prefetch(reinterpret_cast<const char*>(rows[r] + off), static_cast<_mm_hint>(Hint));
}

// Folds the scores acc[0 .. KB) of keys j0 .. into ST, the running lane-wise max ``mx`` and NaN
// mask ``nan`` (softmax needs both; doing it here saves a pass over the scores).
template <int KB>
inline void store_scores(const __m512* acc, int64_t j0, float* ST, __m512& mx, __mmask16& nan) {
  for (int b = 0; b < KB; ++b) {
    _mm512_storeu_ps(ST + (j0 + b) * kLanes, acc[b]);
    nan |= _mm512_cmp_ps_mask(acc[b], acc[b], _CMP_UNORD_Q);
    mx = _mm512_max_ps(acc[b], mx);  // a NaN lane keeps the previous max (flagged in nan)
  }
}

// ST[j0 + b][:] = sum_d AT[d][:] * rows[j0 + b][d] for b < KB: KB independent accumulators
// hide the FMA latency; the key values are broadcast straight from the gathered rows.
template <int KB>
inline void scores_block(const float* AT, const float* const* rows, int64_t j0, int64_t D, float* ST, __m512& mx,
                         __mmask16& nan) {
  __m512 acc[KB];
  const float* r[KB];
  for (int b = 0; b < KB; ++b) {
    acc[b] = _mm512_setzero_ps();
    r[b] = rows[j0 + b];
  }
  for (int64_t d = 0; d < D; ++d) {
    const __m512 at = _mm512_loadu_ps(AT + d * kLanes);
    for (int b = 0; b < KB; ++b) acc[b] = _mm512_fmadd_ps(at, _mm512_set1_ps(r[b][d]), acc[b]);
  }
  store_scores<KB>(acc, j0, ST, mx, nan);
}

// scores_block for a width D known at compile time: the KB rows are first copied into one
// contiguous block, so that every broadcast addresses it at a constant offset from a single
// register. (KB separate row pointers do not fit the general registers: GCC reloaded them from
// the stack for every feature, and the loop ran ~20% slower.)
template <int KB, int D>
inline void scores_block_copied(const float* AT, const float* const* rows, int64_t j0, float* ST, __m512& mx,
                                __mmask16& nan) {
  alignas(64) float block[KB * D];
  for (int b = 0; b < KB; ++b)
    for (int f = 0; f < D; f += kLanes) _mm512_store_ps(block + b * D + f, _mm512_loadu_ps(rows[j0 + b] + f));
  __m512 acc[KB];
  for (int b = 0; b < KB; ++b) acc[b] = _mm512_setzero_ps();
#pragma GCC unroll 4
  for (int d = 0; d < D; ++d) {
    const __m512 at = _mm512_loadu_ps(AT + d * kLanes);
    for (int b = 0; b < KB; ++b) acc[b] = _mm512_fmadd_ps(at, _mm512_set1_ps(block[b * D + d]), acc[b]);
  }
  store_scores<KB>(acc, j0, ST, mx, nan);
}

// scores() for blocks of KB keys; FixedD > 0: the width D, known at compile time.
template <int KB, int FixedD>
inline __m512 scores_blocks(const float* AT, const float* const* rows, int64_t n, int64_t D, float* ST,
                            __mmask16& nan, const float* const* next_rows, int64_t next_width) {
  __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
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
inline __m512 scores(const float* AT, const float* const* rows, int64_t n, int64_t D, float* ST, __mmask16& nan,
                     const float* const* next_rows = nullptr, int64_t next_width = 0) {
  switch (D) {  // the common head widths get the copied-block loop
    case 64: return scores_blocks<16, 64>(AT, rows, n, D, ST, nan, next_rows, next_width);
    case 128: return scores_blocks<16, 128>(AT, rows, n, D, ST, nan, next_rows, next_width);
    default: return scores_blocks<12, 0>(AT, rows, n, D, ST, nan, next_rows, next_width);
  }
}

// O[i][c0:c0+16*NC] (+)= sum_{j in [j0, j1)} WT[j][i] * rows[j][c0:...] for heads i in [i0, i0+4):
// the first key chunk (j0 == 0) starts from zero unless ``accumulate``, later chunks continue from O.
template <int NC>
inline void weighted_rows_block(const float* WT, int64_t i0, int64_t hb, const float* const* rows, int64_t j0,
                                int64_t j1, int64_t n, int64_t c0, int64_t Dv, float* O, bool accumulate) {
  __m512 acc[4][NC];
  for (int h = 0; h < 4; ++h)
    for (int c = 0; c < NC; ++c)
      acc[h][c] = ((j0 == 0 && !accumulate) || h >= hb) ? _mm512_setzero_ps()
                                                         : _mm512_loadu_ps(O + (i0 + h) * Dv + c0 + 16 * c);
  for (int64_t j = j0; j < j1; ++j) {
    if (i0 == 0) prefetch_rows(rows, j + 8, 1, n, Dv);
    const float* r = rows[j] + c0;
    __m512 v[NC];
    for (int c = 0; c < NC; ++c) v[c] = _mm512_loadu_ps(r + 16 * c);
    const float* w = WT + j * kLanes + i0;
    for (int h = 0; h < 4; ++h) {
      const __m512 wb = _mm512_set1_ps(w[h]);
      for (int c = 0; c < NC; ++c) acc[h][c] = _mm512_fmadd_ps(wb, v[c], acc[h][c]);
    }
  }
  // A constant trip count with the bound as a condition: a loop to hb would index acc at run
  // time and keep the accumulators in memory (GCC then spilled all 16 on every key).
  for (int h = 0; h < 4; ++h)
    if (h < hb)
      for (int c = 0; c < NC; ++c) _mm512_storeu_ps(O + (i0 + h) * Dv + c0 + 16 * c, acc[h][c]);
}

// O[i][:] (+)= sum_j WT[j][i] * rows[j][:] for i < nh; O: [nh][Dv], Dv % 16 == 0; adds to O when
// ``accumulate``, else overwrites it.
// Keys go in chunks small enough to stay in L1 while every block of 4 heads reads them
// (one pass over all keys per head block would stream the rows from L2 four times).
inline void weighted_rows(const float* WT, int64_t nh, const float* const* rows, int64_t n, int64_t Dv, float* O,
                          bool accumulate = false) {
  constexpr int64_t kKeyChunk = 64;
  for (int64_t c0 = 0; c0 < Dv; c0 += 64) {
    const int64_t nc = std::min<int64_t>(4, (Dv - c0) / 16);
    for (int64_t j0 = 0; j0 < n; j0 += kKeyChunk) {
      const int64_t j1 = std::min(n, j0 + kKeyChunk);
      for (int64_t i0 = 0; i0 < nh; i0 += 4) {
        const int64_t hb = std::min<int64_t>(4, nh - i0);
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

// out_rows[j0 + b][c0 : c0 + 16 NC] += sum_{i < nh} WT[j0 + b][i] * A[i][c0 : ...] for b < KB.
// Blocking KB keys lets each loaded row of A serve KB keys (loads per FMA drop from ~1.25 to
// ~0.5 for KB = 4, NC = 4).
template <int KB, int NC>
inline void accumulate_block(const float* WT, int64_t nh, const float* A, int64_t Dc, int64_t c0,
                             float* const* out_rows, int64_t j0) {
  __m512 acc[KB][NC];
  for (int b = 0; b < KB; ++b)
    for (int c = 0; c < NC; ++c) acc[b][c] = _mm512_loadu_ps(out_rows[j0 + b] + c0 + 16 * c);
  for (int64_t i = 0; i < nh; ++i) {
    __m512 a[NC];
    for (int c = 0; c < NC; ++c) a[c] = _mm512_loadu_ps(A + i * Dc + c0 + 16 * c);
    for (int b = 0; b < KB; ++b) {
      const __m512 wb = _mm512_set1_ps(WT[(j0 + b) * kLanes + i]);
      for (int c = 0; c < NC; ++c) acc[b][c] = _mm512_fmadd_ps(wb, a[c], acc[b][c]);
    }
  }
  for (int b = 0; b < KB; ++b)
    for (int c = 0; c < NC; ++c) _mm512_storeu_ps(out_rows[j0 + b] + c0 + 16 * c, acc[b][c]);
}

template <int NC>
inline void accumulate_chunk(const float* WT, int64_t nh, const float* A, int64_t Dc, int64_t c0,
                             float* const* out_rows, int64_t n) {
  int64_t j = 0;
  // Duplicate keys inside one block would race on the same row (read-modify-write of a copy):
  // the caller passes rows deduplicated per block (see accumulate_rows).
  for (; j + 4 <= n; j += 4) accumulate_block<4, NC>(WT, nh, A, Dc, c0, out_rows, j);
  for (; j < n; ++j) accumulate_block<1, NC>(WT, nh, A, Dc, c0, out_rows, j);
}

// out_rows[j][:] += sum_{i < nh} WT[j][i] * A[i][:] for j < n; A: [nh][Dc], Dc % 16 == 0.
// ``distinct``: no row pointer repeats within any aligned block of 4 (else use KB = 1).
inline void accumulate_rows(const float* WT, int64_t nh, const float* A, int64_t Dc, float* const* out_rows,
                            int64_t n, bool distinct) {
  for (int64_t c0 = 0; c0 < Dc; c0 += 64) {
    const int64_t nc = std::min<int64_t>(4, (Dc - c0) / 16);
    if (!distinct) {
      for (int64_t j = 0; j < n; ++j) {
        switch (nc) {
          case 4: accumulate_block<1, 4>(WT, nh, A, Dc, c0, out_rows, j); break;
          case 3: accumulate_block<1, 3>(WT, nh, A, Dc, c0, out_rows, j); break;
          case 2: accumulate_block<1, 2>(WT, nh, A, Dc, c0, out_rows, j); break;
          default: accumulate_block<1, 1>(WT, nh, A, Dc, c0, out_rows, j); break;
        }
      }
      continue;
    }
    switch (nc) {
      case 4: accumulate_chunk<4>(WT, nh, A, Dc, c0, out_rows, n); break;
      case 3: accumulate_chunk<3>(WT, nh, A, Dc, c0, out_rows, n); break;
      case 2: accumulate_chunk<2>(WT, nh, A, Dc, c0, out_rows, n); break;
      default: accumulate_chunk<1>(WT, nh, A, Dc, c0, out_rows, n); break;
    }
  }
}

}  // namespace lanes
#endif  // __AVX512F__
