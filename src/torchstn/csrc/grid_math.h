// Pixel-coordinate helpers shared by the CPU kernels (matrix_warp.cpp, axis_resample.cpp): grid_sample's clipping
// and reflection of a source coordinate, step by step as ATen's GridSampler.h does them, each with its derivative.

#pragma once

#include <cmath>
#include <cstdint>

namespace torchstn_grid {

// A coordinate clipped to [0, limit - 1], with d(out)/d(in) in *grad.
template <typename T>
inline T clip(T in, int64_t limit, T* grad) {
  const T max = static_cast<T>(limit - 1);
  *grad = (in > T(0)) & (in < max) ? T(1) : T(0);
  return in <= T(0) ? T(0) : (in >= max ? max : in);
}

// A coordinate reflected into [twice_low / 2, twice_high / 2] (grid_sample's reflection), d(out)/d(in) in *grad.
template <typename T>
inline T reflect(T in, int64_t twice_low, int64_t twice_high, T* grad) {
  if (twice_low == twice_high) {
    *grad = 0;
    return 0;
  }
  const T min = static_cast<T>(twice_low) / 2;
  const T span = static_cast<T>(twice_high - twice_low) / 2;
  T mult = 1;
  in = in - min;
  if (in < static_cast<T>(0)) {
    mult = -1;
    in = -in;
  }
  const T extra = std::fmod(in, span);
  // The parity of the number of flips, in floating point: converting floor(in / span) to an integer would be
  // undefined for NaN or huge coordinates (NaN takes the odd branch and stays NaN, which reads as outside).
  const T flips = std::floor(in / span);
  if (std::fmod(flips, static_cast<T>(2)) == static_cast<T>(0)) {
    *grad = mult;
    return extra + min;
  }
  *grad = -mult;
  return span - extra + min;
}

}  // namespace torchstn_grid
