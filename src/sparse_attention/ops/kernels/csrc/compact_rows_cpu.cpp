// Candidate lists -> sorted, duplicate-free index rows, without sorting.
//
// The clustering and hashing selections (ssa, routing, lsh) produce, per query, a list of M
// candidate key positions with duplicates, padding (-1) and causally invisible entries; the
// kernel wants each row ascending and unique. Sorting every row costs O(M log M) compares with
// unpredictable branches (torch.sort: ~30 us per row of 1k). Positions are small integers in
// [0, N_k), so each row instead sets bits in a per-thread bitmap of N_k bits (N_k / 8 bytes, in
// L1 for N_k up to ~256k) and reads the set bits back in order: O(M + span / 64) per row, where
// span is the range of positions the row touched. Output equals the sort-based reference
// (selection._util.compact_indices_reference) exactly.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

namespace {

// One row: candidates `cand[0, m)` -> ascending unique valid positions in `out`; returns how many.
// Valid: 0 <= c <= last (the row's causal limit, already capped at N_k - 1).
// Every key of [range_start, range_stop) up to `last` is a candidate as well (a causal block's
// own keys), set a word at a time instead of being listed.
int64_t compact_row(const int64_t* cand, int64_t m, int64_t last, int64_t range_start, int64_t range_stop,
                    std::vector<uint64_t>& bits, int32_t* out) {
  int64_t lo_word = static_cast<int64_t>(bits.size()), hi_word = -1;
  const int64_t range_last = std::min(range_stop - 1, last);
  if (range_start <= range_last) {
    const int64_t first_word = range_start >> 6, last_word = range_last >> 6;
    for (int64_t word = first_word; word <= last_word; ++word) {
      uint64_t mask = ~uint64_t{0};
      if (word == first_word) mask &= ~uint64_t{0} << (range_start & 63);
      if (word == last_word) mask &= ~uint64_t{0} >> (63 - (range_last & 63));
      bits[word] |= mask;
    }
    lo_word = first_word;
    hi_word = last_word;
  }
  for (int64_t i = 0; i < m; ++i) {
    const int64_t c = cand[i];
    if (c < 0 || c > last) continue;
    const int64_t word = c >> 6;
    bits[word] |= uint64_t{1} << (c & 63);
    lo_word = std::min(lo_word, word);
    hi_word = std::max(hi_word, word);
  }
  int64_t count = 0;
  for (int64_t word = lo_word; word <= hi_word; ++word) {
    uint64_t w = bits[word];
    bits[word] = 0;  // leave the bitmap clear for the next row
    while (w) {
      out[count++] = static_cast<int32_t>((word << 6) + __builtin_ctzll(w));
      w &= w - 1;
    }
  }
  return count;
}

}  // namespace

// idx [R, M] int64 candidates (any negative = none); limit [N_q] int64 last visible key of
// query r % N_q, or an empty tensor (no causal limit); every row also holds the keys
// [range_start, range_stop) (an empty range when range_stop <= range_start). Returns
// [R, max(1, widest row)] int64,
// each row ascending with -1 padding.
at::Tensor compact_rows(at::Tensor idx, int64_t n_keys, at::Tensor limit, int64_t range_start, int64_t range_stop) {
  TORCH_CHECK(idx.dim() == 2 && idx.scalar_type() == at::kLong, "compact_rows: idx must be [R, M] int64");
  TORCH_CHECK(n_keys > 0 && n_keys < (int64_t{1} << 31), "compact_rows: n_keys must be in [1, 2^31)");
  TORCH_CHECK(range_start >= 0, "compact_rows: range_start must be >= 0");
  idx = idx.contiguous();
  const int64_t R = idx.size(0), M = idx.size(1);
  const bool has_limit = limit.numel() > 0;
  if (has_limit) {
    TORCH_CHECK(limit.dim() == 1 && limit.scalar_type() == at::kLong && R % limit.size(0) == 0,
                "compact_rows: limit must be [N_q] int64 with N_q dividing R");
    limit = limit.contiguous();
  }
  const int64_t n_q = has_limit ? limit.size(0) : 1;
  const int64_t* cand = idx.data_ptr<int64_t>();
  const int64_t* lim = has_limit ? limit.data_ptr<int64_t>() : nullptr;
  // [R, cap] compacted rows, int32; left uninitialised (each row writes what it reads back).
  const int64_t cap = M + std::min(std::max<int64_t>(0, range_stop - range_start), n_keys);
  std::unique_ptr<int32_t[]> rows(new int32_t[static_cast<size_t>(std::max<int64_t>(1, R * cap))]);
  std::vector<int64_t> counts(static_cast<size_t>(R));
  const int64_t words = (n_keys + 63) / 64;
  at::parallel_for(0, R, 64, [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> bits(static_cast<size_t>(words), 0);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t last = has_limit ? std::min(lim[r % n_q], n_keys - 1) : n_keys - 1;
      counts[r] = compact_row(cand + r * M, M, last, range_start, range_stop, bits, rows.get() + r * cap);
    }
  });
  int64_t width = 1;
  for (int64_t r = 0; r < R; ++r) width = std::max(width, counts[r]);
  auto out = at::full({R, width}, -1, idx.options());
  int64_t* dst = out.data_ptr<int64_t>();
  at::parallel_for(0, R, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int32_t* src = rows.get() + r * cap;
      std::copy(src, src + counts[r], dst + r * width);
    }
  });
  return out;
}
