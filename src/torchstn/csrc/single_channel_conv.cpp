// The classifier's first convolution on the CPU: one input channel, C output channels, an odd K x K kernel,
// stride 1, "same" zero padding (torchstn.models.common.SingleChannelConv2d).
//
// With one input channel a convolution is memory-bound in both of torch's CPU paths: the native one unfolds each
// image into K*K rows (a 9x9 kernel writes 81 copies of the image) and oneDNN's computes the input gradient
// several times slower than its forward pass. Here each image is zero-padded once into a small buffer and the
// kernel slides over it directly, a block of output channels and a strip of output columns at a time, held in
// registers, so every input value read serves several channels and no unfolded copy of the batch is made.
//
//   out[b, c, y, x] = bias[c] + sum_{i, j} w[c, i, j] in[b, y + i - P, x + j - P]      (P = K / 2, zero outside)
//
// Ops (registered as torch.ops.torchstn.*; see torchstn/ext.py):
//   single_channel_conv(input (B,1,H,W), weight (C,1,K,K), bias (C) or empty) -> (B,C,H,W)
//   single_channel_conv_backward(grad_out (B,C,H,W), input, weight, input_grad, has_bias)
//       -> (grad_input or an empty tensor, grad_weight (C,1,K,K), grad_bias (C) or an empty tensor)
// All tensors contiguous, on the CPU, of one floating dtype (the Python wrapper guarantees it).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

