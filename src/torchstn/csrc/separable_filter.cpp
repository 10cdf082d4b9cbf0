// A per-image separable filter for the CPU: the anti-aliasing prefilter of affine warps (torchstn/_antialias.py).
//
// Each image b of a (B, C, H, W) input is correlated, in the "valid" sense, with its own kernels kx[b] (length Kx,
// along W) and ky[b] (length Ky, along H): out[b, c, i, j] = sum_p sum_q ky[b, p] kx[b, q] in[b, c, i + p, j + q],
// of size (B, C, H - Ky + 1, W - Kx + 1). torch's grouped convolution with one group per image and channel is an
// order of magnitude slower at these shapes; shifted multiply-adds in tensor ops make one full pass per tap, and
// their backward as many reductions again.
//
// Ops (registered as torch.ops.torchstn.*; see torchstn/ext.py):
//   separable_filter(input (B,C,H,W), kx (B,Kx), ky (B,Ky)) -> (B,C,H-Ky+1,W-Kx+1)
//   separable_filter_backward(grad_out, input, kx, ky, input_grad)
//       -> (grad_input or an empty tensor, grad_kx (B*C,Kx), grad_ky (B*C,Ky))
// grad_kx and grad_ky are per (image, channel) plane (the planes run in parallel); the wrapper sums them over
// channels. All tensors contiguous, on the CPU, of one floating dtype (the Python wrapper guarantees it).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

