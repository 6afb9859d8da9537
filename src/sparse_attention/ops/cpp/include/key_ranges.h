// Walking the keys of a block of query tokens one range of key positions at a time.
//
// Selected keys are scattered over the whole K/V matrix, which at long lengths is far larger
// than L2 (16384 fp32 keys with D = D_v = 64: 8 MiB), so a token that gathers its keys in one
// sweep waits on L3 or DRAM for most rows. A block of tokens instead visits range 0 of every
// token, then range 1, ...: while the block works in one range, that range's K and V rows
// (a size each kernel sets by measurement) stay in L2 or near it and most gathers hit there
// (measured ~12 vs ~22 ns per key and token for random bf16 selections from 16384 keys, 1 MiB
// ranges). Each token keeps a running softmax state
// (max, sum, unnormalised output) merged over ranges, as in flash attention's online softmax.
// Used by the AMX bf16 forward (amx_attention.h), the fp32 lane forwards (lanes_blocks.h,
// lanes_rows.h), the fp32 backward of small groups (lanes_rows_backward.h) and the indexer KL
// (indexer_kl_cpu.cpp: one walk for the logits, one for the gradients).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace ranges {

// Tokens per block. While a block works in one range, each gathered row there is used by about
// tokens * K / N_k of its tokens, so a wider block misses L3 less often; its ids and states
// (~8 KiB per token in fp32 with D = D_v = 64) must still fit in L2 beside the range. When
// all keys fit in one range (short sequences) there is no reuse to gain and the narrow block
// keeps the state small. Measured (fp32, 16 heads on one KV head, D = 64, 2 MiB ranges,
// random causal selections): N = 16384, K = 1024: ~370 -> ~332 ms; N = 32768, K = 2048:
// ~1450 -> ~1300 ms; bf16 on AMX (1 MiB ranges) N = 16384: ~127 -> ~120 ms.
constexpr int64_t kNarrowTokenBlock = 32;
constexpr int64_t kWideTokenBlock = 128;

// log2 of the keys per range for rows of bytes_per_key (K and V together) and ranges of at most
// range_bytes: a power of two (a shift splits ids by range), at least 256 keys.
inline int range_shift(int64_t bytes_per_key, int64_t range_bytes) {
  int shift = 8;
  while ((int64_t{2} << shift) * bytes_per_key <= range_bytes) ++shift;
  return shift;
}

// Tokens per block for Nk keys of bytes_per_key in ranges of range_bytes: wide when the keys
// span more than one range.
inline int64_t tokens_per_block(int64_t Nk, int64_t bytes_per_key, int64_t range_bytes) {
  return (int64_t{1} << range_shift(bytes_per_key, range_bytes)) < Nk ? kWideTokenBlock : kNarrowTokenBlock;
}

// Whether ids[0 .. n) never decrease.
inline bool is_ascending(const int64_t* ids, int64_t n) {
  int64_t j = 0;
#if defined(__AVX512F__)
  for (; j + 9 <= n; j += 8)
    if (_mm512_cmpgt_epi64_mask(_mm512_loadu_si512(ids + j), _mm512_loadu_si512(ids + j + 1))) return false;
#elif defined(__AVX2__)
  for (; j + 5 <= n; j += 4) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ids + j));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ids + j + 1));
    if (!_mm256_testz_si256(_mm256_cmpgt_epi64(a, b), _mm256_cmpgt_epi64(a, b))) return false;
  }
#endif
  for (; j + 1 < n; ++j)
    if (ids[j] > ids[j + 1]) return false;
  return true;
}

// Copies ids[0 .. n) (valid key positions) to out as int32, grouped by range (id >> shift) in
// their original order within a range; range r's ids are out[start[r] .. start[r + 1]).
// Vectorised (8 ids per step: a count pass, then a compress pass per range): a scalar counting
// sort serialises on one counter when neighbouring ids share a range (the common case).
// Ascending ids (most selections sort their rows) skip the per-range passes: one check, one
// copy and a binary search per range boundary.
inline void group_by_range(const int64_t* ids, int64_t n, int shift, int64_t ranges, int64_t* start, int32_t* out) {
  start[0] = 0;
  if (ranges == 1 || is_ascending(ids, n)) {
    int64_t j = 0;
#if defined(__AVX512F__)
    for (; j + 8 <= n; j += 8)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j), _mm512_cvtepi64_epi32(_mm512_loadu_si512(ids + j)));
#endif
    for (; j < n; ++j) out[j] = static_cast<int32_t>(ids[j]);
    for (int64_t r = 1; r < ranges; ++r) start[r] = std::lower_bound(ids, ids + n, r << shift) - ids;
    start[ranges] = n;
    return;
  }
