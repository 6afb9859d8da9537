// Candidate lists -> sorted, duplicate-free index rows, without sorting.
//
// The clustering and hashing selections (ssa, routing, lsh) produce, per query, a list of M
// candidate key positions with duplicates, padding (-1) and causally invisible entries; the
// kernel wants each row ascending and unique. Sorting every row costs O(M log M) compares with
// unpredictable branches. Positions are small integers in
// [0, N_k), so each row instead sets bits in a per-thread bitmap of N_k bits (N_k / 8 bytes, in
// L1 for N_k up to ~256k) and reads the set bits back in order: O(M + span / 64) per row, where
// span is the range of positions the row touched. Output equals the sort-based reference
// (selection._util.compact_indices_reference) exactly.
//
// cluster_rows does the same for the clustering selections without a candidate list: a row's
// candidates are the members of the clusters its query chose, read straight from the member
// matrix, so the [rows, clusters per query x largest cluster] list is never built. Rows are
// written to per-chunk buffers of exactly their length, then copied into the [R, K] result:
// memory beyond the result is the compacted rows once more, in int32. lsh_rows does the same for
// the LSH selection: a row's candidates per hash round are a run of the keys sorted by (bucket,
// position), read from that order directly instead of gathered into a [rows, rounds x window] list.

#include "op_library.h"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

namespace {

// The bits of keys [start, last] set in `bits`; widens [lo_word, hi_word] to cover them.
void set_key_range(int64_t start, int64_t last, std::vector<uint64_t>& bits, int64_t& lo_word, int64_t& hi_word) {
  if (start > last) return;
  const int64_t first_word = start >> 6, last_word = last >> 6;
  for (int64_t word = first_word; word <= last_word; ++word) {
    uint64_t mask = ~uint64_t{0};
    if (word == first_word) mask &= ~uint64_t{0} << (start & 63);
    if (word == last_word) mask &= ~uint64_t{0} >> (63 - (last & 63));
    bits[word] |= mask;
  }
  lo_word = std::min(lo_word, first_word);
  hi_word = std::max(hi_word, last_word);
}

// One row: every candidate that `for_each_candidate(visit)` visits plus the keys of
// [range_start, range_stop), keeping those in [0, last] (last: the row's causal limit, already
// capped at N_k - 1), appended to `out` ascending and unique; returns how many.
template <typename ForEach>
int64_t compact_row(ForEach&& for_each_candidate, int64_t last, int64_t range_start, int64_t range_stop,
                    std::vector<uint64_t>& bits, std::vector<int32_t>& out) {
  int64_t lo_word = static_cast<int64_t>(bits.size()), hi_word = -1;
  set_key_range(range_start, std::min(range_stop - 1, last), bits, lo_word, hi_word);
  for_each_candidate([&](int64_t c) {
    if (c < 0 || c > last) return;
    const int64_t word = c >> 6;
    bits[word] |= uint64_t{1} << (c & 63);
    lo_word = std::min(lo_word, word);
    hi_word = std::max(hi_word, word);
  });
  const size_t before = out.size();
  for (int64_t word = lo_word; word <= hi_word; ++word) {
    uint64_t w = bits[word];
    bits[word] = 0;  // leave the bitmap clear for the next row
    while (w) {
      out.push_back(static_cast<int32_t>((word << 6) + __builtin_ctzll(w)));
      w &= w - 1;
    }
  }
  return static_cast<int64_t>(out.size() - before);
}

constexpr int64_t kRowsPerChunk = 64;

// Rows [0, R) compacted by `row(r, bits, out)` (which appends row r to out and returns its
// length) into an [R, max(1, widest row)] int64 tensor, -1 padded.
template <typename RowFn>
at::Tensor compact_all_rows(int64_t R, int64_t n_keys, const at::TensorOptions& options, RowFn&& row) {
  const int64_t chunks = (R + kRowsPerChunk - 1) / kRowsPerChunk;
  std::vector<std::vector<int32_t>> data(static_cast<size_t>(chunks));
  std::vector<int64_t> counts(static_cast<size_t>(R));
  const int64_t words = (n_keys + 63) / 64;
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> bits(static_cast<size_t>(words), 0);
    for (int64_t chunk = begin; chunk < end; ++chunk)
      for (int64_t r = chunk * kRowsPerChunk; r < std::min(R, (chunk + 1) * kRowsPerChunk); ++r)
        counts[r] = row(r, bits, data[chunk]);
  });
  int64_t width = 1;
  for (int64_t r = 0; r < R; ++r) width = std::max(width, counts[r]);
  auto out = at::empty({R, width}, options);
  int64_t* dst = out.data_ptr<int64_t>();
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int32_t* src = data[chunk].data();
      for (int64_t r = chunk * kRowsPerChunk; r < std::min(R, (chunk + 1) * kRowsPerChunk); ++r) {
        int64_t* row = dst + r * width;
        std::copy(src, src + counts[r], row);  // one write per slot: the row, then its -1 padding
        std::fill(row + counts[r], row + width, int64_t{-1});
        src += counts[r];
      }
      std::vector<int32_t>().swap(data[chunk]);  // free as soon as copied
    }
  });
  return out;
}

