// CUDA kernels of filtered_grid_sample: one thread per output pixel, looping over channels and
// taps. The input gradient is scattered with atomicAdd into an opmath (float32 / float64)
// buffer.
//
// GPU review (issue 13; compile-checked only, not yet run on a GPU):
// - Tap weights were recomputed per channel per tap (a few flops for the tent, an exp for
//   the Gaussian; C x more weight evaluations than needed). Now, where a pixel's window has
//   at most kMaxCachedTaps taps per axis (bilinear: 2; tent up to s = 4; Gaussian up to
//   s ~ 2.7), its weights and padded indices are computed once per pixel into fully
//   unrolled register arrays (sized 2, 4 or 8 by the window) and reused for every channel;
//   the arithmetic and its order are unchanged, so results are bit-identical to the
//   recomputing loop, which stays for wider windows (strong shrinking, where the taps of
//   one pixel outnumber the channels' reuse anyway).
//   Cost (ptxas -v, sm_90, nvcc 13): float32 forward 62 -> 88 registers, backward 64 -> 124,
//   no spills; at 256 threads a block that is 2 resident blocks per SM instead of 4 (25 %
//   occupancy instead of 50 %). Capping at 3 blocks (__launch_bounds__(256, 3), 80 registers)
//   spilled 170-290 bytes (float64: 3.7 KB) and was not taken. Fewer instructions per tap
//   against fewer warps to hide the gathers' latency: benchmarks/gpu_floor.py's
//   filtered_grid_sample rows decide on the first GPU run (the recomputing version is this
//   file before issue 13).
// - The input gradient uses atomicAdd: the summation order varies between runs. Under
//   torch.use_deterministic_algorithms(True) the backward asks for it through
//   alertNotDeterministic (an error, or a warning with warn_only=True), as torch's own
//   non-deterministic CUDA kernels do; the grid gradient alone (each thread writes its own
//   pixel) is deterministic and allowed.
// - Memory: per output pixel and channel the forward reads count_x * count_y input values
//   (gathered: neighbouring threads read neighbouring columns for smooth grids, so mostly
//   coalesced and L1/L2 hits) and writes one; the floor is one read of input and grid and
//   one write of the output. Writes to out are [N, C, Ho, Wo] with q = pixel index fastest:
//   coalesced. No vector loads (gathers).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "common/cuda_helpers.cuh"
#include "ops/filtered_grid_sample.h"
#include "ops/filtered_grid_sample_math.h"

