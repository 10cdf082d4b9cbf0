// Fused matrix warps for the CPU: grid generation and bilinear sampling in one pass.
//
// torch's path writes a (B, H', W', 2) grid (F.affine_grid) and then reads it back in F.grid_sample. Here each
// output pixel's source point is computed from the matrix where it is needed, so the grid never exists. Two
// families: affine ((B, 2, 3) matrices) and projective ((B, 3, 3) homographies, whose denominator is clamped away
// from zero keeping its sign, as torchstn.geometry.safe_denominator does, with no gradient through a clamped
// one). The arithmetic follows ATen's grid sampler (GridSampler.h) step by step (unnormalise, pad, floor, the
// four bilinear weights and, in the backward, the same gradient terms) so the results agree with
// F.grid_sample(input, grid) on torchstn's grid to rounding.
//
// Ops (registered as torch.ops.torchstn.*; see torchstn/ext.py):
//   warp_bilinear(input (B,C,H,W), theta (B*N,R,3), xs (W'), ys (H'), padding, align_corners, eps)
//       -> (B*N,C,H',W')
//   warp_bilinear_backward(grad_out, input, theta, xs, ys, padding, align_corners, eps, input_grad)
//       -> (grad_input or an empty tensor, grad_theta (B*N,R,3))
// R = 2: affine; R = 3: projective (eps: the smallest denominator magnitude). N >= 1 matrices per image (several
// heads reading one input): matrix k warps image k / N. xs and ys are the normalised target coordinates of the
// output columns and rows. padding: 0 zeros, 1 border, 2 reflection. All tensors contiguous, on the CPU, of one
// floating dtype (the Python wrapper guarantees it).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "grid_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