// limit [N_q] int64 (or empty: no causal limit) -> pointer and N_q, checked against R rows.
const int64_t* check_limit(at::Tensor& limit, int64_t R, int64_t& n_q, const char* fn) {
  if (limit.numel() == 0) {
    n_q = 1;
    return nullptr;
  }
  TORCH_CHECK(limit.dim() == 1 && limit.scalar_type() == at::kLong && R % limit.size(0) == 0, fn,
              ": limit must be [N_q] int64 with N_q dividing the rows");
  limit = limit.contiguous();
  n_q = limit.size(0);
  return limit.data_ptr<int64_t>();
}

}  // namespace

// idx [R, M] int64 candidates (any negative = none); limit [N_q] int64 last visible key of
// query r % N_q, or an empty tensor (no causal limit); every row also holds the keys
// [range_start, range_stop) (an empty range when range_stop <= range_start). Returns
// [R, max(1, widest row)] int64, each row ascending with -1 padding.
at::Tensor compact_rows(at::Tensor idx, int64_t n_keys, at::Tensor limit, int64_t range_start, int64_t range_stop) {
  TORCH_CHECK(idx.dim() == 2 && idx.scalar_type() == at::kLong, "compact_rows: idx must be [R, M] int64");
  TORCH_CHECK(n_keys > 0 && n_keys < (int64_t{1} << 31), "compact_rows: n_keys must be in [1, 2^31)");
  TORCH_CHECK(range_start >= 0, "compact_rows: range_start must be >= 0");
  idx = idx.contiguous();
  const int64_t R = idx.size(0), M = idx.size(1);
  int64_t n_q = 1;
  const int64_t* lim = check_limit(limit, R, n_q, "compact_rows");
  const int64_t* cand = idx.data_ptr<int64_t>();
  return compact_all_rows(R, n_keys, idx.options(), [&](int64_t r, std::vector<uint64_t>& bits,
                                                        std::vector<int32_t>& out) {
    const int64_t last = lim ? std::min(lim[r % n_q], n_keys - 1) : n_keys - 1;
    const int64_t* row = cand + r * M;
    return compact_row([&](auto visit) { for (int64_t i = 0; i < M; ++i) visit(row[i]); }, last, range_start,
                       range_stop, bits, out);
  });
}

// members [Gm, C, M] int64: the key positions of each cluster of group g (-1 padding);
// chosen [Gm, Q, c] int64: the clusters each of the group's Q query rows reads (any negative
// = none); limit [N_q] int64 (N_q dividing Q; row q uses limit[q % N_q]) or empty; every row
// also holds the keys [range_start, range_stop). Returns [Gm, Q, max(1, widest row)] int64,
// rows ascending and unique with -1 padding: the union of the chosen clusters' members.
at::Tensor cluster_rows(at::Tensor members, at::Tensor chosen, int64_t n_keys, at::Tensor limit, int64_t range_start,
                        int64_t range_stop) {
  TORCH_CHECK(members.dim() == 3 && members.scalar_type() == at::kLong, "cluster_rows: members must be [Gm, C, M] int64");
  TORCH_CHECK(chosen.dim() == 3 && chosen.scalar_type() == at::kLong && chosen.size(0) == members.size(0),
              "cluster_rows: chosen must be [Gm, Q, c] int64 with the groups of members");
  TORCH_CHECK(n_keys > 0 && n_keys < (int64_t{1} << 31), "cluster_rows: n_keys must be in [1, 2^31)");
  TORCH_CHECK(range_start >= 0, "cluster_rows: range_start must be >= 0");
  members = members.contiguous();
  chosen = chosen.contiguous();
  const int64_t Gm = members.size(0), C = members.size(1), M = members.size(2);
  const int64_t Q = chosen.size(1), c = chosen.size(2);
  int64_t n_q = 1;
  const int64_t* lim = check_limit(limit, Q, n_q, "cluster_rows");
  const int64_t* mem = members.data_ptr<int64_t>();
  const int64_t* cho = chosen.data_ptr<int64_t>();
  auto out = compact_all_rows(Gm * Q, n_keys, members.options(), [&](int64_t r, std::vector<uint64_t>& bits,
                                                                     std::vector<int32_t>& rows) {
    const int64_t g = r / Q, q = r % Q;
    const int64_t last = lim ? std::min(lim[q % n_q], n_keys - 1) : n_keys - 1;
    const int64_t* picks = cho + r * c;
    return compact_row(
        [&](auto visit) {
          for (int64_t i = 0; i < c; ++i) {
            const int64_t cluster = picks[i];
            if (cluster < 0) continue;
            TORCH_CHECK(cluster < C, "cluster_rows: chosen cluster ", cluster, " out of range [0, ", C, ")");
            const int64_t* keys = mem + (g * C + cluster) * M;
            for (int64_t j = 0; j < M; ++j) visit(keys[j]);
          }
        },
        last, range_start, range_stop, bits, rows);
  });
  return out.view({Gm, Q, out.size(1)});
}