namespace latentx {
namespace {

struct Shape {
  int64_t n, c, h, w, ho, wo;
  int64_t padding, filter;
  bool align_corners;
  int64_t stretch_strides[4];  // of the given stretch over [N, Ho, Wo, 2]
};

template <typename scalar_t, typename T>
__device__ __forceinline__ bool pixel_axes(const Shape& sh, int64_t p, const scalar_t* grid,
                                           const T* stretch, GridAxis<T>& ax, GridAxis<T>& ay) {
  const T ix = grid_unnormalize(static_cast<T>(grid[2 * p]), sh.w, sh.align_corners);
  const T iy = grid_unnormalize(static_cast<T>(grid[2 * p + 1]), sh.h, sh.align_corners);
  if (!(grid_finite(ix) && grid_finite(iy))) return false;
  const T cap = T(sh.h > sh.w ? sh.h : sh.w);
  T sx, sy;
  if (stretch) {
    const int64_t q = p % (sh.ho * sh.wo);
    const int64_t* st = sh.stretch_strides;
    const T* at = stretch + (p / (sh.ho * sh.wo)) * st[0] + (q / sh.wo) * st[1] + (q % sh.wo) * st[2];
    sx = at[0];
    sy = at[st[3]];
  } else {  // estimated from the grid
    const int64_t q = p % (sh.ho * sh.wo);
    grid_stretch_at<T>(grid + 2 * (p - q), sh.ho, sh.wo, q / sh.wo, q % sh.wo, sh.h, sh.w,
                       sh.align_corners, sx, sy);
  }
  ax = grid_axis(ix, sx, sh.w, cap, sh.padding, sh.align_corners, sh.filter);
  ay = grid_axis(iy, sy, sh.h, cap, sh.padding, sh.align_corners, sh.filter);
  return true;
}

// Taps per axis whose weights a thread keeps in registers for all channels (see the header).
// Their indices (< H or < W) are kept as int, half the registers of int64 (64 -> 32 for the
// 8-tap backward's two index arrays), so the cache is used only where H and W fit an int.
constexpr int kMaxCachedTaps = 8;
constexpr int64_t kMaxCachedSide = 2147483647;

// One axis's normalised weights and padded indices for taps 0 .. K-1 (index -1: reads nothing,
// also past ax.count), as grid_sample_window computes them per channel.
template <int K, typename T>
__device__ __forceinline__ void cache_forward_taps(const GridAxis<T>& a, int64_t size,
                                                   const Shape& sh, T (&wt)[K],
                                                   int (&idx)[K]) {
#pragma unroll
  for (int k = 0; k < K; ++k) {
    T unused;
    const bool in = k < a.count;
    wt[k] = in ? grid_tap_weight(a, k, unused) * a.inv_norm : T(0);
    idx[k] = in ? static_cast<int>(grid_pad_index(a.first + k, size, sh.padding, sh.align_corners)) : -1;
  }
}

// The forward's channel loop over cached weights: the same sums, in the same order, as
// grid_sample_window (every tap that reads a pixel, zero weight or not).
template <int K, typename scalar_t, typename T>
__device__ __forceinline__ void forward_channels_cached(const Shape& sh, const GridAxis<T>& ax,
                                                        const GridAxis<T>& ay,
                                                        const scalar_t* sample,  // [C, H, W]
                                                        scalar_t* dst,           // [C] at stride plane_out
                                                        int64_t plane_out) {
  T wx[K], wy[K];
  int xi[K], yi[K];
  cache_forward_taps<K>(ax, sh.w, sh, wx, xi);
  cache_forward_taps<K>(ay, sh.h, sh, wy, yi);
  for (int64_t ch = 0; ch < sh.c; ++ch) {
    const scalar_t* plane = sample + ch * sh.h * sh.w;
    T acc = T(0);
#pragma unroll
    for (int j = 0; j < K; ++j) {
      if (yi[j] < 0) continue;
      const scalar_t* line = plane + yi[j] * sh.w;
      T racc = T(0);
#pragma unroll
      for (int i = 0; i < K; ++i) {
        if (xi[i] < 0) continue;
        racc += wx[i] * static_cast<T>(line[xi[i]]);
      }
      acc += wy[j] * racc;
    }
    dst[ch * plane_out] = static_cast<scalar_t>(acc);
  }
}

// One axis's normalised weights, their derivatives and indices for the backward (index -1:
// the tap is skipped: outside the window, zero padding, or zero weight and slope).
template <int K, typename T>
__device__ __forceinline__ void cache_backward_taps(const GridAxis<T>& a, int64_t size,
                                                    const Shape& sh, T (&wt)[K], T (&dwt)[K],
                                                    int (&idx)[K]) {
#pragma unroll
  for (int k = 0; k < K; ++k) {
    wt[k] = dwt[k] = T(0);
    idx[k] = -1;
    if (k < a.count) {
      T dw;
      const T raw = grid_tap_weight(a, k, dw);
      const int64_t at = grid_pad_index(a.first + k, size, sh.padding, sh.align_corners);
      if (!((raw == T(0) && dw == T(0)) || at < 0)) {
        idx[k] = static_cast<int>(at);
        wt[k] = raw * a.inv_norm;
        dwt[k] = (dw - raw * a.dnorm) * a.inv_norm;
      }
    }
  }
}

// The backward's channel loop over cached weights: the same sums, in the same order, as the
// recomputing loop in backward_kernel. Adds this pixel's grid gradient sums to gx, gy.
template <int K, typename scalar_t, typename T>
__device__ __forceinline__ void backward_channels_cached(
    const Shape& sh, const GridAxis<T>& ax, const GridAxis<T>& ay,
    const scalar_t* sample,   // [C, H, W] of this pixel's sample
    const scalar_t* grad_px,  // [C] at stride plane_out: this pixel's upstream gradient
    T* grad_sample,           // [C, H, W] of this sample, or null
    bool want_grid, int64_t plane_out, T& gx, T& gy) {
  T wx[K], dx[K], wy[K], dy[K];
  int xi[K], yi[K];
  cache_backward_taps<K>(ax, sh.w, sh, wx, dx, xi);
  cache_backward_taps<K>(ay, sh.h, sh, wy, dy, yi);
  for (int64_t ch = 0; ch < sh.c; ++ch) {
    const T g = static_cast<T>(grad_px[ch * plane_out]);
    const int64_t plane = ch * sh.h * sh.w;
    T bx = T(0), by = T(0);
#pragma unroll
    for (int j = 0; j < K; ++j) {
      if (yi[j] < 0) continue;
      T rw = T(0), rd = T(0);
#pragma unroll
      for (int i = 0; i < K; ++i) {
        if (xi[i] < 0) continue;
        const int64_t at = plane + yi[j] * sh.w + xi[i];
        if (want_grid) {
          const T v = static_cast<T>(sample[at]);
          rw += wx[i] * v;
          rd += dx[i] * v;
        }
        if (grad_sample) atomicAdd(grad_sample + at, g * wy[j] * wx[i]);
      }
      bx += wy[j] * rd;
      by += dy[j] * rw;
    }
    gx += g * bx;
    gy += g * by;
  }
}

template <typename scalar_t, typename T>
__global__ void forward_kernel(Shape sh,
                               const scalar_t* input,  // [N, C, H, W]
                               const scalar_t* grid,   // [N, Ho, Wo, 2]
                               const T* stretch,       // [N, Ho, Wo, 2] (strided) or null
                               scalar_t* out) {        // [N, C, Ho, Wo]
  const int64_t plane_out = sh.ho * sh.wo;
  LATENTX_CUDA_KERNEL_LOOP(p, sh.n * plane_out) {
    const int64_t s = p / plane_out, q = p % plane_out;
    scalar_t* dst = out + s * sh.c * plane_out + q;
    GridAxis<T> ax, ay;
    if (!pixel_axes(sh, p, grid, stretch, ax, ay)) {  // undefined location: 0 by definition
      for (int64_t ch = 0; ch < sh.c; ++ch) dst[ch * plane_out] = scalar_t(0);
      continue;
    }
    const scalar_t* sample = input + s * sh.c * sh.h * sh.w;
    const int64_t taps = !(sh.h <= kMaxCachedSide && sh.w <= kMaxCachedSide)
                             ? kMaxCachedTaps + 1
                             : (ax.count > ay.count ? ax.count : ay.count);
    if (taps <= 2) {
      forward_channels_cached<2>(sh, ax, ay, sample, dst, plane_out);
    } else if (taps <= 4) {
      forward_channels_cached<4>(sh, ax, ay, sample, dst, plane_out);
    } else if (taps <= kMaxCachedTaps) {
      forward_channels_cached<kMaxCachedTaps>(sh, ax, ay, sample, dst, plane_out);
    } else {
      for (int64_t ch = 0; ch < sh.c; ++ch) {
        const scalar_t* plane = sample + ch * sh.h * sh.w;
        // Every tap of the window, zero weights included (NaN / inf propagate as in grid_sample).
        const T acc = grid_sample_window(ax, ay, plane, sh.h, sh.w, sh.padding, sh.align_corners);
        dst[ch * plane_out] = static_cast<scalar_t>(acc);
      }
    }
  }
}

template <typename scalar_t, typename T>
__global__ void backward_kernel(Shape sh, T scale_x, T scale_y,
                                const scalar_t* input,    // [N, C, H, W]
                                const scalar_t* grid,     // [N, Ho, Wo, 2]
                                const T* stretch,         // [N, Ho, Wo, 2] (strided) or null
                                const scalar_t* grad,     // [N, C, Ho, Wo]
                                T* grad_input,            // [N, C, H, W] opmath, or null
                                scalar_t* grad_grid) {    // [N, Ho, Wo, 2], or null
  const int64_t plane_out = sh.ho * sh.wo;
  LATENTX_CUDA_KERNEL_LOOP(p, sh.n * plane_out) {
    const int64_t s = p / plane_out, q = p % plane_out;
    GridAxis<T> ax, ay;
    if (!pixel_axes(sh, p, grid, stretch, ax, ay)) continue;  // output 0: no gradient (zeroed)
    T gx = T(0), gy = T(0);
    const int64_t taps = !(sh.h <= kMaxCachedSide && sh.w <= kMaxCachedSide)
                             ? kMaxCachedTaps + 1
                             : (ax.count > ay.count ? ax.count : ay.count);
    if (taps <= kMaxCachedTaps) {
      const int64_t in_off = s * sh.c * sh.h * sh.w;
      const scalar_t* grad_px = grad + s * sh.c * plane_out + q;
      T* grad_sample = grad_input ? grad_input + in_off : nullptr;
      const bool want_grid = grad_grid != nullptr;
      if (taps <= 2) {
        backward_channels_cached<2>(sh, ax, ay, input + in_off, grad_px, grad_sample, want_grid,
                                    plane_out, gx, gy);
      } else if (taps <= 4) {
        backward_channels_cached<4>(sh, ax, ay, input + in_off, grad_px, grad_sample, want_grid,
                                    plane_out, gx, gy);
      } else {
        backward_channels_cached<kMaxCachedTaps>(sh, ax, ay, input + in_off, grad_px, grad_sample,
                                                 want_grid, plane_out, gx, gy);
      }
    } else {
      for (int64_t ch = 0; ch < sh.c; ++ch) {
        const T g = static_cast<T>(grad[(s * sh.c + ch) * plane_out + q]);
        const int64_t plane = (s * sh.c + ch) * sh.h * sh.w;
        T bx = T(0), by = T(0);
        for (int64_t j = 0; j < ay.count; ++j) {
          T dwy;
          const T wy_raw = grid_tap_weight(ay, j, dwy);
          const int64_t yi = grid_pad_index(ay.first + j, sh.h, sh.padding, sh.align_corners);
          if ((wy_raw == T(0) && dwy == T(0)) || yi < 0) continue;
          const T wy = wy_raw * ay.inv_norm;
          const T dy = (dwy - wy_raw * ay.dnorm) * ay.inv_norm;
          T rw = T(0), rd = T(0);
          for (int64_t i = 0; i < ax.count; ++i) {
            T dwx;
            const T wx_raw = grid_tap_weight(ax, i, dwx);
            const int64_t xi = grid_pad_index(ax.first + i, sh.w, sh.padding, sh.align_corners);
            if ((wx_raw == T(0) && dwx == T(0)) || xi < 0) continue;
            const T wx = wx_raw * ax.inv_norm;
            const int64_t at = plane + yi * sh.w + xi;
            if (grad_grid) {
              const T v = static_cast<T>(input[at]);
              rw += wx * v;
              rd += (dwx - wx_raw * ax.dnorm) * ax.inv_norm * v;
            }
            if (grad_input) atomicAdd(grad_input + at, g * wy * wx);
          }
          bx += wy * rd;
          by += dy * rw;
        }
        gx += g * bx;
        gy += g * by;
      }
    }
    if (grad_grid) {
      grad_grid[2 * p] = static_cast<scalar_t>(gx * scale_x);
      grad_grid[2 * p + 1] = static_cast<scalar_t>(gy * scale_y);
    }
  }
}

// The given footprint, or null: estimated from the grid.
template <typename T>
const T* stretch_ptr(const GridSampleArgs& a) {
  return a.stretch.defined() ? a.stretch.const_data_ptr<T>() : nullptr;
}

Shape shape_of(const GridSampleArgs& a) {
  Shape sh{a.input.size(0), a.input.size(1), a.input.size(2), a.input.size(3),
           a.grid.size(1),  a.grid.size(2),  a.padding,       a.filter,
           a.align_corners, {}};
  for (int d = 0; d < 4; ++d) sh.stretch_strides[d] = a.stretch_strides[d];
  return sh;
}

void forward_cuda(const GridSampleArgs& a, at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(a.input.device());
  const Shape sh = shape_of(a);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.input.scalar_type(), "filtered_grid_sample_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, T><<<grid_size(sh.n * sh.ho * sh.wo), kThreadsPerBlock, 0, stream>>>(
        sh, a.input.const_data_ptr<scalar_t>(), a.grid.const_data_ptr<scalar_t>(),
        stretch_ptr<T>(a), out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void backward_cuda(const GridSampleArgs& a, const at::Tensor& grad, at::Tensor& grad_input,
                   at::Tensor& grad_grid) {
  // atomicAdd into grad_input: the sum's order, hence its rounding, varies between runs.
  if (grad_input.defined()) {
    at::globalContext().alertNotDeterministic("filtered_grid_sample_backward_cuda");
  }
  const c10::cuda::CUDAGuard guard(a.input.device());
  const Shape sh = shape_of(a);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.input.scalar_type(), "filtered_grid_sample_backward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    backward_kernel<scalar_t, T><<<grid_size(sh.n * sh.ho * sh.wo), kThreadsPerBlock, 0, stream>>>(
        sh, T(grid_unnormalize_scale(sh.w, sh.align_corners)),
        T(grid_unnormalize_scale(sh.h, sh.align_corners)), a.input.const_data_ptr<scalar_t>(),
        a.grid.const_data_ptr<scalar_t>(), stretch_ptr<T>(a),
        grad.const_data_ptr<scalar_t>(),
        grad_input.defined() ? grad_input.mutable_data_ptr<T>() : nullptr,
        grad_grid.defined() ? grad_grid.mutable_data_ptr<scalar_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(latentx, CUDA, m) {
  m.impl("filtered_grid_sample", &filtered_grid_sample<forward_cuda>);
  m.impl("filtered_grid_sample_backward", &filtered_grid_sample_backward<backward_cuda>);
}

}  // namespace latentx