namespace {

constexpr int64_t kZeros = 0;
constexpr int64_t kBorder = 1;
constexpr int64_t kReflection = 2;

template <typename T, bool align_corners>
inline T unnormalize(T coord, int64_t size, T* grad) {
  if constexpr (align_corners) {
    *grad = static_cast<T>(size - 1) / 2;
    return ((coord + 1) / 2) * static_cast<T>(size - 1);
  }
  *grad = static_cast<T>(size) / 2;
  return ((coord + 1) * static_cast<T>(size) - 1) / 2;
}

using torchstn_grid::clip;
using torchstn_grid::reflect;

// Pixel coordinate of a normalised one after padding, and d(pixel)/d(normalised) in *grad.
template <typename T, int64_t padding, bool align_corners>
inline T source_index(T coord, int64_t size, T* grad) {
  T g_un;
  T c = unnormalize<T, align_corners>(coord, size, &g_un);
  if constexpr (padding == kBorder) {
    T g_clip;
    c = clip(c, size, &g_clip);
    *grad = g_un * g_clip;
  } else if constexpr (padding == kReflection) {
    T g_ref, g_clip;
    c = align_corners ? reflect(c, 0, 2 * (size - 1), &g_ref) : reflect(c, -1, 2 * size - 1, &g_ref);
    c = clip(c, size, &g_clip);
    *grad = g_un * g_ref * g_clip;
  } else {
    *grad = g_un;
  }
  return c;
}

// Per-row scratch: for each output pixel of one row, the offset of its top-left tap, a 4-bit mask of the taps
// that lie inside the image (bit 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right; 0 when the point is far
// outside, NaN included), its fractional offsets from the top-left tap and d(pixel)/d(grid) for the backward.
// Offsets are 32-bit (the wrapper only sends images of fewer than 2**31 pixels), which lets the compiler
// vectorise the loop that fills them.
// For a homography also the normalised source point (gx, gy), 1 / denominator, and 1 / denominator again where
// the denominator was not clamped (0 where it was: no gradient reaches a clamped denominator).
template <typename T>
struct Row {
  std::vector<int32_t> off, mask;
  std::vector<T> dx, dy, mx, my, gx, gy, inv, inv_free;
  Row(int64_t n, bool projective)
      : off(n), mask(n), dx(n), dy(n), mx(n), my(n), gx(projective ? n : 0), gy(projective ? n : 0),
        inv(projective ? n : 0), inv_free(projective ? n : 0) {}
};

// Fill the row buffers for output row y: source point (t0 x + t1 y + t2, t3 x + t4 y + t5) for each x in xs,
// divided by t6 x + t7 y + t8 for a homography. The buffers are restrict-qualified parameters so that the compiler
// vectorises the loop without alias checks.
template <typename T, int64_t padding, bool align_corners, bool projective>
void row_taps_padded(const T* __restrict__ t, T y, const T* __restrict__ xs, int64_t Wo, int64_t H, int64_t W, T eps,
                     int32_t* __restrict__ off, int32_t* __restrict__ mask, T* __restrict__ dxs,
                     T* __restrict__ dys, T* __restrict__ mxs, T* __restrict__ mys, T* __restrict__ gxs,
                     T* __restrict__ gys, T* __restrict__ invs, T* __restrict__ frees) {
  const T cx = t[1] * y + t[2];
  const T cy = t[4] * y + t[5];
  const T t0 = t[0];
  const T t3 = t[3];
  const T t6 = projective ? t[6] : T(0);
  const T cz = projective ? t[7] * y + t[8] : T(1);
  const T fw = static_cast<T>(W);
  const T fh = static_cast<T>(H);
  const int32_t w32 = static_cast<int32_t>(W);
  const int32_t h32 = static_cast<int32_t>(H);
  for (int64_t j = 0; j < Wo; ++j) {
    const T x = xs[j];
    T mx, my, gx, gy;
    if constexpr (projective) {
      const T den = t6 * x + cz;
      const bool small = std::abs(den) < eps;
      const T d = small ? (std::signbit(den) ? -eps : eps) : den;
      gx = (t0 * x + cx) / d;
      gy = (t3 * x + cy) / d;
      gxs[j] = gx;
      gys[j] = gy;
      invs[j] = T(1) / d;
      frees[j] = small ? T(0) : T(1) / d;
    } else {
      gx = t0 * x + cx;
      gy = t3 * x + cy;
    }
    const T ix = source_index<T, padding, align_corners>(gx, W, &mx);
    const T iy = source_index<T, padding, align_corners>(gy, H, &my);
    const bool inside = (ix >= T(-1)) & (ix <= fw) & (iy >= T(-1)) & (iy <= fh);
    const T fx = std::floor(inside ? ix : T(-2));
    const T fy = std::floor(inside ? iy : T(-2));
    const int32_t x0 = static_cast<int32_t>(fx);
    const int32_t y0 = static_cast<int32_t>(fy);
    const int32_t vx0 = (x0 >= 0) & (x0 < w32);
    const int32_t vx1 = (x0 >= -1) & (x0 < w32 - 1);
    const int32_t vy0 = (y0 >= 0) & (y0 < h32);
    const int32_t vy1 = (y0 >= -1) & (y0 < h32 - 1);
    mask[j] = (vy0 & vx0) | ((vy0 & vx1) << 1) | ((vy1 & vx0) << 2) | ((vy1 & vx1) << 3);
    off[j] = y0 * w32 + x0;
    dxs[j] = ix - fx;
    dys[j] = iy - fy;
    mxs[j] = mx;
    mys[j] = my;
  }
}

template <typename T, bool projective>
void row_taps(const T* t, T y, const T* xs, int64_t Wo, int64_t H, int64_t W, int64_t padding, bool align_corners,
              T eps, Row<T>& row) {
  int32_t* off = row.off.data();
  int32_t* mask = row.mask.data();
  T* dx = row.dx.data();
  T* dy = row.dy.data();
  T* mx = row.mx.data();
  T* my = row.my.data();
  T* gx = row.gx.data();
  T* gy = row.gy.data();
  T* inv = row.inv.data();
  T* free = row.inv_free.data();
#define TORCHSTN_ROW(PAD, ALIGN) \
  row_taps_padded<T, PAD, ALIGN, projective>(t, y, xs, Wo, H, W, eps, off, mask, dx, dy, mx, my, gx, gy, inv, free)
  if (align_corners) {
    if (padding == kBorder) return TORCHSTN_ROW(kBorder, true);
    if (padding == kReflection) return TORCHSTN_ROW(kReflection, true);
    return TORCHSTN_ROW(kZeros, true);
  }
  if (padding == kBorder) return TORCHSTN_ROW(kBorder, false);
  if (padding == kReflection) return TORCHSTN_ROW(kReflection, false);
  return TORCHSTN_ROW(kZeros, false);
#undef TORCHSTN_ROW
}

template <typename T, bool projective>
void forward_kernel(const T* in, const T* theta, const T* xs, const T* ys, T* out, int64_t B, int64_t N, int64_t C,
                    int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t padding, bool align_corners, T eps) {
  constexpr int64_t P = projective ? 9 : 6;  // matrix entries
  const int64_t plane = H * W;
  const int64_t out_plane = Ho * Wo;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, Wo * C));
  at::parallel_for(0, B * N * Ho, grain, [&](int64_t begin, int64_t end) {
    Row<T> row(Wo, projective);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t k = r / Ho;  // the matrix, and the output image
      const int64_t b = k / N;   // the input image
      const int64_t i = r % Ho;
      row_taps<T, projective>(theta + k * P, ys[i], xs, Wo, H, W, padding, align_corners, eps, row);
      const int32_t* __restrict__ off = row.off.data();
      const int32_t* __restrict__ mask = row.mask.data();
      const T* __restrict__ dxs = row.dx.data();
      const T* __restrict__ dys = row.dy.data();
      for (int64_t c = 0; c < C; ++c) {
        const T* __restrict__ s = in + (b * C + c) * plane;
        T* __restrict__ dst = out + (k * C + c) * out_plane + i * Wo;
        for (int64_t j = 0; j < Wo; ++j) {
          const T dx = dxs[j];
          const T dy = dys[j];
          const T ex = 1 - dx;
          const T ey = 1 - dy;
          const int64_t o = off[j];
          const int32_t m = mask[j];
          if (m == 15) {
            dst[j] = (s[o] * ex + s[o + 1] * dx) * ey + (s[o + W] * ex + s[o + W + 1] * dx) * dy;
          } else {
            T v = 0;
            if (m & 1) v += s[o] * (ex * ey);
            if (m & 2) v += s[o + 1] * (dx * ey);
            if (m & 4) v += s[o + W] * (ex * dy);
            if (m & 8) v += s[o + W + 1] * (dx * dy);
            dst[j] = v;
          }
        }
      }
    }
  });
}