// LSH rows (selection.lsh). Per hash round t and KV group g, order[t, g] lists the key positions
// sorted by (bucket, position); for query row m of the group, [lo, hi) is the run of its bucket in
// that order and at the insertion point of its position pos[m] (keys of the run before `at` are at
// positions <= pos[m]). Causal: the row takes the `window` keys before `at` within the run (the most
// recent same-bucket keys). Non-causal: the `window` keys of the run nearest to pos[m], ties to the
// earlier key. The union over rounds, plus the key at pos[m] when include_self (and pos[m] >= 0),
// becomes the row: ascending, unique, -1 padded, positions above pos[m] dropped when causal.
// order: [T, Gk, N_k] int64; lo, at, hi: [T, Gk, M] int64; pos: [M] int64. Returns [Gk, M, K] int64.
at::Tensor lsh_rows(at::Tensor order, at::Tensor lo, at::Tensor at_, at::Tensor hi, at::Tensor pos, int64_t window,
                    bool causal, bool include_self, int64_t n_keys) {
  TORCH_CHECK(order.dim() == 3 && order.scalar_type() == at::kLong, "lsh_rows: order must be [T, Gk, N_k] int64");
  TORCH_CHECK(lo.dim() == 3 && lo.sizes() == at_.sizes() && lo.sizes() == hi.sizes() && lo.size(0) == order.size(0)
                  && lo.size(1) == order.size(1) && lo.scalar_type() == at::kLong && at_.scalar_type() == at::kLong
                  && hi.scalar_type() == at::kLong, "lsh_rows: lo, at, hi must be [T, Gk, M] int64");
  TORCH_CHECK(pos.dim() == 1 && pos.size(0) == lo.size(2) && pos.scalar_type() == at::kLong,
              "lsh_rows: pos must be [M] int64");
  TORCH_CHECK(n_keys == order.size(2) && n_keys > 0 && n_keys < (int64_t{1} << 31), "lsh_rows: n_keys must be N_k");
  TORCH_CHECK(window >= 1, "lsh_rows: window must be >= 1");
  order = order.contiguous();
  lo = lo.contiguous();
  at_ = at_.contiguous();
  hi = hi.contiguous();
  pos = pos.contiguous();
  const int64_t T = order.size(0), Gk = order.size(1), M = lo.size(2);
  const int64_t* ord = order.data_ptr<int64_t>();
  const int64_t* lop = lo.data_ptr<int64_t>();
  const int64_t* atp = at_.data_ptr<int64_t>();
  const int64_t* hip = hi.data_ptr<int64_t>();
  const int64_t* pp = pos.data_ptr<int64_t>();
  auto out = compact_all_rows(Gk * M, n_keys, order.options(), [&](int64_t r, std::vector<uint64_t>& bits,
                                                                   std::vector<int32_t>& rows) {
    const int64_t g = r / M, m = r % M, p = pp[m];
    const int64_t last = causal ? std::min(p, n_keys - 1) : n_keys - 1;
    return compact_row(
        [&](auto visit) {
          for (int64_t t = 0; t < T; ++t) {
            const int64_t* keys = ord + (t * Gk + g) * n_keys;  // sorted by (bucket, position)
            const int64_t e = (t * Gk + g) * M + m;
            const int64_t run_lo = lop[e], run_hi = hip[e], at = atp[e];
            if (causal) {
              for (int64_t i = std::max(run_lo, at - window); i < at; ++i) visit(keys[i]);
              continue;
            }
            // Nearest `window` keys to p: grow a run of the sorted order around `at`, taking the
            // closer side each time (the left one on a tie: the earlier key).
            int64_t left = at - 1, right = at;
            for (int64_t taken = 0; taken < window; ++taken) {
              const bool has_left = left >= run_lo, has_right = right < run_hi;
              if (!has_left && !has_right) break;
              if (has_left && (!has_right || p - keys[left] <= keys[right] - p)) {
                visit(keys[left--]);
              } else {
                visit(keys[right++]);
              }
            }
          }
          if (include_self && p >= 0) visit(p);
        },
        last, 0, 0, bits, rows);
  });
  return out.view({Gk, M, out.size(1)});
}

SA_OP_LIBRARY(m) {
  // Candidate lists -> ascending unique index rows (a bitmap per row).
  m.def("compact_rows(Tensor idx, int n_keys, Tensor limit, int range_start, int range_stop) -> Tensor", &compact_rows);
  // Chosen clusters' members -> ascending unique index rows.
  m.def("cluster_rows(Tensor members, Tensor chosen, int n_keys, Tensor limit, int range_start, int range_stop)"
        " -> Tensor", &cluster_rows);
  // LSH selection rows from the keys sorted by bucket.
  m.def("lsh_rows(Tensor order, Tensor lo, Tensor at, Tensor hi, Tensor pos, int window, bool causal,"
        " bool include_self, int n_keys) -> Tensor", &lsh_rows);
}
