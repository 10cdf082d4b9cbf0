// The anti-aliased warp of an axis-aligned affine transform in one pass, for the CPU (torchstn/_antialias.py).
//
// For a warp whose source x depends only on the output column and source y only on the output row (Translation,
// Attention: a scale and a shift per axis), the prefiltered sample of torchstn._antialias.prefiltered_affine_sample
// (the input correlated with each image's kernels kx and ky, then sampled bilinearly) is separable: output column
// c reads, along x, the K + 1 source pixels that its two bilinear taps' kernels cover, and likewise along y. So the
// filtered image is computed only where the sampler reads it, not at full resolution: rows first (a pass along
// contiguous memory that leaves H' rows, of the columns some output column reads), then columns:
//   tmp[r, j] = sum_e wy[r, e] in[jy[r, e], j]
//   out[r, c] = sum_e wx[c, e] tmp[r, jx[c, e]]
// with, for the point x' (floor i0, fraction f) and e = 0 .. K (r = (K - 1) / 2, k[-1] = k[K] = 0),
//   w[e] = (1 - f) k[e] + f k[e - 1],   j[e] = the padded index of i0 - r + e.
// The padding follows prefiltered_affine_sample exactly: zeros drop the indices outside the image (a zero-padded
// filter, sampled with zeros); border clamps the point to the band [-r, n - 1 + r] and the index to the image (a
// replicate-padded filter, sampled with border padding on the band); reflection reflects and clips the point as
// grid_sample does and reflects the index as it pads (the reflected image filtered to its own size). The output
// equals prefiltered_affine_sample's to rounding.
//
// The kernels are built here too, from the matrix, as torchstn._antialias builds them (affine_footprint_variance,
// box_width, box_kernel: the footprint's width |a| pixels per output pixel along an axis whose matrix entry is a,
// the variance ramped in over widths 1 to 1 + ramp, the box of that variance over unit cells), each image with the
// radius its own footprint needs; their derivative with respect to a is carried into the matrix's gradient, so the
// gradient reaches the parameters through the sampling positions and through the footprint, as in Python.
//
// Ops (registered as torch.ops.torchstn.*; see torchstn/ext.py):
//   axis_warp_antialiased(input (B,C,H,W), matrix (B,2,3), xs (W'), ys (H'), padding, align_corners, ramp)
//       -> (out (B,C,H',W'), still (B,) bool: the images whose footprint shrinks along neither axis, wide () bool:
//           some image's kernel is wider than twice the input along its axis; then nothing is computed and the
//           wrapper takes the mip-map, whose cost does not grow with the footprint)
//   axis_warp_antialiased_backward(grad_out, input, matrix, xs, ys, padding, align_corners, ramp, input_grad)
//       -> (grad_input or an empty tensor, grad_matrix (B,2,3))
// matrix[:, 0, 1] and matrix[:, 1, 0] are taken as zero (the caller guarantees it for every parameter value) and
// get no gradient. xs and ys are the normalised target coordinates of the output columns and rows (as the fused
// warp's). padding: 0 zeros, 1 border, 2 reflection. The still images are left zero, and get no gradient: the
// wrapper replaces them by the plain warp, bit for bit. All tensors contiguous, on the CPU, of one floating dtype
// (the wrapper guarantees it).

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

using torchstn_grid::clip;
using torchstn_grid::reflect;

// The index that reflection padding reads for position m of an axis of n pixels (as _reflect_index in Python).
inline int64_t reflect_index(int64_t m, int64_t n, bool align_corners) {
  if (align_corners) {
    if (n == 1) return 0;
    const int64_t period = 2 * (n - 1);
    int64_t k = m % period;
    if (k < 0) k += period;
    return k < n ? k : period - k;
  }
  const int64_t period = 2 * n;
  int64_t k = m % period;
  if (k < 0) k += period;
  return k < n ? k : period - 1 - k;
}