// One channel of one output row: add each point's d(loss)/d(source x, y) to gx, gy and, with INPUT_GRAD, scatter
// its gradient onto the four taps. Points whose taps are all inside (nearly all of them) skip the tap tests.
template <typename T, bool INPUT_GRAD>
inline void backward_row(const T* __restrict__ s, const T* __restrict__ g, T* __restrict__ sg,
                         const int32_t* __restrict__ off, const int32_t* __restrict__ mask, const T* __restrict__ dxs,
                         const T* __restrict__ dys, T* __restrict__ gx, T* __restrict__ gy, int64_t Wo, int64_t W) {
  for (int64_t j = 0; j < Wo; ++j) {
    const int32_t m = mask[j];
    if (m == 0) continue;
    const T go = g[j];
    const T dx = dxs[j];
    const T dy = dys[j];
    const T ex = 1 - dx;
    const T ey = 1 - dy;
    const int64_t o = off[j];
    T v00, v01, v10, v11;
    if (m == 15) {
      v00 = s[o];
      v01 = s[o + 1];
      v10 = s[o + W];
      v11 = s[o + W + 1];
      if constexpr (INPUT_GRAD) {
        sg[o] += ex * ey * go;
        sg[o + 1] += dx * ey * go;
        sg[o + W] += ex * dy * go;
        sg[o + W + 1] += dx * dy * go;
      }
    } else {
      v00 = (m & 1) ? s[o] : T(0);
      v01 = (m & 2) ? s[o + 1] : T(0);
      v10 = (m & 4) ? s[o + W] : T(0);
      v11 = (m & 8) ? s[o + W + 1] : T(0);
      if constexpr (INPUT_GRAD) {
        if (m & 1) sg[o] += ex * ey * go;
        if (m & 2) sg[o + 1] += dx * ey * go;
        if (m & 4) sg[o + W] += ex * dy * go;
        if (m & 8) sg[o + W + 1] += dx * dy * go;
      }
    }
    gx[j] += ((v01 - v00) * ey + (v11 - v10) * dy) * go;
    gy[j] += ((v10 - v00) * ex + (v11 - v01) * dx) * go;
  }
}