namespace {

constexpr int64_t kStrip = 8;  // output columns held per accumulator: one AVX2 register of float

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// kStrip lanes of T in one value (GCC/Clang vector extension): the compiler keeps these in registers and emits one
// fused multiply-add per lane group, which it does not reliably do for arrays.
template <typename T>
struct Lanes {
  typedef T type __attribute__((vector_size(kStrip * sizeof(T))));
};
template <typename T>
using V = typename Lanes<T>::type;

template <typename T>
inline V<T> load(const T* p) {
  V<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void store(T* p, V<T> v, int64_t n) {  // the first n lanes
  if (n == kStrip) {
    std::memcpy(p, &v, sizeof(v));
  } else {
    T tmp[kStrip];
    std::memcpy(tmp, &v, sizeof(v));
    std::copy(tmp, tmp + n, p);
  }
}

// One (H, W) plane copied into the interior of a padded plane: rows of Wp >= W + 2P + (strip tail) values, the
// image at row P, column P. The border is never written, so a buffer zeroed once stays a zero-padded plane for
// every image copied into it.
template <typename T>
void pad_plane(const T* src, int64_t H, int64_t W, int64_t P, int64_t Wp, T* dst) {
  for (int64_t y = 0; y < H; ++y) std::copy(src + y * W, src + (y + 1) * W, dst + (y + P) * Wp + P);
}

// out (CB channels, H, W) of one image from its padded plane; weights w (CB, K, K), bias b (CB) or null.
template <typename T, int CB>
void forward_block(const T* pad, int64_t Wp, const T* w, const T* bias, int64_t K, int64_t H, int64_t W, T* out) {
  const int64_t HW = H * W;
  for (int64_t y = 0; y < H; ++y) {
    for (int64_t x0 = 0; x0 < W; x0 += kStrip) {
      V<T> acc[CB];
      for (int c = 0; c < CB; ++c) acc[c] = V<T>{} + (bias != nullptr ? bias[c] : T(0));
      for (int64_t i = 0; i < K; ++i) {
        const T* row = pad + (y + i) * Wp + x0;
        const T* wi = w + i * K;
        for (int64_t j = 0; j < K; ++j) {
          const V<T> v = load(row + j);
          for (int c = 0; c < CB; ++c) acc[c] += wi[c * K * K + j] * v;
        }
      }
      const int64_t n = std::min(kStrip, W - x0);
      for (int c = 0; c < CB; ++c) store(out + c * HW + y * W + x0, acc[c], n);
    }
  }
}

// Channel blocks of 8, then 4, 2, 1 for what is left.
template <typename T>
void forward_image(const T* pad, int64_t Wp, const T* w, const T* bias, int64_t C, int64_t K, int64_t H, int64_t W,
                   T* out) {
  const int64_t KK = K * K, HW = H * W;
  int64_t c = 0;
  for (; c + 8 <= C; c += 8)
    forward_block<T, 8>(pad, Wp, w + c * KK, bias != nullptr ? bias + c : nullptr, K, H, W, out + c * HW);
  for (; c + 4 <= C; c += 4)
    forward_block<T, 4>(pad, Wp, w + c * KK, bias != nullptr ? bias + c : nullptr, K, H, W, out + c * HW);
  for (; c < C; ++c)
    forward_block<T, 1>(pad, Wp, w + c * KK, bias != nullptr ? bias + c : nullptr, K, H, W, out + c * HW);
}

// Weight gradient of CB channels from one image: gw (CB, K, K, kStrip) lane partial sums += over (y, x) of
// g[c, y, x] pad[y + i, x + j]. g holds the CB channels' gradient rows with zeros after column W (rows of Wg).
template <typename T, int CB>
void weight_block(const T* pad, int64_t Wp, const T* g, int64_t Wg, int64_t K, int64_t H, int64_t W, V<T>* gw) {
  const int64_t HWg = H * Wg, KK = K * K;
  for (int64_t y = 0; y < H; ++y) {
    for (int64_t x0 = 0; x0 < W; x0 += kStrip) {
      V<T> gv[CB];
      for (int c = 0; c < CB; ++c) gv[c] = load(g + c * HWg + y * Wg + x0);
      for (int64_t i = 0; i < K; ++i) {
        const T* row = pad + (y + i) * Wp + x0;
        V<T>* acc = gw + i * K;
        for (int64_t j = 0; j < K; ++j) {
          const V<T> v = load(row + j);
          for (int c = 0; c < CB; ++c) acc[c * KK + j] += gv[c] * v;
        }
      }
    }
  }
}

// Input gradient of one image: gin (H, W) = sum over c, i, j of w[c, i, j] g[c, y - i + P, x - j + P], i.e. the
// correlation of the zero-padded gradient gp (C planes of Hq x Wq, P zeros around) with the flipped kernels.
// Four strips of columns at a time.
template <typename T>
void input_image(const T* gp, int64_t Wq, int64_t Hq, const T* w, int64_t C, int64_t K, int64_t H, int64_t W,
                 T* gin) {
  constexpr int64_t kStrips = 4;
  const int64_t KK = K * K;
  for (int64_t y = 0; y < H; ++y) {
    for (int64_t x0 = 0; x0 < W; x0 += kStrip * kStrips) {
      V<T> acc[kStrips] = {};
      for (int64_t c = 0; c < C; ++c) {
        const T* plane = gp + c * Hq * Wq;
        const T* wc = w + c * KK;
        for (int64_t i = 0; i < K; ++i) {
          const T* row = plane + (y + i) * Wq + x0;
          const T* wr = wc + (K - 1 - i) * K;
          for (int64_t j = 0; j < K; ++j) {
            const T wv = wr[K - 1 - j];
            for (int64_t s = 0; s < kStrips; ++s) acc[s] += wv * load(row + s * kStrip + j);
          }
        }
      }
      for (int64_t s = 0; s < kStrips; ++s) {
        const int64_t x = x0 + s * kStrip;
        if (x >= W) break;
        store(gin + y * W + x, acc[s], std::min(kStrip, W - x));
      }
    }
  }
}

void check(const at::Tensor& input, const at::Tensor& weight, const char* op) {
  TORCH_CHECK(input.dim() == 4 && input.size(1) == 1 && input.is_contiguous() && input.device().is_cpu(), op,
              ": input must be a contiguous (B, 1, H, W) CPU tensor");
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == 1 && weight.size(2) == weight.size(3) &&
                  weight.size(2) % 2 == 1 && weight.is_contiguous() && weight.scalar_type() == input.scalar_type(),
              op, ": weight must be a contiguous (C, 1, K, K) tensor of the input's dtype with K odd");
}

// Padded-plane geometry: P zero rows and columns before, enough after for the last strip's reads.
struct Geometry {
  int64_t H, W, K, P, Wp, Hp;
  Geometry(int64_t h, int64_t w, int64_t k, int64_t strips)
      : H(h), W(w), K(k), P(k / 2), Wp(round_up(w, kStrip * strips) + k - 1), Hp(h + k - 1) {}
};

at::Tensor single_channel_conv(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias) {
  check(input, weight, "torchstn::single_channel_conv");
  const int64_t B = input.size(0), C = weight.size(0), H = input.size(2), W = input.size(3), K = weight.size(2);
  const bool has_bias = bias.numel() > 0;
  TORCH_CHECK(!has_bias || (bias.dim() == 1 && bias.size(0) == C && bias.is_contiguous() &&
                            bias.scalar_type() == input.scalar_type()),
              "torchstn::single_channel_conv: bias must be empty or a contiguous (C) tensor of the input's dtype");
  at::Tensor out = at::empty({B, C, H, W}, input.options());
  const Geometry geo(H, W, K, 1);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "torchstn_single_channel_conv", [&] {
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    const scalar_t* bp = has_bias ? bias.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
      std::vector<scalar_t> pad(static_cast<size_t>(geo.Hp * geo.Wp), scalar_t(0));  // border: zero for good
      for (int64_t b = lo; b < hi; ++b) {
        pad_plane(in + b * H * W, H, W, geo.P, geo.Wp, pad.data());
        forward_image(pad.data(), geo.Wp, w, bp, C, K, H, W, o + b * C * H * W);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> single_channel_conv_backward(const at::Tensor& grad_out,
                                                                            const at::Tensor& input,
                                                                            const at::Tensor& weight, bool input_grad,
                                                                            bool has_bias) {
  check(input, weight, "torchstn::single_channel_conv_backward");
  const int64_t B = input.size(0), C = weight.size(0), H = input.size(2), W = input.size(3), K = weight.size(2);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({B, C, H, W}) && grad_out.is_contiguous() &&
                  grad_out.scalar_type() == input.scalar_type() && grad_out.device().is_cpu(),
              "torchstn::single_channel_conv_backward: grad_out must be a contiguous (B, C, H, W) CPU tensor");
  at::Tensor gin = input_grad ? at::empty_like(input) : at::empty({0}, input.options());
  at::Tensor gw = at::empty_like(weight);
  at::Tensor gb = has_bias ? at::empty({C}, input.options()) : at::empty({0}, input.options());
  const Geometry geo(H, W, K, 1);                 // the input's padded plane, for the weight gradient
  const int64_t Wg = round_up(W, kStrip);         // gradient rows with zeros after column W
  const int64_t KK = K * K;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "torchstn_single_channel_conv_backward", [&] {
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    // Per-thread lane partial sums of the weight gradient (C, K, K, kStrip) and the bias's (C), summed at the end
    // in thread order (parallel_for splits [0, B) the same way for the same thread count, so the sum is
    // deterministic at a given thread count).
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(B, at::get_num_threads()));
    std::vector<V<scalar_t>> partial(static_cast<size_t>(chunks * C * KK), V<scalar_t>{});
    std::vector<scalar_t> partial_b(static_cast<size_t>(chunks * C), scalar_t(0));
    const int64_t per = (B + chunks - 1) / chunks;
    at::parallel_for(0, chunks, 1, [&](int64_t clo, int64_t chi) {
      std::vector<scalar_t> pad(static_cast<size_t>(geo.Hp * geo.Wp), scalar_t(0));  // border: zero for good
      std::vector<scalar_t> grow(static_cast<size_t>(C * H * Wg), scalar_t(0));
      const Geometry gq(H, W, K, 4);  // the gradient's padded planes, for the input gradient
      std::vector<scalar_t> gpad(input_grad ? static_cast<size_t>(C * gq.Hp * gq.Wp) : 0, scalar_t(0));
      for (int64_t chunk = clo; chunk < chi; ++chunk) {
        V<scalar_t>* acc = partial.data() + chunk * C * KK;
        scalar_t* accb = partial_b.data() + chunk * C;
        for (int64_t b = chunk * per; b < std::min(B, (chunk + 1) * per); ++b) {
          const scalar_t* g = go + b * C * H * W;
          pad_plane(in + b * H * W, H, W, geo.P, geo.Wp, pad.data());
          for (int64_t c = 0; c < C; ++c) {
            scalar_t sb = 0;
            for (int64_t y = 0; y < H; ++y) {
              const scalar_t* src = g + (c * H + y) * W;
              std::copy(src, src + W, grow.data() + (c * H + y) * Wg);
              for (int64_t x = 0; x < W; ++x) sb += src[x];
            }
            accb[c] += sb;
          }
          int64_t c = 0;
          for (; c + 8 <= C; c += 8)
            weight_block<scalar_t, 8>(pad.data(), geo.Wp, grow.data() + c * H * Wg, Wg, K, H, W,
                                      acc + c * KK);
          for (; c < C; ++c)
            weight_block<scalar_t, 1>(pad.data(), geo.Wp, grow.data() + c * H * Wg, Wg, K, H, W,
                                      acc + c * KK);
          if (input_grad) {
            for (int64_t cc = 0; cc < C; ++cc)
              pad_plane(g + cc * H * W, H, W, gq.P, gq.Wp, gpad.data() + cc * gq.Hp * gq.Wp);
            input_image(gpad.data(), gq.Wp, gq.Hp, w, C, K, H, W, gin.mutable_data_ptr<scalar_t>() + b * H * W);
          }
        }
      }
    });
    scalar_t* gwp = gw.mutable_data_ptr<scalar_t>();
    for (int64_t k = 0; k < C * KK; ++k) {
      scalar_t s = 0;
      for (int64_t chunk = 0; chunk < chunks; ++chunk)
        for (int64_t l = 0; l < kStrip; ++l) s += partial[chunk * C * KK + k][l];
      gwp[k] = s;
    }
    if (has_bias) {
      scalar_t* gbp = gb.mutable_data_ptr<scalar_t>();
      for (int64_t c = 0; c < C; ++c) {
        scalar_t s = 0;
        for (int64_t chunk = 0; chunk < chunks; ++chunk) s += partial_b[chunk * C + c];
        gbp[c] = s;
      }
    }
  });
  return {gin, gw, gb};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(torchstn, m) {
  m.def("single_channel_conv(Tensor input, Tensor weight, Tensor bias) -> Tensor");
  m.def(
      "single_channel_conv_backward(Tensor grad_out, Tensor input, Tensor weight, bool input_grad, bool has_bias) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(torchstn, CPU, m) {
  m.impl("single_channel_conv", &single_channel_conv);
  m.impl("single_channel_conv_backward", &single_channel_conv_backward);
}