// The prefilter of one axis of one image (torchstn._antialias: affine_footprint_variance, box_width, box_kernel):
// K taps and their derivatives with respect to the matrix entry a. per: source pixels per output pixel per unit
// of a. A footprint no wider than one source pixel gives one tap, [1] (still).
template <typename T>
struct Kernel {
  int64_t K = 1;
  bool still = true, too_wide = false;  // too_wide: more than max_taps taps (then k and dk are not built)
  std::vector<T> k, dk, dw;
};

template <typename T>
void build_kernel(T a, double per, double ramp_width, int64_t max_taps, Kernel<T>& out) {
  const T p = static_cast<T>(per);
  const T ap = a * p;
  const T w2 = ap * ap;
  const bool w2_free = w2 >= T(1e-12);
  const T wx = std::sqrt(w2_free ? w2 : T(1e-12));
  const T u = (wx - T(1)) * static_cast<T>(1.0 / ramp_width);
  const T ramp = u <= T(0) ? T(0) : (u >= T(1) ? T(1) : u);
  const T v = w2 * ramp * static_cast<T>(1.0 / 12.0);
  out.still = !(v > T(0));
  out.too_wide = false;
  if (out.still) {
    out.K = 1;
    out.k.assign(1, T(1));
    out.dk.assign(1, T(0));
    return;
  }
  // dv/da through w2 = (a p)^2, the guarded square root and the ramp (whose clamp passes its bounds).
  const T dramp = (u >= T(0) && u <= T(1)) ? static_cast<T>(1.0 / ramp_width) : T(0);
  const T dwx_dw2 = w2_free ? T(0.5) / wx : T(0);
  const T dv_dw2 = (ramp + w2 * dramp * dwx_dw2) * static_cast<T>(1.0 / 12.0);
  const T dv_da = dv_dw2 * T(2) * ap * p;
  // box_width: L = 2n + 1 + 2f, n fixed (from the detached variance).
  const T n = std::floor((std::sqrt(T(1) + T(12) * v) - T(1)) / T(2));
  const T s = n * (n + T(1)) * (T(2) * n + T(1)) / T(6);
  const T num = v * (T(2) * n + T(1)) - T(2) * s;
  const T den = T(2) * ((n + T(1)) * (n + T(1)) - v);
  const T f = num / den;
  const T L = T(2) * n + T(1) + T(2) * f;
  const T dL_dv = T(2) * ((T(2) * n + T(1)) * den + T(2) * num) / (den * den);
  // The radius, in double as torchstn._antialias._radius computes it from the variance.
  const double vd = static_cast<double>(v);
  const double nd = std::floor((std::sqrt(1.0 + 12.0 * vd) - 1.0) / 2.0);
  const double sd = nd * (nd + 1) * (2 * nd + 1) / 6.0;
  const double width = 2 * nd + 1 + 2 * (vd * (2 * nd + 1) - 2 * sd) / (2 * ((nd + 1) * (nd + 1) - vd));
  if (!(width <= static_cast<double>(max_taps))) {  // also a width too large for an integer
    out.too_wide = true;
    return;
  }
  const int64_t r = std::max<int64_t>(1, static_cast<int64_t>(std::ceil((width - 1.0) / 2.0)));
  out.K = 2 * r + 1;
  if (out.K > max_taps) {
    out.too_wide = true;
    return;
  }
  out.k.assign(static_cast<size_t>(out.K), T(0));
  out.dk.assign(static_cast<size_t>(out.K), T(0));
  const T half = L * T(0.5);
  T S = 0, dS = 0;
  std::vector<T>& dw = out.dw;
  dw.assign(static_cast<size_t>(out.K), T(0));
  for (int64_t i = 0; i < out.K; ++i) {
    const T m = static_cast<T>(i - r);
    const T hi = std::min(m + T(0.5), half), lo = std::max(m - T(0.5), -half);
    const T w = hi - lo;
    if (w > T(0)) {
      out.k[i] = w;
      dw[i] = (half < m + T(0.5) ? T(0.5) : T(0)) + (-half > m - T(0.5) ? T(0.5) : T(0));
    }
    S += out.k[i];
    dS += dw[i];
  }
  const T chain = dL_dv * dv_da;
  for (int64_t i = 0; i < out.K; ++i) {
    out.dk[i] = (dw[i] * S - out.k[i] * dS) / (S * S) * chain;
    out.k[i] /= S;
  }
}