template <typename T, bool projective>
void backward_kernel(const T* gout, const T* in, const T* theta, const T* xs, const T* ys, T* gin, T* gtheta,
                     int64_t B, int64_t N, int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t padding,
                     bool align_corners, T eps) {
  using acc_t = double;
  constexpr int64_t P = projective ? 9 : 6;
  const int64_t plane = H * W;
  const int64_t out_plane = Ho * Wo;
  // One input image per task, with all its matrices: each task writes only its own grad_input planes and theta
  // rows, so no two threads collide.
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    Row<T> row(Wo, projective);
    std::vector<T> gix(Wo), giy(Wo);
    for (int64_t k = begin * N; k < end * N; ++k) {
      const int64_t b = k / N;
      const T* t = theta + k * P;
      acc_t acc[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t i = 0; i < Ho; ++i) {
        const T y = ys[i];
        row_taps<T, projective>(t, y, xs, Wo, H, W, padding, align_corners, eps, row);
        const int32_t* __restrict__ off = row.off.data();
        const int32_t* __restrict__ mask = row.mask.data();
        const T* __restrict__ dxs = row.dx.data();
        const T* __restrict__ dys = row.dy.data();
        T* __restrict__ gx = gix.data();
        T* __restrict__ gy = giy.data();
        std::fill(gix.begin(), gix.end(), T(0));
        std::fill(giy.begin(), giy.end(), T(0));
        for (int64_t c = 0; c < C; ++c) {
          const T* __restrict__ s = in + (b * C + c) * plane;
          const T* __restrict__ g = gout + (k * C + c) * out_plane + i * Wo;
          T* __restrict__ sg = gin == nullptr ? nullptr : gin + (b * C + c) * plane;
          if (sg != nullptr) {
            backward_row<T, true>(s, g, sg, off, mask, dxs, dys, gx, gy, Wo, W);
          } else {
            backward_row<T, false>(s, g, sg, off, mask, dxs, dys, gx, gy, Wo, W);
          }
        }
        // d(loss)/d(normalised source point) per output pixel, then the matrix entries' gradient summed over the
        // row (y is the row's, so it multiplies the row's sums once).
        const T* __restrict__ mxs = row.mx.data();
        const T* __restrict__ mys = row.my.data();
        acc_t sx = 0, sxx = 0, sy = 0, syx = 0, sz = 0, szx = 0;
        for (int64_t j = 0; j < Wo; ++j) {
          acc_t ggx = static_cast<acc_t>(gx[j] * mxs[j]);
          acc_t ggy = static_cast<acc_t>(gy[j] * mys[j]);
          if constexpr (projective) {  // source = numerator / den: numerators get g / den, den gets -g . source / den
            const acc_t dz = -(ggx * row.gx[j] + ggy * row.gy[j]) * row.inv_free[j];
            szx += dz * xs[j];
            sz += dz;
            ggx *= row.inv[j];
            ggy *= row.inv[j];
          }
          sxx += ggx * xs[j];
          sx += ggx;
          syx += ggy * xs[j];
          sy += ggy;
        }
        acc[0] += sxx;
        acc[1] += sx * y;
        acc[2] += sx;
        acc[3] += syx;
        acc[4] += sy * y;
        acc[5] += sy;
        acc[6] += szx;
        acc[7] += sz * y;
        acc[8] += sz;
      }
      for (int e = 0; e < P; ++e) gtheta[k * P + e] = static_cast<T>(acc[e]);
    }
  });
}

