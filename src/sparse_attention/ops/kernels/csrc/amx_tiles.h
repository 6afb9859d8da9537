// AMX tile unit helpers shared by the kernels that multiply bf16 tiles (the fused top-k
// scorer and the bf16 attention forward). Only compiled where the compiler targets AMX-BF16.
#pragma once

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

namespace amx {

// Tile loads and stores are several times slower when their 64-byte rows straddle cache lines
// (measured: ~44 vs ~6.5 cycles per 1 KiB tile load here), so every tile operand buffer is
// 64-byte aligned.
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

// Linux hands out the AMX tile state only on request, once per process.
inline bool permitted() {
  static const bool ok = [] {
    constexpr long kReqXcompPerm = 0x1023, kXfeatureTileData = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureTileData) == 0;
  }();
  return ok;
}

struct TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// All eight tiles as 16 rows x 64 bytes (16 x 16 fp32 results, 16 x 32 bf16 operands).
// Call on every thread that runs tile instructions, and _tile_release() when done.
inline void configure_full_tiles() {
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) {
    cfg.rows[i] = 16;
    cfg.colsb[i] = 64;
  }
  _tile_loadconfig(&cfg);
}

}  // namespace amx
#endif  // AMX