// One axis of one image: for each of its n_out output positions, E = K + 1 entries (index, weight), its fraction f
// and d(weight)/d(normalised coordinate). An index of -1 reads nothing (zeros padding outside the image).
template <typename T>
struct Axis {
  int64_t n_out = 0, entries = 0, lo = 0, hi = -1;  // lo..hi: the source indices read
  std::vector<int32_t> j, col;  // col: j - lo, or hi - lo + 1 (a zero column) where j reads nothing
  std::vector<T> w, dw, frac;
  void columns() {
    const int32_t none = static_cast<int32_t>(hi - lo + 1);
    col.resize(j.size());
    for (size_t q = 0; q < j.size(); ++q) col[q] = j[q] < 0 ? none : static_cast<int32_t>(j[q] - lo);
  }
};

// Output position o reads the normalised source coordinate a * base[o] + b.
template <typename T>
void build_axis(T a, T b, const T* base, int64_t n_out, const Kernel<T>& kern, int64_t n, int64_t padding,
                bool align_corners, Axis<T>& ax) {
  const int64_t K = kern.K, r = (K - 1) / 2, E = K + 1;
  const T* k = kern.k.data();
  ax.n_out = n_out;
  ax.entries = E;
  ax.j.assign(static_cast<size_t>(n_out * E), -1);
  ax.w.assign(static_cast<size_t>(n_out * E), T(0));
  ax.dw.assign(static_cast<size_t>(n_out * E), T(0));
  ax.frac.assign(static_cast<size_t>(n_out), T(0));
  ax.lo = n;
  ax.hi = -1;
  const T g_un = align_corners ? static_cast<T>(n - 1) / 2 : static_cast<T>(n) / 2;
  for (int64_t o = 0; o < n_out; ++o) {
    const T c = a * base[o] + b;
    T x = align_corners ? ((c + 1) / 2) * static_cast<T>(n - 1) : ((c + 1) * static_cast<T>(n) - 1) / 2;
    T g_pad = 1;
    if (!std::isfinite(x)) continue;  // reads nothing (the wrapper has refused non-finite points already)
    if (padding == kZeros) {
      if (x <= static_cast<T>(-r - 2) || x >= static_cast<T>(n + r + 1)) continue;  // outside every tap
    } else if (padding == kBorder) {
      const T low = static_cast<T>(-r), high = static_cast<T>(n - 1 + r);
      g_pad = (x > low) & (x < high) ? T(1) : T(0);
      x = x <= low ? low : (x >= high ? high : x);
    } else {
      T g_ref, g_clip;
      x = align_corners ? reflect(x, 0, 2 * (n - 1), &g_ref) : reflect(x, -1, 2 * n - 1, &g_ref);
      x = clip(x, n, &g_clip);
      g_pad = g_ref * g_clip;
    }
    const T fl = std::floor(x);
    const T f = x - fl;
    const int64_t i0 = static_cast<int64_t>(fl);
    const T g = g_pad * g_un;
    ax.frac[o] = f;
    for (int64_t e = 0; e < E; ++e) {
      const int64_t m = i0 - r + e;
      int64_t idx;
      if (padding == kZeros) {
        if (m < 0 || m >= n) continue;
        idx = m;
      } else if (padding == kBorder) {
        idx = m < 0 ? 0 : (m >= n ? n - 1 : m);
      } else {
        idx = reflect_index(m, n, align_corners);
      }
      const T k0 = e < K ? k[e] : T(0), k1 = e > 0 ? k[e - 1] : T(0);
      const size_t q = static_cast<size_t>(o * E + e);
      ax.j[q] = static_cast<int32_t>(idx);
      ax.w[q] = (T(1) - f) * k0 + f * k1;
      ax.dw[q] = (k1 - k0) * g;
      ax.lo = std::min(ax.lo, idx);
      ax.hi = std::max(ax.hi, idx);
    }
  }
}

