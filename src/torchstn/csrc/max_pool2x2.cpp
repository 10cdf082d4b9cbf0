// 2x2 max pooling with stride 2 on the CPU (torchstn.models.common.MaxPool2x2): the pooling after each convolution
// of the MNIST classifiers.
//
// ATen's CPU max_pool2d on an NCHW tensor handles any window one output at a time and stores an int64 index per
// output; at the classifiers' shapes it moves about 0.7 GB/s, a tenth of the CNN's step on RTS. Here each pair of
// input rows is split into even and odd columns with vector shuffles and eight outputs are pooled at once, with
// the window position of the maximum kept in one byte. The choice is ATen's, element for element: the window is
// read row by row, a value replaces the running maximum when it is larger or NaN, so the result and the position
// the gradient goes to are the same (the tests compare them bit for bit, NaN and infinity included). Sizes are
// floored (an odd last row or column is dropped), as nn.MaxPool2d(2) does.
//
// Ops (registered as torch.ops.torchstn.*; see torchstn/ext.py):
//   max_pool2x2(input (B,C,H,W)) -> (out (B,C,H/2,W/2), where (B,C,H/2,W/2) uint8: 0..3, the window position)
//   max_pool2x2_backward(grad_out (B,C,H/2,W/2), where, H, W) -> grad_input (B,C,H,W), zero off the maxima
// All tensors contiguous, on the CPU; input and gradients float32 or float64 (the Python wrapper guarantees it).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>

namespace {

constexpr int64_t kLanes = 8;

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(kLanes * sizeof(float))));
  typedef int32_t mask __attribute__((vector_size(kLanes * sizeof(int32_t))));
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(kLanes * sizeof(double))));
  typedef int64_t mask __attribute__((vector_size(kLanes * sizeof(int64_t))));
};

// The ATen rule for one candidate: take it when larger than the running maximum or NaN.
template <typename T>
inline void consider(T v, uint8_t k, T& m, uint8_t& at) {
  if (v > m || v != v) {
    m = v;
    at = k;
  }
}

// One output row of one plane: rows r0 and r1 of the input, Wo outputs.
template <typename T>
void pool_row(const T* r0, const T* r1, int64_t Wo, T* out, uint8_t* where) {
  using V = typename Vec<T>::type;
  using M = typename Vec<T>::mask;
  const M even = {0, 2, 4, 6, 8, 10, 12, 14};
  const M odd = {1, 3, 5, 7, 9, 11, 13, 15};
  int64_t x = 0;
  for (; x + kLanes <= Wo; x += kLanes) {
    V p0, p1, q0, q1;
    std::memcpy(&p0, r0 + 2 * x, sizeof(V));
    std::memcpy(&p1, r0 + 2 * x + kLanes, sizeof(V));
    std::memcpy(&q0, r1 + 2 * x, sizeof(V));
    std::memcpy(&q1, r1 + 2 * x + kLanes, sizeof(V));
    const V a = __builtin_shuffle(p0, p1, even), b = __builtin_shuffle(p0, p1, odd);
    const V c = __builtin_shuffle(q0, q1, even), d = __builtin_shuffle(q0, q1, odd);
    V m = a;  // a replaces -inf unless it is -inf itself, and then the maximum is -inf at position 0 either way
    M at = M{} + 0;
    M take = (b > m) | (b != b);
    m = take ? b : m;
    at = take ? M{} + 1 : at;
    take = (c > m) | (c != c);
    m = take ? c : m;
    at = take ? M{} + 2 : at;
    take = (d > m) | (d != d);
    m = take ? d : m;
    at = take ? M{} + 3 : at;
    std::memcpy(out + x, &m, sizeof(V));
    for (int64_t l = 0; l < kLanes; ++l) where[x + l] = static_cast<uint8_t>(at[l]);
  }
  for (; x < Wo; ++x) {
    T m = r0[2 * x];
    uint8_t at = 0;
    consider(r0[2 * x + 1], 1, m, at);
    consider(r1[2 * x], 2, m, at);
    consider(r1[2 * x + 1], 3, m, at);
    out[x] = m;
    where[x] = at;
  }
}

// Eight outputs' gradients back to their 2x2 windows: 16 values of each of the two input rows.
template <typename T>
inline void unpool_lanes(const T* g, const uint8_t* where, T* d0, T* d1) {
  using V = typename Vec<T>::type;
  using M = typename Vec<T>::mask;
  const M lo = {0, 8, 1, 9, 2, 10, 3, 11};
  const M hi = {4, 12, 5, 13, 6, 14, 7, 15};
  V v;
  std::memcpy(&v, g, sizeof(V));
  M k;
  for (int64_t l = 0; l < kLanes; ++l) k[l] = where[l];
  const V zero = V{} + T(0);
  const V e0 = k == 0 ? v : zero, o0 = k == 1 ? v : zero, e1 = k == 2 ? v : zero, o1 = k == 3 ? v : zero;
  const V a = __builtin_shuffle(e0, o0, lo), b = __builtin_shuffle(e0, o0, hi);
  const V c = __builtin_shuffle(e1, o1, lo), d = __builtin_shuffle(e1, o1, hi);
  std::memcpy(d0, &a, sizeof(V));
  std::memcpy(d0 + kLanes, &b, sizeof(V));
  std::memcpy(d1, &c, sizeof(V));
  std::memcpy(d1 + kLanes, &d, sizeof(V));
}