#if defined(__AVX512F__)
  const __m512i sh = _mm512_set1_epi64(shift);
  for (int64_t r = 0; r < ranges; ++r) {
    const __m512i rv = _mm512_set1_epi64(r);
    int64_t count = 0;
    for (int64_t j = 0; j < n; j += 8) {
      const __mmask8 live = n - j >= 8 ? __mmask8(0xff) : __mmask8((1u << (n - j)) - 1);
      const __m512i x = _mm512_maskz_loadu_epi64(live, ids + j);
      count += __builtin_popcount(_mm512_mask_cmpeq_epi64_mask(live, _mm512_srlv_epi64(x, sh), rv));
    }
    start[r + 1] = start[r] + count;
  }
  for (int64_t r = 0; r < ranges; ++r) {
    if (start[r + 1] == start[r]) continue;
    const __m512i rv = _mm512_set1_epi64(r);
    int32_t* dst = out + start[r];
    for (int64_t j = 0; j < n; j += 8) {
      const __mmask8 live = n - j >= 8 ? __mmask8(0xff) : __mmask8((1u << (n - j)) - 1);
      const __m512i x = _mm512_maskz_loadu_epi64(live, ids + j);
      const __mmask8 m = _mm512_mask_cmpeq_epi64_mask(live, _mm512_srlv_epi64(x, sh), rv);
      const __m256i packed = _mm256_maskz_compress_epi32(m, _mm512_cvtepi64_epi32(x));
      _mm256_mask_storeu_epi32(dst, __mmask8((1u << __builtin_popcount(m)) - 1), packed);
      dst += __builtin_popcount(m);
    }
  }
#else
  // Without compress instructions: a counting sort (its serial counter costs ~1 ns per id, small
  // next to the ~D * heads FMAs each id then costs in the attention).
  std::fill(start + 1, start + ranges + 1, int64_t{0});
  for (int64_t j = 0; j < n; ++j) ++start[(ids[j] >> shift) + 1];
  for (int64_t r = 0; r < ranges; ++r) start[r + 1] += start[r];
  std::vector<int64_t> fill(start, start + ranges);
  for (int64_t j = 0; j < n; ++j) out[fill[ids[j] >> shift]++] = static_cast<int32_t>(ids[j]);
#endif
}

// Where each id of ids[0 .. n) lands in group_by_range's order: out[o] = pos[v] for the v-th
// id, o its grouped place (ids grouped by range, their order kept within a range). Kernels that
// return one value per selection slot map their grouped results back with it. Returns whether
// the grouping kept the ids' order (out = pos).
inline bool grouped_positions(const int64_t* ids, const int32_t* pos, int64_t n, int shift, int64_t ranges,
                              int32_t* out) {
  if (ranges == 1 || is_ascending(ids, n)) {
    std::copy(pos, pos + n, out);
    return true;
  }
  std::vector<int64_t> fill(ranges + 1, 0);  // a stable counting sort by range
  for (int64_t v = 0; v < n; ++v) ++fill[(ids[v] >> shift) + 1];
  for (int64_t r = 0; r < ranges; ++r) fill[r + 1] += fill[r];
  for (int64_t v = 0; v < n; ++v) out[fill[ids[v] >> shift]++] = pos[v];
  return false;
}

// The valid keys of each token of a block, grouped by range.
class BlockKeys {
 public:
  // K: most keys per token; Nk: key positions; bytes_per_key: K and V row bytes together;
  // range_bytes: most K and V bytes per range.
  BlockKeys(int64_t K, int64_t Nk, int64_t bytes_per_key, int64_t range_bytes)
      : K_(std::max<int64_t>(K, 1)), shift_(range_shift(bytes_per_key, range_bytes)),
        ranges_(std::max<int64_t>(1, ((Nk - 1) >> shift_) + 1)),
        tokens_(tokens_per_block(Nk, bytes_per_key, range_bytes)), ids_(tokens_ * K_),
        start_(tokens_ * (ranges_ + 1)) {}

  // Tokens per block (tokens_per_block): the stage() slots.
  int64_t tokens() const { return tokens_; }

  // Token `slot` (< tokens()) takes the keys ids[0 .. n).
  void stage(int64_t slot, const int64_t* ids, int64_t n) {
    group_by_range(ids, n, shift_, ranges_, start_.data() + slot * (ranges_ + 1), ids_.data() + slot * K_);
  }

  // Log2 of the keys per range, and the number of ranges.
  int shift() const { return shift_; }
  int64_t ranges() const { return ranges_; }
  // Where token `slot`'s keys of each range begin in its grouped order: [ranges() + 1].
  const int64_t* range_starts(int64_t slot) const { return start_.data() + slot * (ranges_ + 1); }

  // Token `slot`'s staged keys, grouped by range: walk() hands out pieces of this array, so
  // ids - token_ids(slot) is a piece's offset in the token's grouped order.
  const int32_t* token_ids(int64_t slot) const { return ids_.data() + slot * K_; }

  // Calls fn(slot, ids, n) for each of tokens [0, tokens) that has n > 0 keys ids in a range,
  // range by range (every token's range 0, then every token's range 1, ...).
  template <typename Fn>
  void walk(int64_t tokens, Fn&& fn) const {
    for (int64_t r = 0; r < ranges_; ++r) {
      for (int64_t slot = 0; slot < tokens; ++slot) {
        const int64_t* start = start_.data() + slot * (ranges_ + 1);
        const int64_t n = start[r + 1] - start[r];
        if (n > 0) fn(slot, ids_.data() + slot * K_ + start[r], n);
      }
    }
  }

 private:
  int64_t K_;
  int shift_;
  int64_t ranges_;
  int64_t tokens_;
  std::vector<int32_t> ids_;    // [T][K]          each token's keys, grouped by range
  std::vector<int64_t> start_;  // [T][ranges + 1] where each range's keys begin
};

}  // namespace ranges