// d loss / d kernel tap, from d loss / d entry weight (acc, n_out x E) and the fractions: w[e] = (1 - f) k[e] +
// f k[e - 1], so tap d gets (1 - f) acc[d] + f acc[d + 1].
template <typename T>
void kernel_grad(const Axis<T>& ax, const T* acc, int64_t K, T* gk) {
  const int64_t E = ax.entries;
  for (int64_t o = 0; o < ax.n_out; ++o) {
    const T f = ax.frac[o];
    const T* a = acc + o * E;
    for (int64_t d = 0; d < K; ++d) gk[d] += (T(1) - f) * a[d] + f * a[d + 1];
  }
}

// tmp[r * stride + (j - lo)] = sum_e wy[r, e] in[jy[r, e], j] for the columns j = lo..hi (n = hi - lo + 1), and
// zero in the columns n..stride-1.
template <typename T>
void filter_y(const T* in, int64_t W, const Axis<T>& ay, int64_t lo, int64_t hi, int64_t stride, T* tmp) {
  const int64_t n = hi - lo + 1, E = ay.entries;
  for (int64_t r = 0; r < ay.n_out; ++r) {
    T* dst = tmp + r * stride;
    std::fill(dst, dst + stride, T(0));
    for (int64_t e = 0; e < E; ++e) {
      const int32_t i = ay.j[r * E + e];
      const T w = ay.w[r * E + e];
      if (i < 0 || w == T(0)) continue;
      const T* src = in + i * W + lo;
      for (int64_t j = 0; j < n; ++j) dst[j] += w * src[j];
    }
  }
}

void check(const at::Tensor& input, const at::Tensor& matrix, const at::Tensor& xs, const at::Tensor& ys,
           int64_t padding, double ramp, const char* op) {
  TORCH_CHECK(input.dim() == 4 && input.is_contiguous() && input.device().is_cpu(), op,
              ": input must be a contiguous (B, C, H, W) CPU tensor");
  TORCH_CHECK(matrix.dim() == 3 && matrix.size(0) == input.size(0) && matrix.size(1) == 2 && matrix.size(2) == 3 &&
                  matrix.is_contiguous() && matrix.scalar_type() == input.scalar_type() && matrix.device().is_cpu(),
              op, ": matrix must be a contiguous (B, 2, 3) CPU tensor of the input's dtype");
  TORCH_CHECK(xs.dim() == 1 && ys.dim() == 1 && xs.is_contiguous() && ys.is_contiguous() &&
                  xs.scalar_type() == input.scalar_type() && ys.scalar_type() == input.scalar_type(),
              op, ": xs and ys must be contiguous 1D tensors of the input's dtype");
  TORCH_CHECK(padding >= kZeros && padding <= kReflection, op, ": padding must be 0, 1 or 2");
  TORCH_CHECK(ramp > 0, op, ": ramp must be positive");
  TORCH_CHECK(input.size(2) * input.size(3) < (int64_t(1) << 31), op, ": images of 2**31 pixels or more");
}

// Source pixels per output pixel per unit of the matrix entry, along an axis of n source and n_out output pixels
// (affine_footprint_variance's per_pixel).
inline double pixels_per_unit(int64_t n, int64_t n_out, bool align_corners) {
  if (align_corners) return (static_cast<double>(n - 1) / 2) / (static_cast<double>(std::max<int64_t>(n_out - 1, 1)) / 2);
  return (static_cast<double>(n) / 2) / (static_cast<double>(n_out) / 2);
}

// The most taps a kernel along an axis of n pixels may have: twice the axis and one (the Python path's limit too).
inline int64_t max_taps(int64_t n) { return 2 * n + 1; }