void check_input(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == 4 && t.is_contiguous() && t.device().is_cpu() &&
                  (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble),
              op, ": ", name, " must be a contiguous (B, C, H, W) float32 or float64 CPU tensor");
}

std::tuple<at::Tensor, at::Tensor> max_pool2x2(const at::Tensor& input) {
  check_input(input, "torchstn::max_pool2x2", "input");
  const int64_t B = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t Ho = H / 2, Wo = W / 2;
  TORCH_CHECK(Ho > 0 && Wo > 0, "torchstn::max_pool2x2: input must be at least 2x2, got ", H, "x", W);
  at::Tensor out = at::empty({B, C, Ho, Wo}, input.options());
  at::Tensor where = at::empty({B, C, Ho, Wo}, input.options().dtype(at::kByte));
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "torchstn_max_pool2x2", [&] {
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    uint8_t* w = where.mutable_data_ptr<uint8_t>();
    at::parallel_for(0, B * C, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t plane = lo; plane < hi; ++plane) {
        const scalar_t* src = in + plane * H * W;
        for (int64_t y = 0; y < Ho; ++y)
          pool_row(src + 2 * y * W, src + (2 * y + 1) * W, Wo, o + (plane * Ho + y) * Wo, w + (plane * Ho + y) * Wo);
      }
    });
  });
  return {out, where};
}

at::Tensor max_pool2x2_backward(const at::Tensor& grad_out, const at::Tensor& where, int64_t H, int64_t W) {
  check_input(grad_out, "torchstn::max_pool2x2_backward", "grad_out");
  const int64_t B = grad_out.size(0), C = grad_out.size(1), Ho = grad_out.size(2), Wo = grad_out.size(3);
  TORCH_CHECK(H / 2 == Ho && W / 2 == Wo, "torchstn::max_pool2x2_backward: an (H, W) input does not pool to (",
              Ho, ", ", Wo, ")");
  TORCH_CHECK(where.sizes() == grad_out.sizes() && where.scalar_type() == at::kByte && where.is_contiguous(),
              "torchstn::max_pool2x2_backward: where must be a contiguous uint8 tensor of grad_out's size");
  at::Tensor gin = at::empty({B, C, H, W}, grad_out.options());
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "torchstn_max_pool2x2_backward", [&] {
    const scalar_t* g = grad_out.const_data_ptr<scalar_t>();
    const uint8_t* wh = where.const_data_ptr<uint8_t>();
    scalar_t* gi = gin.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * C, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t plane = lo; plane < hi; ++plane) {
        scalar_t* dst = gi + plane * H * W;
        for (int64_t y = 0; y < Ho; ++y) {
          const scalar_t* gr = g + (plane * Ho + y) * Wo;
          const uint8_t* wr = wh + (plane * Ho + y) * Wo;
          scalar_t* d0 = dst + 2 * y * W;
          scalar_t* d1 = d0 + W;
          int64_t x = 0;
          for (; x + kLanes <= Wo; x += kLanes) unpool_lanes(gr + x, wr + x, d0 + 2 * x, d1 + 2 * x);
          for (; x < Wo; ++x) {
            const scalar_t v = gr[x];
            const uint8_t k = wr[x];
            d0[2 * x] = k == 0 ? v : scalar_t(0);
            d0[2 * x + 1] = k == 1 ? v : scalar_t(0);
            d1[2 * x] = k == 2 ? v : scalar_t(0);
            d1[2 * x + 1] = k == 3 ? v : scalar_t(0);
          }
          if (W % 2 == 1) {
            d0[W - 1] = scalar_t(0);
            d1[W - 1] = scalar_t(0);
          }
        }
        if (H % 2 == 1) std::memset(dst + (H - 1) * W, 0, sizeof(scalar_t) * W);
      }
    });
  });
  return gin;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(torchstn, m) {
  m.def("max_pool2x2(Tensor input) -> (Tensor, Tensor)");
  m.def("max_pool2x2_backward(Tensor grad_out, Tensor where, int H, int W) -> Tensor");
}

TORCH_LIBRARY_IMPL(torchstn, CPU, m) {
  m.impl("max_pool2x2", &max_pool2x2);
  m.impl("max_pool2x2_backward", &max_pool2x2_backward);
}
