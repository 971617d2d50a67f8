// CPU kernels of filtered_grid_sample. Forward: parallel over (sample, output row); the tap
// weights and indices of each output pixel are computed once and reused by every channel.
// Backward: parallel over samples (each owns its input-gradient planes: no races), the same
// per-pixel taps, channels inside.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "ops/filtered_grid_sample.h"
#include "ops/filtered_grid_sample_math.h"

namespace latentx {
namespace {

// Output values (each a sum over at least 4 taps) per parallel chunk.
constexpr int64_t kGrainValues = 4096;

// Per-thread tap buffers of one axis: normalised weights w^, their derivatives dw^/dcoord,
// and the padded indices, for the taps that matter.
template <typename T>
struct TapBuffer {
  std::vector<T> w, dw;
  std::vector<int64_t> index;
  int64_t count = 0;
  bool contiguous = false;  // index[i] == index[0] + i: the taps are one run of pixels
  explicit TapBuffer(int64_t capacity) : w(capacity), dw(capacity), index(capacity) {}

  // Taps with a non-zero weight that read a pixel (zero padding's reads are 0): forward.
  // `a` comes without its normalisation (grid_axis(..., normalize=false)); the sum of the
  // weights (over every tap, padded ones included) is taken here in the same pass.
  void fill_forward(const GridAxis<T>& a, int64_t size, int64_t padding, bool align) {
    count = 0;
    contiguous = true;
    T sum = T(0);
    for (int64_t k = 0; k < a.count; ++k) {
      T unused;
      const T wk = grid_tap_weight(a, k, unused);
      sum += wk;
      const int64_t i = grid_pad_index(a.first + k, size, padding, align);
      if (wk == T(0) || i < 0) continue;
      contiguous = contiguous && (count == 0 || i == index[count - 1] + 1);
      w[count] = wk;
      index[count++] = i;
    }
    if (a.s > T(1)) {  // normalise; with s = 1 the bilinear weights are left as they are
      const T inv = T(1) / sum;
      for (int64_t k = 0; k < count; ++k) w[k] *= inv;
    }
  }