// Everything one image's planes share: both axes' kernels and tables. The kernels come first (they say whether
// the image shrinks at all, and whether it is too wide); the tables only for an image that is sampled here.
template <typename T>
struct Image {
  Kernel<T> kx, ky;
  Axis<T> ax, ay;
  void kernels(const T* m, int64_t Wo, int64_t Ho, int64_t H, int64_t W, bool align_corners, double ramp) {
    build_kernel(m[0], pixels_per_unit(W, Wo, align_corners), ramp, max_taps(W), kx);
    build_kernel(m[4], pixels_per_unit(H, Ho, align_corners), ramp, max_taps(H), ky);
  }
  bool still() const { return kx.still && ky.still; }
  bool too_wide() const { return kx.too_wide || ky.too_wide; }
  void axes(const T* m, const T* xs, int64_t Wo, const T* ys, int64_t Ho, int64_t H, int64_t W, int64_t padding,
            bool align_corners) {
    TORCH_CHECK(!too_wide(),
                "torchstn::axis_warp_antialiased: a footprint wider than twice the input (the wrapper takes the mip-map)");
    build_axis(m[0], m[2], xs, Wo, kx, W, padding, align_corners, ax);
    build_axis(m[4], m[5], ys, Ho, ky, H, padding, align_corners, ay);
    ax.columns();
  }
  bool reads_nothing() const { return ay.hi < ay.lo || ax.hi < ax.lo; }
};

