// exp(x) for softmax arguments (x <= 0) in plain C++ that the compiler vectorises, shared by
// the attention kernels and the fused indexer loss.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

// exp(x) for x <= 0 (softmax arguments), vectorisable: 2^(x log2 e) with a degree-6
// polynomial on the fraction. Relative error ~2e-7. Arguments below -87 give 0.
inline float exp_neg(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float t = x * 1.44269504088896341f;
  const float fi = std::floor(t);
  const float f = t - fi;  // [0, 1)
  float p = 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &p, sizeof(bits));
  bits += static_cast<int32_t>(fi) << 23;
  float r;
  std::memcpy(&r, &bits, sizeof(r));
  return x <= -87.0f ? 0.0f : r;
}