void check_inputs(const at::Tensor& input, const at::Tensor& theta, const at::Tensor& xs, const at::Tensor& ys,
                  int64_t padding) {
  TORCH_CHECK(input.dim() == 4, "torchstn::warp_bilinear: input must be (B, C, H, W)");
  TORCH_CHECK(theta.dim() == 3 && (theta.size(1) == 2 || theta.size(1) == 3) && theta.size(2) == 3 &&
                  input.size(0) > 0 && theta.size(0) % input.size(0) == 0,
              "torchstn::warp_bilinear: theta must be (B * N, 2, 3) or (B * N, 3, 3) for an input of B > 0 images");
  TORCH_CHECK(xs.dim() == 1 && ys.dim() == 1, "torchstn::warp_bilinear: xs and ys must be 1D");
  for (const at::Tensor* t : {&input, &theta, &xs, &ys}) {
    TORCH_CHECK(t->device().is_cpu(), "torchstn::warp_bilinear: CPU tensors only");
    TORCH_CHECK(t->is_contiguous(), "torchstn::warp_bilinear: contiguous tensors only");
    TORCH_CHECK(t->scalar_type() == input.scalar_type(), "torchstn::warp_bilinear: one dtype for all tensors");
  }
  TORCH_CHECK(padding >= kZeros && padding <= kReflection, "torchstn::warp_bilinear: padding must be 0, 1 or 2");
}

at::Tensor warp_bilinear(const at::Tensor& input, const at::Tensor& theta, const at::Tensor& xs, const at::Tensor& ys,
                         int64_t padding, bool align_corners, double eps) {
  check_inputs(input, theta, xs, ys, padding);
  const int64_t B = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t N = theta.size(0) / B;
  const int64_t Ho = ys.size(0), Wo = xs.size(0);
  const bool projective = theta.size(1) == 3;
  at::Tensor out = at::empty({B * N, C, Ho, Wo}, input.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "torchstn_warp_bilinear", [&] {
    const auto run = projective ? &forward_kernel<scalar_t, true> : &forward_kernel<scalar_t, false>;
    run(input.const_data_ptr<scalar_t>(), theta.const_data_ptr<scalar_t>(), xs.const_data_ptr<scalar_t>(),
        ys.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), B, N, C, H, W, Ho, Wo, padding,
        align_corners, static_cast<scalar_t>(eps));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> warp_bilinear_backward(const at::Tensor& grad_out, const at::Tensor& input,
                                                          const at::Tensor& theta, const at::Tensor& xs,
                                                          const at::Tensor& ys, int64_t padding, bool align_corners,
                                                          double eps, bool input_grad) {
  check_inputs(input, theta, xs, ys, padding);
  const int64_t B = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t N = theta.size(0) / B;
  const int64_t Ho = ys.size(0), Wo = xs.size(0);
  const bool projective = theta.size(1) == 3;
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({B * N, C, Ho, Wo}) && grad_out.is_contiguous() &&
                  grad_out.scalar_type() == input.scalar_type() && grad_out.device().is_cpu(),
              "torchstn::warp_bilinear_backward: grad_out must be a contiguous (B * N, C, H', W') CPU tensor");
  at::Tensor gin = input_grad ? at::zeros_like(input) : at::empty({0}, input.options());
  at::Tensor gtheta = at::empty_like(theta);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "torchstn_warp_bilinear_backward", [&] {
    const auto run = projective ? &backward_kernel<scalar_t, true> : &backward_kernel<scalar_t, false>;
    run(grad_out.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(), theta.const_data_ptr<scalar_t>(),
        xs.const_data_ptr<scalar_t>(), ys.const_data_ptr<scalar_t>(),
        input_grad ? gin.mutable_data_ptr<scalar_t>() : nullptr, gtheta.mutable_data_ptr<scalar_t>(), B, N, C, H, W,
        Ho, Wo, padding, align_corners, static_cast<scalar_t>(eps));
  });
  return {gin, gtheta};
}

}  // namespace

TORCH_LIBRARY(torchstn, m) {
  m.def(
      "warp_bilinear(Tensor input, Tensor theta, Tensor xs, Tensor ys, int padding, bool align_corners, float eps) "
      "-> Tensor");
  m.def(
      "warp_bilinear_backward(Tensor grad_out, Tensor input, Tensor theta, Tensor xs, Tensor ys, int padding, "
      "bool align_corners, float eps, bool input_grad) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(torchstn, CPU, m) {
  m.impl("warp_bilinear", &warp_bilinear);
  m.impl("warp_bilinear_backward", &warp_bilinear_backward);
}