  // Taps with a non-zero weight or derivative that read a pixel: backward.
  void fill_backward(const GridAxis<T>& a, int64_t size, int64_t padding, bool align) {
    count = 0;
    for (int64_t k = 0; k < a.count; ++k) {
      T dwk;
      const T wk = grid_tap_weight(a, k, dwk);
      const int64_t i = grid_pad_index(a.first + k, size, padding, align);
      if ((wk == T(0) && dwk == T(0)) || i < 0) continue;
      w[count] = wk * a.inv_norm;
      dw[count] = (dwk - wk * a.dnorm) * a.inv_norm;
      index[count++] = i;
    }
  }
};

template <typename scalar_t>
void forward_impl(const GridSampleArgs& a, at::Tensor& out) {
  using T = at::opmath_type<scalar_t>;
  const int64_t n = a.input.size(0), c = a.input.size(1), h = a.input.size(2), w = a.input.size(3);
  const int64_t ho = a.grid.size(1), wo = a.grid.size(2), plane_out = ho * wo;
  const int64_t cap = std::max(h, w), max_taps = grid_max_taps(cap);
  const scalar_t* in = a.input.const_data_ptr<scalar_t>();
  const scalar_t* grid = a.grid.const_data_ptr<scalar_t>();
  const T* stretch = a.stretch.const_data_ptr<T>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  // Chunks of at least ~kGrainValues output values: small calls stay on one thread.
  const int64_t grain = std::max<int64_t>(1, kGrainValues / std::max<int64_t>(1, wo * c));
  at::parallel_for(0, n * ho, grain, [&](int64_t begin, int64_t end) {
    TapBuffer<T> tx(max_taps), ty(max_taps);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t s = row / ho, r = row % ho;
      for (int64_t col = 0; col < wo; ++col) {
        const int64_t p = row * wo + col;  // pixel index in [N, Ho, Wo]
        scalar_t* dst = o + s * c * plane_out + r * wo + col;
        const T ix = grid_unnormalize(static_cast<T>(grid[2 * p]), w, a.align_corners);
        const T iy = grid_unnormalize(static_cast<T>(grid[2 * p + 1]), h, a.align_corners);
        if (!(grid_finite(ix) && grid_finite(iy))) {  // undefined location: 0 by definition
          for (int64_t ch = 0; ch < c; ++ch) dst[ch * plane_out] = scalar_t(0);
          continue;
        }
        tx.fill_forward(grid_axis(ix, stretch[2 * p], w, T(cap), a.padding, a.align_corners, a.filter, false),
                        w, a.padding, a.align_corners);
        ty.fill_forward(grid_axis(iy, stretch[2 * p + 1], h, T(cap), a.padding, a.align_corners, a.filter, false),
                        h, a.padding, a.align_corners);
        const T* wx = tx.w.data();
        const int64_t nx = tx.count;
        for (int64_t ch = 0; ch < c; ++ch) {
          const scalar_t* plane = in + (s * c + ch) * h * w;
          T acc = T(0);
          for (int64_t j = 0; j < ty.count; ++j) {
            const scalar_t* line = plane + ty.index[j] * w;
            T racc = T(0);
            if (tx.contiguous) {  // the common case inside the image: one run of pixels
              const scalar_t* run = line + (nx > 0 ? tx.index[0] : 0);
              for (int64_t i = 0; i < nx; ++i) racc += wx[i] * static_cast<T>(run[i]);
            } else {
              for (int64_t i = 0; i < nx; ++i) racc += wx[i] * static_cast<T>(line[tx.index[i]]);
            }
            acc += ty.w[j] * racc;
          }
          dst[ch * plane_out] = static_cast<scalar_t>(acc);
        }
      }
    }
  });
}

template <typename scalar_t>
void backward_impl(const GridSampleArgs& a, const at::Tensor& grad, at::Tensor& grad_input,
                   at::Tensor& grad_grid) {
  using T = at::opmath_type<scalar_t>;
  const int64_t n = a.input.size(0), c = a.input.size(1), h = a.input.size(2), w = a.input.size(3);
  const int64_t ho = a.grid.size(1), wo = a.grid.size(2), plane_out = ho * wo;
  const int64_t cap = std::max(h, w), max_taps = grid_max_taps(cap);
  const T scale_x = T(grid_unnormalize_scale(w, a.align_corners));
  const T scale_y = T(grid_unnormalize_scale(h, a.align_corners));
  const scalar_t* in = a.input.const_data_ptr<scalar_t>();
  const scalar_t* grid = a.grid.const_data_ptr<scalar_t>();
  const T* stretch = a.stretch.const_data_ptr<T>();
  const scalar_t* go = grad.const_data_ptr<scalar_t>();
  T* gin = grad_input.defined() ? grad_input.mutable_data_ptr<T>() : nullptr;
  scalar_t* gg = grad_grid.defined() ? grad_grid.mutable_data_ptr<scalar_t>() : nullptr;
  const int64_t grain = std::max<int64_t>(1, kGrainValues / std::max<int64_t>(1, plane_out * c));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    TapBuffer<T> tx(max_taps), ty(max_taps);
    for (int64_t s = begin; s < end; ++s) {
      for (int64_t q = 0; q < plane_out; ++q) {
        const int64_t p = s * plane_out + q;  // pixel index in [N, Ho, Wo]
        const T ix = grid_unnormalize(static_cast<T>(grid[2 * p]), w, a.align_corners);
        const T iy = grid_unnormalize(static_cast<T>(grid[2 * p + 1]), h, a.align_corners);
        if (!(grid_finite(ix) && grid_finite(iy))) continue;  // output 0: no gradient (zeroed)
        tx.fill_backward(grid_axis(ix, stretch[2 * p], w, T(cap), a.padding, a.align_corners, a.filter),
                         w, a.padding, a.align_corners);
        ty.fill_backward(grid_axis(iy, stretch[2 * p + 1], h, T(cap), a.padding, a.align_corners, a.filter),
                         h, a.padding, a.align_corners);
        T gx = T(0), gy = T(0);
        for (int64_t ch = 0; ch < c; ++ch) {
          const T g = static_cast<T>(go[(s * c + ch) * plane_out + q]);
          if (gg) {  // d out / d ix = sum_j w^y_j sum_i dw^x_i v_ij, and likewise for iy
            const scalar_t* plane = in + (s * c + ch) * h * w;
            T bx = T(0), by = T(0);
            for (int64_t j = 0; j < ty.count; ++j) {
              const scalar_t* line = plane + ty.index[j] * w;
              T rw = T(0), rd = T(0);
              for (int64_t i = 0; i < tx.count; ++i) {
                const T v = static_cast<T>(line[tx.index[i]]);
                rw += tx.w[i] * v;
                rd += tx.dw[i] * v;
              }
              bx += ty.w[j] * rd;
              by += ty.dw[j] * rw;
            }
            gx += g * bx;
            gy += g * by;
          }
          if (gin) {
            T* plane = gin + (s * c + ch) * h * w;
            for (int64_t j = 0; j < ty.count; ++j) {
              T* line = plane + ty.index[j] * w;
              const T gj = g * ty.w[j];
              for (int64_t i = 0; i < tx.count; ++i) line[tx.index[i]] += gj * tx.w[i];
            }
          }
        }
        if (gg) {
          gg[2 * p] = static_cast<scalar_t>(gx * scale_x);
          gg[2 * p + 1] = static_cast<scalar_t>(gy * scale_y);
        }
      }
    }
  });
}

void forward_cpu(const GridSampleArgs& a, at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.input.scalar_type(),
                                  "filtered_grid_sample_cpu", [&] { forward_impl<scalar_t>(a, out); });
}

void backward_cpu(const GridSampleArgs& a, const at::Tensor& grad, at::Tensor& grad_input,
                  at::Tensor& grad_grid) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.input.scalar_type(),
                                  "filtered_grid_sample_backward_cpu",
                                  [&] { backward_impl<scalar_t>(a, grad, grad_input, grad_grid); });
}

}  // namespace

TORCH_LIBRARY_IMPL(latentx, CPU, m) {
  m.impl("filtered_grid_sample", &filtered_grid_sample<forward_cpu>);
  m.impl("filtered_grid_sample_backward", &filtered_grid_sample_backward<backward_cpu>);
}

}  // namespace latentx
