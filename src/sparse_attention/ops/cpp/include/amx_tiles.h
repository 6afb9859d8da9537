// AMX tile unit helpers shared by the kernels that multiply bf16 tiles (the fused top-k
// scorer and the bf16 attention forward). Only compiled where the compiler targets AMX-BF16.
#pragma once

#include "aligned_vector.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>

namespace amx {

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