// One plane's forward: the rows pass into tmp (H' x (n + 1), the last column zero), then each output pixel
// gathers its K + 1 entries from its row of tmp.
template <typename T>
void plane_forward(const T* in, int64_t W, const Image<T>& im, std::vector<T>& tmp, T* out) {
  const Axis<T>& ax = im.ax;
  const Axis<T>& ay = im.ay;
  const int64_t Ho = ay.n_out, Wo = ax.n_out, n = ax.hi - ax.lo + 1, E = ax.entries;
  tmp.resize(static_cast<size_t>(Ho * (n + 1)));
  filter_y(in, W, ay, ax.lo, ax.hi, n + 1, tmp.data());
  for (int64_t r = 0; r < Ho; ++r) {
    const T* row = tmp.data() + r * (n + 1);
    T* dst = out + r * Wo;
    for (int64_t c = 0; c < Wo; ++c) {
      const int32_t* j = ax.col.data() + c * E;
      const T* w = ax.w.data() + c * E;
      T acc = 0;
      for (int64_t e = 0; e < E; ++e) acc += w[e] * row[j[e]];
      dst[c] = acc;
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> axis_warp_antialiased(const at::Tensor& input, const at::Tensor& matrix,
                                                                     const at::Tensor& xs, const at::Tensor& ys,
                                                                     int64_t padding, bool align_corners, double ramp) {
  check(input, matrix, xs, ys, padding, ramp, "torchstn::axis_warp_antialiased");
  const int64_t B = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t Wo = xs.size(0), Ho = ys.size(0);
  at::Tensor out = at::zeros({B, C, Ho, Wo}, input.options());
  at::Tensor still = at::empty({B}, input.options().dtype(at::kBool));
  at::Tensor wide = at::empty({}, input.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "torchstn_axis_warp_antialiased", [&] {
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    const scalar_t* mat = matrix.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    bool* st = still.mutable_data_ptr<bool>();
    // Every image's kernels, once: whether it shrinks, and whether some footprint is too wide for the tables.
    std::vector<Image<scalar_t>> images(static_cast<size_t>(B));
    bool too_wide = false;
    for (int64_t b = 0; b < B; ++b) {
      images[b].kernels(mat + b * 6, Wo, Ho, H, W, align_corners, ramp);
      st[b] = images[b].still();
      too_wide = too_wide || images[b].too_wide();
    }
    wide.fill_(too_wide);
    if (too_wide) return;  // the wrapper takes the mip-map: the tables would grow with the footprint
    // The tables of the images that shrink, once per image; the planes then run in parallel and share them.
    for (int64_t b = 0; b < B; ++b) {
      if (!st[b]) images[b].axes(mat + b * 6, xs.const_data_ptr<scalar_t>(), Wo, ys.const_data_ptr<scalar_t>(), Ho,
                                 H, W, padding, align_corners);
    }
    at::parallel_for(0, B * C, 1, [&](int64_t lo, int64_t hi) {
      std::vector<scalar_t> tmp;
      for (int64_t plane = lo; plane < hi; ++plane) {
        const Image<scalar_t>& im = images[plane / C];
        // A still image's output stays zero: the wrapper's plain sample replaces it.
        if (st[plane / C] || im.reads_nothing()) continue;
        plane_forward(in + plane * H * W, W, im, tmp, o + plane * Ho * Wo);
      }
    });
  });
  return {out, still, wide};
}

std::tuple<at::Tensor, at::Tensor> axis_warp_antialiased_backward(const at::Tensor& grad_out, const at::Tensor& input,
                                                                  const at::Tensor& matrix, const at::Tensor& xs,
                                                                  const at::Tensor& ys, int64_t padding,
                                                                  bool align_corners, double ramp, bool input_grad) {
  check(input, matrix, xs, ys, padding, ramp, "torchstn::axis_warp_antialiased_backward");
  const int64_t B = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t Wo = xs.size(0), Ho = ys.size(0);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({B, C, Ho, Wo}) && grad_out.is_contiguous() &&
                  grad_out.scalar_type() == input.scalar_type() && grad_out.device().is_cpu(),
              "torchstn::axis_warp_antialiased_backward: grad_out must be a contiguous (B, C, H', W') CPU tensor");
  at::Tensor gin = input_grad ? at::zeros_like(input) : at::empty({0}, input.options());
  at::Tensor gplane = at::zeros({B * C, 4}, input.options());  // d a_x, d b_x, d a_y, d b_y of each plane
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "torchstn_axis_warp_antialiased_backward", [&] {
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* mat = matrix.const_data_ptr<scalar_t>();
    const scalar_t* bx = xs.const_data_ptr<scalar_t>();
    const scalar_t* by = ys.const_data_ptr<scalar_t>();
    scalar_t* gi = input_grad ? gin.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gp = gplane.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * C, 1, [&](int64_t lo, int64_t hi) {
      using T = scalar_t;
      Image<T> im;
      std::vector<T> tmp, G, accx, accy, gkx, gky;
      int64_t built = -1;
      for (int64_t plane = lo; plane < hi; ++plane) {
        const int64_t b = plane / C;
        if (b != built) {
          im.kernels(mat + b * 6, Wo, Ho, H, W, align_corners, ramp);
          // A still image's output is the wrapper's plain sample: no gradient comes back through this one.
          if (!im.still()) im.axes(mat + b * 6, bx, Wo, by, Ho, H, W, padding, align_corners);
          built = b;
        }
        if (im.still() || im.reads_nothing()) continue;
        const Axis<T>& ax = im.ax;
        const Axis<T>& ay = im.ay;
        const int64_t n = ax.hi - ax.lo + 1, Ey = ay.entries, Ex = ax.entries;
        const T* x = in + plane * H * W;
        const int64_t stride = n + 1;
        const T* g = go + plane * Ho * Wo;
        tmp.resize(static_cast<size_t>(Ho * stride));
        filter_y(x, W, ay, ax.lo, ax.hi, stride, tmp.data());  // the forward's rows pass, recomputed
        // Columns: G[r, j] += wx g[r, c] (d loss / d tmp); accx[c, e] = sum_r g[r, c] tmp[r, j] (d loss / d wx).
        G.assign(static_cast<size_t>(Ho * stride), T(0));
        accx.assign(static_cast<size_t>(Wo * Ex), T(0));
        for (int64_t r = 0; r < Ho; ++r) {
          const T* gr = g + r * Wo;
          const T* t = tmp.data() + r * stride;
          T* Gr = G.data() + r * stride;
          for (int64_t c = 0; c < Wo; ++c) {
            const T gc = gr[c];
            const int32_t* j = ax.col.data() + c * Ex;
            const T* w = ax.w.data() + c * Ex;
            T* a = accx.data() + c * Ex;
            for (int64_t e = 0; e < Ex; ++e) {
              a[e] += gc * t[j[e]];
              Gr[j[e]] += w[e] * gc;
            }
          }
        }
        // Rows: d in[jy, lo..hi] += wy G[r, :]; accy[r, e] = G[r, :] . in[jy, lo..hi] (d loss / d wy).
        accy.assign(static_cast<size_t>(Ho * Ey), T(0));
        T* gi_plane = gi != nullptr ? gi + plane * H * W + ax.lo : nullptr;
        for (int64_t r = 0; r < Ho; ++r) {
          const T* Gr = G.data() + r * stride;
          for (int64_t e = 0; e < Ey; ++e) {
            const size_t q = static_cast<size_t>(r * Ey + e);
            const int32_t i = ay.j[q];
            if (i < 0) continue;
            const T* xr = x + i * W + ax.lo;
            const T w = ay.w[q];
            T dot = 0;
            if (gi_plane != nullptr) {
              T* dst = gi_plane + i * W;
              for (int64_t j = 0; j < n; ++j) {
                dot += Gr[j] * xr[j];
                dst[j] += w * Gr[j];
              }
            } else {
              for (int64_t j = 0; j < n; ++j) dot += Gr[j] * xr[j];
            }
            accy[q] = dot;
          }
        }
        // The coordinates a * base + b, and the kernels' dependence on a.
        T* out = gp + plane * 4;
        for (int64_t c = 0; c < Wo; ++c) {
          T g = 0;
          for (int64_t e = 0; e < Ex; ++e) g += ax.dw[c * Ex + e] * accx[c * Ex + e];
          out[0] += g * bx[c];
          out[1] += g;
        }
        for (int64_t r = 0; r < Ho; ++r) {
          T g = 0;
          for (int64_t e = 0; e < Ey; ++e) g += ay.dw[r * Ey + e] * accy[r * Ey + e];
          out[2] += g * by[r];
          out[3] += g;
        }
        gkx.assign(static_cast<size_t>(im.kx.K), T(0));
        gky.assign(static_cast<size_t>(im.ky.K), T(0));
        kernel_grad(ax, accx.data(), im.kx.K, gkx.data());
        kernel_grad(ay, accy.data(), im.ky.K, gky.data());
        for (int64_t d = 0; d < im.kx.K; ++d) out[0] += gkx[d] * im.kx.dk[d];
        for (int64_t d = 0; d < im.ky.K; ++d) out[2] += gky[d] * im.ky.dk[d];
      }
    });
  });
  at::Tensor per_image = gplane.view({B, C, 4}).sum(1);  // (B, 4)
  at::Tensor gmat = at::zeros({B, 2, 3}, input.options());
  gmat.select(1, 0).select(1, 0).copy_(per_image.select(1, 0));
  gmat.select(1, 0).select(1, 2).copy_(per_image.select(1, 1));
  gmat.select(1, 1).select(1, 1).copy_(per_image.select(1, 2));
  gmat.select(1, 1).select(1, 2).copy_(per_image.select(1, 3));
  return {gin, gmat};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(torchstn, m) {
  m.def(
      "axis_warp_antialiased(Tensor input, Tensor matrix, Tensor xs, Tensor ys, int padding, bool align_corners, "
      "float ramp) -> (Tensor, Tensor, Tensor)");
  m.def(
      "axis_warp_antialiased_backward(Tensor grad_out, Tensor input, Tensor matrix, Tensor xs, Tensor ys, "
      "int padding, bool align_corners, float ramp, bool input_grad) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(torchstn, CPU, m) {
  m.impl("axis_warp_antialiased", &axis_warp_antialiased);
  m.impl("axis_warp_antialiased_backward", &axis_warp_antialiased_backward);
}