namespace {

// Rows of one plane filtered along W: tmp (H, Wo) from in (H, W).
template <typename T>
void filter_rows(const T* in, const T* kx, int64_t kxn, int64_t H, int64_t W, T* tmp) {
  const int64_t Wo = W - kxn + 1;
  for (int64_t i = 0; i < H; ++i) {
    const T* row = in + i * W;
    T* dst = tmp + i * Wo;
    for (int64_t j = 0; j < Wo; ++j) dst[j] = kx[0] * row[j];
    for (int64_t q = 1; q < kxn; ++q) {
      const T w = kx[q];
      const T* src = row + q;
      for (int64_t j = 0; j < Wo; ++j) dst[j] += w * src[j];
    }
  }
}

// Columns filtered along H: out (Ho, Wo) from tmp (H, Wo).
template <typename T>
void filter_cols(const T* tmp, const T* ky, int64_t kyn, int64_t H, int64_t Wo, T* out) {
  const int64_t Ho = H - kyn + 1;
  for (int64_t i = 0; i < Ho; ++i) {
    T* dst = out + i * Wo;
    const T* src0 = tmp + i * Wo;
    for (int64_t j = 0; j < Wo; ++j) dst[j] = ky[0] * src0[j];
    for (int64_t p = 1; p < kyn; ++p) {
      const T w = ky[p];
      const T* src = tmp + (i + p) * Wo;
      for (int64_t j = 0; j < Wo; ++j) dst[j] += w * src[j];
    }
  }
}

void check(const at::Tensor& input, const at::Tensor& kx, const at::Tensor& ky, const char* op) {
  TORCH_CHECK(input.dim() == 4 && input.is_contiguous() && input.device().is_cpu(), op,
              ": input must be a contiguous (B, C, H, W) CPU tensor");
  const int64_t B = input.size(0);
  TORCH_CHECK(kx.dim() == 2 && ky.dim() == 2 && kx.size(0) == B && ky.size(0) == B && kx.is_contiguous() &&
                  ky.is_contiguous() && kx.scalar_type() == input.scalar_type() &&
                  ky.scalar_type() == input.scalar_type(),
              op, ": kx and ky must be contiguous (B, K) tensors of the input's dtype");
  TORCH_CHECK(kx.size(1) >= 1 && ky.size(1) >= 1 && kx.size(1) <= input.size(3) && ky.size(1) <= input.size(2), op,
              ": each kernel needs 1 to the input's size taps");
}

at::Tensor separable_filter(const at::Tensor& input, const at::Tensor& kx, const at::Tensor& ky) {
  check(input, kx, ky, "torchstn::separable_filter");
  const int64_t B = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t Kx = kx.size(1), Ky = ky.size(1), Ho = H - Ky + 1, Wo = W - Kx + 1;
  at::Tensor out = at::empty({B, C, Ho, Wo}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "torchstn_separable_filter", [&] {
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    const scalar_t* wx = kx.const_data_ptr<scalar_t>();
    const scalar_t* wy = ky.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * C, 1, [&](int64_t lo, int64_t hi) {
      std::vector<scalar_t> tmp(static_cast<size_t>(H * Wo));
      for (int64_t plane = lo; plane < hi; ++plane) {
        const int64_t b = plane / C;
        filter_rows(in + plane * H * W, wx + b * Kx, Kx, H, W, tmp.data());
        filter_cols(tmp.data(), wy + b * Ky, Ky, H, Wo, o + plane * Ho * Wo);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> separable_filter_backward(const at::Tensor& grad_out,
                                                                         const at::Tensor& input, const at::Tensor& kx,
                                                                         const at::Tensor& ky, bool input_grad) {
  check(input, kx, ky, "torchstn::separable_filter_backward");
  const int64_t B = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t Kx = kx.size(1), Ky = ky.size(1), Ho = H - Ky + 1, Wo = W - Kx + 1;
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({B, C, Ho, Wo}) && grad_out.is_contiguous() &&
                  grad_out.scalar_type() == input.scalar_type() && grad_out.device().is_cpu(),
              "torchstn::separable_filter_backward: grad_out must be a contiguous (B, C, H', W') CPU tensor");
  at::Tensor gin = input_grad ? at::empty_like(input) : at::empty({0}, input.options());
  at::Tensor gkx = at::zeros({B * C, Kx}, input.options());
  at::Tensor gky = at::zeros({B * C, Ky}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "torchstn_separable_filter_backward", [&] {
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* wx = kx.const_data_ptr<scalar_t>();
    const scalar_t* wy = ky.const_data_ptr<scalar_t>();
    scalar_t* gi = input_grad ? gin.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gx = gkx.mutable_data_ptr<scalar_t>();
    scalar_t* gy = gky.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * C, 1, [&](int64_t lo, int64_t hi) {
      std::vector<scalar_t> tmp(static_cast<size_t>(H * Wo));
      std::vector<scalar_t> gtmp(static_cast<size_t>(H * Wo));
      for (int64_t plane = lo; plane < hi; ++plane) {
        const int64_t b = plane / C;
        const scalar_t* x = in + plane * H * W;
        const scalar_t* g = go + plane * Ho * Wo;
        const scalar_t* kxb = wx + b * Kx;
        const scalar_t* kyb = wy + b * Ky;
        filter_rows(x, kxb, Kx, H, W, tmp.data());  // the forward's intermediate, recomputed
        // d out / d ky[p] = sum over (i, j) of g[i, j] tmp[i + p, j]; d tmp[i + p, j] += ky[p] g[i, j].
        std::fill(gtmp.begin(), gtmp.end(), scalar_t(0));
        for (int64_t p = 0; p < Ky; ++p) {
          const scalar_t w = kyb[p];
          scalar_t acc = 0;
          for (int64_t i = 0; i < Ho; ++i) {
            const scalar_t* gr = g + i * Wo;
            const scalar_t* tr = tmp.data() + (i + p) * Wo;
            scalar_t* gt = gtmp.data() + (i + p) * Wo;
            for (int64_t j = 0; j < Wo; ++j) {
              acc += gr[j] * tr[j];
              gt[j] += w * gr[j];
            }
          }
          gy[plane * Ky + p] = acc;
        }
        // d tmp[i, j] / d kx[q] = x[i, j + q]; d x[i, j + q] += kx[q] gtmp[i, j].
        if (gi != nullptr) {
          scalar_t* gx_plane = gi + plane * H * W;
          std::fill(gx_plane, gx_plane + H * W, scalar_t(0));
        }
        for (int64_t q = 0; q < Kx; ++q) {
          const scalar_t w = kxb[q];
          scalar_t acc = 0;
          for (int64_t i = 0; i < H; ++i) {
            const scalar_t* gt = gtmp.data() + i * Wo;
            const scalar_t* xr = x + i * W + q;
            for (int64_t j = 0; j < Wo; ++j) acc += gt[j] * xr[j];
            if (gi != nullptr) {
              scalar_t* dst = gi + plane * H * W + i * W + q;
              for (int64_t j = 0; j < Wo; ++j) dst[j] += w * gt[j];
            }
          }
          gx[plane * Kx + q] = acc;
        }
      }
    });
  });
  return {gin, gkx, gky};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(torchstn, m) {
  m.def("separable_filter(Tensor input, Tensor kx, Tensor ky) -> Tensor");
  m.def(
      "separable_filter_backward(Tensor grad_out, Tensor input, Tensor kx, Tensor ky, bool input_grad) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(torchstn, CPU, m) {
  m.impl("separable_filter", &separable_filter);
  m.impl("separable_filter_backward", &separable_filter_backward);
}
