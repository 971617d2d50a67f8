// CPU kernels of filtered_grid_sample. Forward: parallel over (sample, output row); backward:
// parallel over samples (each owns its input-gradient planes: no races).
//
// Each output row is first planned kLanes pixels at a time (RowPlan, plan_row): per axis, each
// pixel's taps and their normalised weights (and, backward, their derivatives), shared by
// every channel. The channel loops are then dense: along x a fixed-width window of kLanes or
// 2 kLanes pixels (zero weights outside the taps), along y the rows with a weight. A pixel
// across an edge folds its taps onto the pixels the padding reads (AxisRun), and one with more
// taps than the plan holds (a long footprint) computes them alone (AxisRun, grid_axis). The
// fixed-width loops are explicit SIMD (Simd), compiled once per instruction set
// (LATENTX_CPU_MULTIVERSION); longer runs take plain loops. Without a given footprint, each
// output row's is estimated from the grid (row_stretch), as reference.grid_stretch does.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/cpu_helpers.h"
#include "ops/filtered_grid_sample.h"
#include "ops/filtered_grid_sample_math.h"

#if defined(__GNUC__)
// The helpers of the multiversioned loops must be inlined into each clone to be compiled for
// its instruction set.
#define LATENTX_INLINE inline __attribute__((always_inline))
#else
#define LATENTX_INLINE inline
#endif

namespace latentx {
namespace {

// Output values (each a sum over at least 4 taps) per parallel chunk.
constexpr int64_t kGrainValues = 4096;
// Lanes of the vectors (one AVX2 vector of float): pixels per block of the x window
// (windows of 1 or 2 blocks), taps per block of weights, output columns per block of the
// footprint's estimate.
constexpr int64_t kLanes = 8;
// Zero weights kept on both sides of a run, so that a window holding it can read them.
constexpr int64_t kPad = 2 * kLanes;

constexpr int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// kLanes values of T as one GCC/Clang vector (vector extensions): explicit SIMD that each
// LATENTX_CPU_MULTIVERSION clone compiles for its instruction set (float: one AVX2 register,
// half an AVX-512 one, two SSE ones). The compiler does not vectorise these short loops
// reliably on its own.
template <typename T>
struct Simd {
  using I = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  typedef T V __attribute__((vector_size(kLanes * sizeof(T))));
  typedef I M __attribute__((vector_size(kLanes * sizeof(T))));  // comparison masks

  static LATENTX_INLINE V splat(T x) { return V{} + x; }
  static LATENTX_INLINE V iota() {
    V v;
    for (int64_t l = 0; l < kLanes; ++l) v[l] = T(l);
    return v;
  }
  static LATENTX_INLINE V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  template <typename S>  // from another (storage) type: half, bfloat16
  static LATENTX_INLINE V load(const S* p) {
    V v;
    for (int64_t l = 0; l < kLanes; ++l) v[l] = static_cast<T>(p[l]);
    return v;
  }
  static LATENTX_INLINE void store(T* p, V v) { std::memcpy(p, &v, sizeof v); }
  static LATENTX_INLINE V select(M m, V a, V b) { return m ? a : b; }
  // Sum of the lanes, pairwise (lane l plus lane l + 4, then + 2, + 1), in registers.
  static LATENTX_INLINE T sum(V v) {
    static_assert(kLanes == 8, "the shuffles below are written for 8 lanes");
    v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 4, 5, 6, 7);
    v += __builtin_shufflevector(v, v, 2, 3, 2, 3, 2, 3, 2, 3);
    v += __builtin_shufflevector(v, v, 1, 1, 1, 1, 1, 1, 1, 1);
    return v[0];
  }
  // The sums of the lanes of a0 .. a3 in lanes 0 .. 3, reduced together (a transpose-add).
  static LATENTX_INLINE V sum4(V a0, V a1, V a2, V a3) {
    const V p = __builtin_shufflevector(a0, a1, 0, 1, 2, 3, 8, 9, 10, 11) +
                __builtin_shufflevector(a0, a1, 4, 5, 6, 7, 12, 13, 14, 15);
    const V q = __builtin_shufflevector(a2, a3, 0, 1, 2, 3, 8, 9, 10, 11) +
                __builtin_shufflevector(a2, a3, 4, 5, 6, 7, 12, 13, 14, 15);
    const V r = __builtin_shufflevector(p, q, 0, 1, 8, 9, 4, 5, 12, 13) +
                __builtin_shufflevector(p, q, 2, 3, 10, 11, 6, 7, 14, 15);
    return __builtin_shufflevector(r, r, 0, 4, 2, 6, 0, 0, 0, 0) +
           __builtin_shufflevector(r, r, 1, 5, 3, 7, 1, 1, 1, 1);
  }
  // Bit l set where lane l of the comparison mask m is.
  static LATENTX_INLINE uint32_t bits(M m) {
    M b = m & M{1, 2, 4, 8, 16, 32, 64, 128};
    b |= __builtin_shufflevector(b, b, 4, 5, 6, 7, 0, 1, 2, 3);
    b |= __builtin_shufflevector(b, b, 2, 3, 0, 1, 0, 1, 0, 1);
    b |= __builtin_shufflevector(b, b, 1, 0, 0, 0, 0, 0, 0, 0);
    return static_cast<uint32_t>(b[0]);
  }
  // The largest lane.
  static LATENTX_INLINE T max(V v) {
    v = select(v > __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3), v,
               __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3));
    v = select(v > __builtin_shufflevector(v, v, 2, 3, 0, 1, 2, 3, 0, 1), v,
               __builtin_shufflevector(v, v, 2, 3, 0, 1, 2, 3, 0, 1));
    return v[0] > v[1] ? v[0] : v[1];
  }
  // Values within the integer type's range, truncated to it (integers held as T: exact).
  static LATENTX_INLINE M to_int(V x) { return __builtin_convertvector(x, M); }
  // floor and ceil of values within the integer type's range (input pixel coordinates).
  static LATENTX_INLINE V floor(V x) {
    const V t = __builtin_convertvector(to_int(x), V);
    return select(t > x, t - T(1), t);
  }
  static LATENTX_INLINE V ceil(V x) {
    const V t = __builtin_convertvector(to_int(x), V);
    return select(t < x, t + T(1), t);
  }
};

// The taps of one axis of one output pixel, as a run of pixels start .. start + len - 1 with
// their normalised weights w^ and (backward) derivatives dw^/dcoord; taps with neither (or
// that read no pixel: zero padding) are left out, so the first and last weights are non-zero.
// w[-kPad .. 0) and w[len .. len + kPad) are 0 (likewise dw). Per-thread buffers.
template <typename T>
class AxisRun {
 public:
  int64_t start = 0, len = 0;
  const T* w = nullptr;
  const T* dw = nullptr;

  // max_taps: the most taps of a pixel computed alone (grid_max_taps); the buffers also hold
  // a row plan's 2 kLanes (fill from weights).
  explicit AxisRun(int64_t max_taps)
      : stride_(kPad + round_up(std::max(max_taps, 2 * kLanes), kLanes) + kPad),
        raw_(2 * stride_, T(0)), fold_(2 * stride_, T(0)), read_(stride_) {}

  // `a` comes without its normalisation (grid_axis(..., normalize=false)): the sums of the
  // weights (over every tap, padded ones included) are taken here, as the weights are made.
  template <bool kGrad>
  LATENTX_INLINE void fill(const GridAxis<T>& a, int64_t size, int64_t padding, bool align) {
    using S = Simd<T>;
    using V = typename S::V;
    T* rw = raw_.data() + kPad;
    T* rdw = rw + stride_;
    const int64_t end = round_up(a.count, kLanes);
    V sum = S::splat(T(0)), dsum = sum;
    for (int64_t b = 0; b < end; b += kLanes) {
      V w, dw;
      tap_block<kGrad>(a, b, w, dw);
      S::store(rw + b, w);
      sum += w;
      if (kGrad) {
        S::store(rdw + b, dw);
        dsum += dw;
      }
    }
    if (a.s > T(1)) {  // normalise; with s = 1 the bilinear weights are left as they are
      const T total = S::sum(sum);
      const V inv = S::splat(T(1) / total);
      const V dnorm = S::splat(kGrad ? S::sum(dsum) / total : T(0));
      for (int64_t b = 0; b < end; b += kLanes) {
        const V w = S::load(rw + b);
        if (kGrad) S::store(rdw + b, (S::load(rdw + b) - w * dnorm) * inv);  // (w' - w sum(w')/W) / W
        S::store(rw + b, w * inv);
      }
    }
    place<kGrad>(a.first, end, size, padding, align);
  }

  // Planned (normalised) weights of taps first .. first + count - 1, count a multiple of
  // kLanes, and with kGrad their derivatives (RowPlan).
  template <bool kGrad>
  LATENTX_INLINE void fill(const T* weights, const T* dweights, int64_t first, int64_t count,
                           int64_t size, int64_t padding, bool align) {
    std::memcpy(raw_.data() + kPad, weights, count * sizeof(T));
    if (kGrad) std::memcpy(raw_.data() + kPad + stride_, dweights, count * sizeof(T));
    place<kGrad>(first, count, size, padding, align);
  }

 private:
  // The run of the weights (and derivatives) of taps first + k, k < end (a multiple of kLanes),
  // in the buffers: the taps without weight (or derivative) at both ends are left out (e.g. s a
  // rounding error above an integer adds a tap of weight ~0 on each side), and those across an
  // edge are folded onto the pixels they read.
  template <bool kGrad>
  LATENTX_INLINE void place(int64_t first, int64_t end, int64_t size, int64_t padding, bool align) {
    using S = Simd<T>;
    using V = typename S::V;
    const V zero = S::splat(T(0));
    T* rw = raw_.data() + kPad;
    T* rdw = rw + stride_;
    // A longer run of an earlier pixel may have left weights past this one's blocks.
    static_assert(kPad == 2 * kLanes, "the padding is two blocks");
    S::store(rw + end, zero);
    S::store(rw + end + kLanes, zero);
    if (kGrad) {
      S::store(rdw + end, zero);
      S::store(rdw + end + kLanes, zero);
    }
    int64_t k0 = -1, k1 = -1;  // the first and last taps with a weight (or derivative)
    for (int64_t b = 0; b < end; b += kLanes) {
      typename S::M used = S::load(rw + b) != zero;
      if (kGrad) used |= S::load(rdw + b) != zero;
      if (const uint32_t bits = S::bits(used)) {
        if (k0 < 0) k0 = b + __builtin_ctz(bits);
        k1 = b + 31 - __builtin_clz(bits);
      }
    }
    if (k0 < 0) {
      len = 0;
      return;
    }
    if (first + k0 >= 0 && first + k1 < size) {  // inside the image: the taps are the run
      start = first + k0;
      len = k1 - k0 + 1;
      w = rw + k0;
      dw = rdw + k0;
      return;
    }
    // Across an edge: fold the taps onto the pixels they read. Consecutive taps read the same
    // or adjacent pixels (or none, outside under zero padding), so the pixels read form a run
    // no longer than the taps.
    int64_t* read = read_.data();  // the pixel tap k0 + j reads (-1: none)
    int64_t lo = size, hi = -1;
    for (int64_t k = k0; k <= k1; ++k) {
      const int64_t i = grid_pad_index(first + k, size, padding, align);
      read[k - k0] = i;
      if (i < 0) continue;
      lo = std::min(lo, i);
      hi = std::max(hi, i);
    }
    if (hi < 0) {
      len = 0;
      return;
    }
    T* fw = fold_.data() + kPad;
    T* fdw = fw + stride_;
    for (int64_t b = 0; b < (hi - lo + 1) + kPad; b += kLanes) {
      S::store(fw + b, zero);
      if (kGrad) S::store(fdw + b, zero);
    }
    for (int64_t k = k0; k <= k1; ++k) {
      const int64_t i = read[k - k0];
      if (i < 0) continue;
      fw[i - lo] += rw[k];
      if (kGrad) fdw[i - lo] += rdw[k];
    }
    start = lo;
    len = hi - lo + 1;
    w = fw;
    dw = fdw;
  }

  // Unnormalised weights (and derivatives) of taps b .. b + kLanes - 1: grid_tap_weight,
  // branch-free. The taps from `count` on lie beyond the support (d > radius): weight 0.
  // T(first) + T(l) is T(first + l) exactly for any image under 2^24 pixels a side. The tent
  // 1 - |d|/s is 1 + d/s and 1 - d/s, bit for bit.
  template <bool kGrad>
  LATENTX_INLINE static void tap_block(const GridAxis<T>& a, int64_t b, typename Simd<T>::V& w,
                                       typename Simd<T>::V& dw) {
    using S = Simd<T>;
    using V = typename S::V;
    const V zero = S::splat(T(0));
    const V d = (S::splat(static_cast<T>(a.first + b)) + S::iota()) - a.coord;
    const typename S::M inside = (d > -a.radius) & (d <= a.radius);
    if (a.gaussian) {  // 0 with slope 0 at the support's edge (grid_tap_weight)
      const V q = d * d * a.inv_two_var;
      V e;
      for (int64_t l = 0; l < kLanes; ++l) e[l] = std::exp(-q[l]);
      w = S::select(inside, e - T(kGaussianTail) * (T(kGaussianTailOffset) - q), zero);
      if (kGrad) dw = S::select(inside, (e - T(kGaussianTail)) * d * (T(2) * a.inv_two_var), zero);
      return;
    }
    const typename S::M left = d <= T(0);
    const V ad = S::select(left, -d, d);
    w = S::select(inside, T(1) - ad * a.inv_s, zero);
    if (kGrad) dw = S::select(inside, S::select(left, S::splat(-a.inv_s), S::splat(a.inv_s)), zero);
  }

  int64_t stride_;
  std::vector<T> raw_, fold_;  // weights then derivatives, each [kPad | taps | kPad]
  std::vector<int64_t> read_;  // per tap of a run across an edge: the pixel it reads
};

// The x run as a window of NB * kLanes pixels x0 .. inside the row (run.len <= the window's
// width <= the row's): its weights (0 outside the run) and which lanes hold the run. Pixels
// outside the run are masked out rather than weighted by 0, so an Inf or NaN there changes
// nothing, as when they are not read.
template <int64_t NB, typename T>
struct XWindow {
  using S = Simd<T>;
  int64_t x0;
  typename S::V w[NB], dw[NB];
  typename S::M in[NB];
  template <bool kGrad>
  LATENTX_INLINE void set(const AxisRun<T>& r, int64_t width) {
    x0 = std::min(r.start, width - NB * kLanes);
    const int64_t shift = r.start - x0;  // 0 .. NB * kLanes - len
    for (int64_t b = 0; b < NB; ++b) {
      w[b] = S::load(r.w + b * kLanes - shift);  // the run's zero padding outside it
      if (kGrad) dw[b] = S::load(r.dw + b * kLanes - shift);
      const typename S::V lane = S::iota() + static_cast<T>(b * kLanes - shift);
      in[b] = (lane >= T(0)) & (lane < static_cast<T>(r.len));
    }
  }
  // A planned window (RowPlan) from its first pixel x0: the taps with a weight (or derivative)
  // are the run.
  template <bool kGrad>
  LATENTX_INLINE void set_planned(const T* weights, const T* dweights, int64_t first) {
    x0 = first;
    for (int64_t b = 0; b < NB; ++b) {
      w[b] = S::load(weights + b * kLanes);
      in[b] = w[b] != T(0);
      if (kGrad) {
        dw[b] = S::load(dweights + b * kLanes);
        in[b] |= dw[b] != T(0);
      }
    }
  }
};

// Channels ch0 .. ch0 + CB - 1 of one pixel, x as a window of NB * kLanes pixels, y as the rows
// y0 .. y0 + ny - 1 with weights wy: out = sum_x wx sum_y wy v. The CB channels share
// each row's weight and their sums are independent (instruction-level parallelism).
template <int64_t CB, int64_t NB, typename scalar_t, typename T>
LATENTX_INLINE void forward_window_channels(const XWindow<NB, T>& x, const T* wy, int64_t y0,
                                            int64_t ny, const scalar_t* in, int64_t ch0,
                                            int64_t h, int64_t w, scalar_t* dst,
                                            int64_t plane_out) {
  using S = Simd<T>;
  using V = typename S::V;
  const scalar_t* p = in + (ch0 * h + y0) * w + x.x0;
  const int64_t plane = h * w;
  V col[CB][NB];  // sum_y wy v per channel and window block
  for (int64_t k = 0; k < CB; ++k)
    for (int64_t b = 0; b < NB; ++b) col[k][b] = S::splat(T(0));
#pragma GCC unroll 2
  for (int64_t j = 0; j < ny; ++j, p += w) {
    const T wj = wy[j];
    for (int64_t k = 0; k < CB; ++k)
      for (int64_t b = 0; b < NB; ++b) col[k][b] += wj * S::load(p + k * plane + b * kLanes);
  }
  V acc[4];
  for (int64_t k = 0; k < 4; ++k) {
    acc[k] = S::splat(T(0));
    if (k < CB)
      for (int64_t b = 0; b < NB; ++b)
        acc[k] += S::select(x.in[b], x.w[b] * col[k][b], S::splat(T(0)));
  }
  if (CB == 1) {
    dst[ch0 * plane_out] = static_cast<scalar_t>(S::sum(acc[0]));
    return;
  }
  const V sums = S::sum4(acc[0], acc[1], acc[2], acc[3]);
  for (int64_t k = 0; k < CB; ++k) dst[(ch0 + k) * plane_out] = static_cast<scalar_t>(sums[k]);
}

// One pixel, every channel, in blocks of up to 4 channels.
template <int64_t NB, typename scalar_t, typename T>
LATENTX_INLINE void forward_window(const XWindow<NB, T>& x, const T* wy, int64_t y0, int64_t ny,
                                   const scalar_t* in, int64_t c, int64_t h, int64_t w,
                                   scalar_t* dst, int64_t plane_out) {
  int64_t ch = 0;
  for (; ch + 4 <= c; ch += 4)
    forward_window_channels<4>(x, wy, y0, ny, in, ch, h, w, dst, plane_out);
  switch (c - ch) {
    case 3: forward_window_channels<3>(x, wy, y0, ny, in, ch, h, w, dst, plane_out); break;
    case 2: forward_window_channels<2>(x, wy, y0, ny, in, ch, h, w, dst, plane_out); break;
    case 1: forward_window_channels<1>(x, wy, y0, ny, in, ch, h, w, dst, plane_out); break;
    default: break;
  }
}

// The same for a run of any length (long, or in a row narrower than the window).
template <typename scalar_t, typename T>
LATENTX_INLINE void forward_run(const AxisRun<T>& rx, const AxisRun<T>& ry, const scalar_t* in,
                                int64_t c, int64_t h, int64_t w, scalar_t* dst, int64_t plane_out) {
  for (int64_t ch = 0; ch < c; ++ch) {
    const scalar_t* p = in + (ch * h + ry.start) * w + rx.start;
    T acc = T(0);
    for (int64_t j = 0; j < ry.len; ++j, p += w) {
      T racc = T(0);
      for (int64_t i = 0; i < rx.len; ++i) racc += rx.w[i] * static_cast<T>(p[i]);
      acc += ry.w[j] * racc;
    }
    dst[ch * plane_out] = static_cast<scalar_t>(acc);
  }
}

// --- The footprint estimated from the grid --------------------------------------------------------

// kLanes (x, y) pairs of a grid row from p, split into their x and y values.
template <typename scalar_t, typename T>
LATENTX_INLINE void load_pairs(const scalar_t* p, typename Simd<T>::V& x, typename Simd<T>::V& y) {
  using S = Simd<T>;
  if constexpr (std::is_same_v<scalar_t, T>) {
    const typename S::V lo = S::load(p), hi = S::load(p + kLanes);
    x = __builtin_shufflevector(lo, hi, 0, 2, 4, 6, 8, 10, 12, 14);
    y = __builtin_shufflevector(lo, hi, 1, 3, 5, 7, 9, 11, 13, 15);
  } else {
    x = y = S::splat(T(0));
    for (int64_t l = 0; l < kLanes; ++l) {
      x[l] = static_cast<T>(p[2 * l]);
      y[l] = static_cast<T>(p[2 * l + 1]);
    }
  }
}

// grid_unnormalize, lane by lane.
template <typename T>
LATENTX_INLINE typename Simd<T>::V unnormalize_lanes(typename Simd<T>::V v, int64_t size,
                                                     bool align) {
  return align ? (v + T(1)) / T(2) * T(size - 1) : ((v + T(1)) * T(size) - T(1)) / T(2);
}

// grid_clamp_stretch of the square roots of `squares`, lane by lane, with the cap first (the
// same result: the cap is an integer).
template <typename T>
LATENTX_INLINE typename Simd<T>::V clamp_stretch_lanes(typename Simd<T>::V squares, T tol,
                                                       T cap) {
  using S = Simd<T>;
  typename S::V s, nearest;
  for (int64_t l = 0; l < kLanes; ++l) s[l] = std::sqrt(squares[l]);
  s = S::select(s > T(1) + tol, s, S::splat(T(1)));  // NaN: 1
  s = S::select(s < cap, s, S::splat(cap));
  for (int64_t l = 0; l < kLanes; ++l) nearest[l] = std::rint(s[l]);
  const typename S::V off = s - nearest;
  return S::select(S::select(off < T(0), -off, off) <= tol * nearest, nearest, s);
}

// The footprints of output row `row` of [N * Ho] into sx, sy: `stretch` where given, else
// estimated as grid_stretch_at does. The columns whose both neighbours exist (central
// differences along the row) go kLanes at a time from contiguous loads; the rest one by one.
template <typename scalar_t, typename T>
LATENTX_INLINE void row_stretch(const GridSampleArgs& a, const scalar_t* grid, const T* stretch,
                                int64_t row, T* sx, T* sy) {
  using S = Simd<T>;
  using V = typename S::V;
  const int64_t h = a.input.size(2), w = a.input.size(3);
  const int64_t ho = a.grid.size(1), wo = a.grid.size(2), r = row % ho;
  const bool align = a.align_corners;
  if (stretch) {
    const int64_t* st = a.stretch_strides;
    const T* at = stretch + (row / ho) * st[0] + r * st[1];
    for (int64_t col = 0; col < wo; ++col) {
      sx[col] = at[col * st[2]];
      sy[col] = at[col * st[2] + st[3]];
    }
    return;
  }
  const scalar_t* g = grid + 2 * (row - r) * wo;  // this sample's grid
  const int64_t rl = r == 0 ? 0 : r - 1, rh = r == ho - 1 ? ho - 1 : r + 1;
  const T v_scale = ho < 2 ? T(0) : (rh - rl == 2 ? T(0.5) : T(1));  // an axis of length 1: 0
  const T tol = T(grid_stretch_tolerance<scalar_t>()), cap = T(std::max(h, w));
  const scalar_t* along_u = g + 2 * r * wo;
  // Blocks of kLanes columns whose two neighbours exist: from column 1, the last block ending
  // at column wo - 2 (it may overlap the one before it: the same values again).
  const int64_t last = wo - 1 - kLanes;  // the last block's first column
  for (int64_t c0 = 1; c0 <= last; c0 = c0 < last ? std::min(c0 + kLanes, last) : last + 1) {
    V lx, ly, hx, hy, vlx, vly, vhx, vhy;
    load_pairs<scalar_t, T>(along_u + 2 * (c0 - 1), lx, ly);
    load_pairs<scalar_t, T>(along_u + 2 * (c0 + 1), hx, hy);
    load_pairs<scalar_t, T>(g + 2 * (rl * wo + c0), vlx, vly);
    load_pairs<scalar_t, T>(g + 2 * (rh * wo + c0), vhx, vhy);
    const V xu = (unnormalize_lanes<T>(hx, w, align) - unnormalize_lanes<T>(lx, w, align)) * T(0.5);
    const V yu = (unnormalize_lanes<T>(hy, h, align) - unnormalize_lanes<T>(ly, h, align)) * T(0.5);
    const V xv = (unnormalize_lanes<T>(vhx, w, align) - unnormalize_lanes<T>(vlx, w, align)) * v_scale;
    const V yv = (unnormalize_lanes<T>(vhy, h, align) - unnormalize_lanes<T>(vly, h, align)) * v_scale;
    S::store(sx + c0, clamp_stretch_lanes(xu * xu + xv * xv, tol, cap));
    S::store(sy + c0, clamp_stretch_lanes(yu * yu + yv * yv, tol, cap));
  }
  // The rest one by one: the end columns, and every column of a row too short for a block.
  for (int64_t col = 0; col < wo; col = (col == 0 && last >= 1) ? wo - 1 : col + 1)
    grid_stretch_at<T>(g, ho, wo, r, col, h, w, align, sx[col], sy[col]);
}

// --- The row plan ---------------------------------------------------------------------------------
// Most output pixels have their taps inside the image and at most 2 kLanes of them per axis.
// For those, phase 1 plans an output row kLanes pixels at a time, one per lane: each axis's
// taps first .. first + count - 1 and their normalised weights (and derivatives), as
// grid_axis and AxisRun::fill compute them for one pixel, then transposed to one row of
// weights per pixel. Phase 2 reads each such pixel's channels through its planned window and
// rows (forward_window, backward_window). The planned pixels across an edge fold the planned
// weights (AxisRun::fill from weights); the others (longer runs, not finite) take AxisRun.

// The transpose of an 8 x 8 block: r[i][j] becomes r[j][i].
template <typename V>
LATENTX_INLINE void transpose8(V r[8]) {
  static_assert(kLanes == 8, "the shuffles below are written for 8 lanes");
  V t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4)
    for (int j = 0; j < 2; ++j) {
      u[i + 2 * j] = __builtin_shufflevector(t[i + j], t[i + j + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[i + 2 * j + 1] = __builtin_shufflevector(t[i + j], t[i + j + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  for (int j = 0; j < 4; ++j) {
    r[j] = __builtin_shufflevector(u[j], u[j + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    r[j + 4] = __builtin_shufflevector(u[j], u[j + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

// One output row's plan, per pixel (arrays of the row's width rounded up to kLanes).
template <typename T>
struct RowPlan {
  using I = typename Simd<T>::I;
  static constexpr int64_t kTaps = 2 * kLanes;  // taps planned per axis
  static_assert(kTaps <= 2 * kLanes, "AxisRun's buffers hold a plan's taps (fill from weights)");
  // The x window's blocks (-1: across an edge, AxisRun from the planned weights; 0: AxisRun),
  // its first pixel (x's first tap), the first row with a weight (or derivative) and the
  // number of rows, and that row's tap (its weight's offset in wy).
  std::vector<I> blocks, x0, y0, ny, wy_at;
  // [pixel][kTaps]: the weights of taps first .. first + kTaps - 1, and (backward) their
  // derivatives w.r.t. the coordinate.
  std::vector<T> wx, wy, dwx, dwy;

  RowPlan(int64_t wo, bool grad)
      : blocks(round_up(wo, kLanes)), x0(blocks.size()), y0(blocks.size()), ny(blocks.size()),
        wy_at(blocks.size()), wx(blocks.size() * kTaps), wy(wx.size()),
        dwx(grad ? wx.size() : 0), dwy(dwx.size()) {}
};

// Phase 1, one axis of kLanes pixels at input pixel coordinates `coord` (where `finite`) with
// footprints `stretch`, lane by lane as grid_axis and AxisRun::fill: writes pixel l's
// normalised weights of taps first .. first + kTaps - 1 to weights[l * kTaps ..] (0 past its
// support) and, with kGrad, their derivatives to dweights, and returns first, the first and
// last taps k0, k1 with a weight or derivative (-1: none) and whether the pixel's taps are
// planned (finite, at most kTaps of them).
template <bool kGrad, typename T>
LATENTX_INLINE void plan_axis(typename Simd<T>::V coord, typename Simd<T>::V stretch,
                              typename Simd<T>::M finite, int64_t size, T cap, int64_t padding,
                              bool align, int64_t filter, T* weights, T* dweights,
                              typename Simd<T>::V& first, typename Simd<T>::V& k0,
                              typename Simd<T>::V& k1, typename Simd<T>::M& planned) {
  using S = Simd<T>;
  using V = typename S::V;
  using M = typename S::M;
  constexpr int64_t kTaps = RowPlan<T>::kTaps;
  const V zero = S::splat(T(0)), one = S::splat(T(1));
  coord = S::select(finite, coord, zero);
  V s = S::select(stretch > one, stretch, one);  // NaN: 1
  s = S::select(s > cap, S::splat(cap), s);
  if (filter == kGridFilterNone) s = one;
  const V inv_s = one / s;
  const M gaussian = filter == kGridFilterGaussian ? M(s > one) : M{};
  const V radius = S::select(gaussian, s * T(kGaussianRadiusPerStretch), s);
  const V sigma = s * T(0.5);
  const V inv_two_var = S::select(gaussian, one / (T(2) * sigma * sigma), zero);
  const V reach = S::ceil(radius);
  if (padding == kGridPadReflection && (size > 1 || !align)) {
    const T period = T(align ? 2 * (size - 1) : 2 * size);
    const M far = ((coord > -period) & (coord < period)) == M{};
    if (S::bits(far))
      for (int64_t l = 0; l < kLanes; ++l)
        if (far[l]) coord[l] = std::fmod(coord[l], period);
  } else {
    const V lo = -(reach + T(2)), hi = T(size - 1) + reach + T(2);
    coord = S::select(coord < lo, lo, S::select(coord > hi, hi, coord));
  }
  first = S::floor(coord) - reach + one;
  planned = finite & (T(2) * reach <= T(kTaps));
  // Taps past the longest planned run have no weight in any lane.
  const int64_t count = static_cast<int64_t>(S::max(S::select(planned, T(2) * reach, zero)));
  const int64_t end = round_up(count, kLanes);
  const bool any_gaussian = S::bits(gaussian) != 0;
  V w[kTaps], dw[kTaps], sum = zero, dsum = zero;
  k0 = k1 = S::splat(T(-1));
  for (int64_t k = 0; k < count; ++k) {
    const V tap = S::splat(T(k));
    const V d = (first + tap) - coord;
    const M left = d <= T(0);
    w[k] = T(1) - S::select(left, -d, d) * inv_s;
    if (kGrad) dw[k] = S::select(left, -inv_s, inv_s);  // the tent's one-sided derivative
    if (any_gaussian || kGrad) {  // the support: (-radius, radius]
      const M inside = (d > -radius) & (d <= radius);
      if (any_gaussian) {
        const V q = d * d * inv_two_var;
        V e;
        for (int64_t l = 0; l < kLanes; ++l) e[l] = std::exp(-q[l]);
        w[k] = S::select(gaussian, e - T(kGaussianTail) * (T(kGaussianTailOffset) - q), w[k]);
        if (kGrad) dw[k] = S::select(gaussian, (e - T(kGaussianTail)) * d * (T(2) * inv_two_var), dw[k]);
      }
      w[k] = S::select(inside, w[k], zero);
      if (kGrad) dw[k] = S::select(inside, dw[k], zero);
    } else {  // the tent's support is where 1 - |d|/s > 0
      w[k] = S::select(w[k] > zero, w[k], zero);
    }
    sum += w[k];
    M used = w[k] != zero;
    if (kGrad) {
      dsum += dw[k];
      used |= dw[k] != zero;
    }
    k0 = S::select(used & (k0 < zero), tap, k0);
    k1 = S::select(used, tap, k1);
  }
  for (int64_t k = count; k < end; ++k) w[k] = dw[k] = zero;
  // Normalised where s > 1: w / W and (w' - w sum(w') / W) / W.
  const M normalised = s > one;
  const V inv = S::select(normalised, one / sum, one);
  const V dnorm = S::select(normalised, dsum * inv, zero);
  for (int64_t b = 0; b < kTaps; b += kLanes) {
    if (b >= end) {
      for (int64_t l = 0; l < kLanes; ++l) {
        S::store(weights + l * kTaps + b, zero);
        if (kGrad) S::store(dweights + l * kTaps + b, zero);
      }
      continue;
    }
    for (int64_t k = b; k < b + kLanes; ++k) {
      if (kGrad) dw[k] = (dw[k] - w[k] * dnorm) * inv;
      w[k] *= inv;
    }
    transpose8(w + b);  // w[b + l] now holds pixel l's weights of taps b .. b + kLanes - 1
    for (int64_t l = 0; l < kLanes; ++l) S::store(weights + l * kTaps + b, w[b + l]);
    if (kGrad) {
      transpose8(dw + b);
      for (int64_t l = 0; l < kLanes; ++l) S::store(dweights + l * kTaps + b, dw[b + l]);
    }
  }
}

// Phase 1 of output row `row` of [N * Ho], whose footprints are sx, sy.
template <bool kGrad, typename scalar_t, typename T>
LATENTX_INLINE void plan_row(const GridSampleArgs& a, const scalar_t* grid, const T* sx,
                             const T* sy, int64_t row, RowPlan<T>& plan) {
  using S = Simd<T>;
  using V = typename S::V;
  using M = typename S::M;
  using I = typename S::I;
  constexpr int64_t kTaps = RowPlan<T>::kTaps;
  const int64_t h = a.input.size(2), w = a.input.size(3), wo = a.grid.size(2);
  const T cap = T(std::max(h, w));
  const bool align = a.align_corners;
  const V zero = S::splat(T(0));
  for (int64_t c0 = 0; c0 < wo; c0 += kLanes) {
    V gx = zero, gy = zero;
    if (c0 + kLanes <= wo) {
      load_pairs<scalar_t, T>(grid + 2 * (row * wo + c0), gx, gy);
    } else {
      for (int64_t l = 0; l < kLanes; ++l) {  // lanes past the row: a copy of its last pixel
        const int64_t p = row * wo + std::min(c0 + l, wo - 1);
        gx[l] = static_cast<T>(grid[2 * p]);
        gy[l] = static_cast<T>(grid[2 * p + 1]);
      }
    }
    const V ix = unnormalize_lanes<T>(gx, w, align), iy = unnormalize_lanes<T>(gy, h, align);
    const M finite = ((ix - ix) == zero) & ((iy - iy) == zero);
    V fx, kx0, kx1, fy, ky0, ky1;
    M px, py;
    T* dwx = kGrad ? plan.dwx.data() + c0 * kTaps : nullptr;
    T* dwy = kGrad ? plan.dwy.data() + c0 * kTaps : nullptr;
    plan_axis<kGrad, T>(ix, S::load(sx + c0), finite, w, cap, a.padding, align, a.filter,
                        plan.wx.data() + c0 * kTaps, dwx, fx, kx0, kx1, px);
    plan_axis<kGrad, T>(iy, S::load(sy + c0), finite, h, cap, a.padding, align, a.filter,
                        plan.wy.data() + c0 * kTaps, dwy, fy, ky0, ky1, py);
    // The direct path: the x window (1 block for up to kLanes taps, else 2) from the first tap
    // inside the row, the rows with a weight inside the image. The other planned pixels lie
    // across an edge.
    const V blocks = S::select(kx1 < T(kLanes), S::splat(T(1)), S::splat(T(2)));
    const M direct = px & py & (kx0 >= zero) & (ky0 >= zero) & (fx >= zero) &
                     (fx + blocks * T(kLanes) <= T(w)) & (fy + ky0 >= zero) & (fy + ky1 < T(h));
    const M nb = S::to_int(S::select(direct, blocks, S::select(px & py, S::splat(T(-1)), zero)));
    std::memcpy(plan.blocks.data() + c0, &nb, sizeof nb);
    const M x0 = S::to_int(fx), y0 = S::to_int(fy + ky0), ny = S::to_int(ky1 - ky0 + T(1));
    const M at = S::to_int(ky0);
    std::memcpy(plan.x0.data() + c0, &x0, sizeof x0);
    std::memcpy(plan.y0.data() + c0, &y0, sizeof y0);
    std::memcpy(plan.ny.data() + c0, &ny, sizeof ny);
    std::memcpy(plan.wy_at.data() + c0, &at, sizeof at);
    static_assert(sizeof(I) * kLanes == sizeof(M), "one plan entry per lane");
  }
}

// Phase 2 for pixel `col` of a planned row whose window lies inside the image (blocks > 0):
// every channel through its window.
template <typename scalar_t, typename T>
LATENTX_INLINE void forward_planned(const RowPlan<T>& plan, int64_t col, int64_t blocks,
                                    const scalar_t* in, int64_t c, int64_t h, int64_t w,
                                    scalar_t* dst, int64_t plane_out) {
  constexpr int64_t kTaps = RowPlan<T>::kTaps;
  const T* wx = plan.wx.data() + col * kTaps;
  const T* wy = plan.wy.data() + col * kTaps + plan.wy_at[col];
  const int64_t y0 = plan.y0[col], ny = plan.ny[col];
  if (blocks == 1) {
    XWindow<1, T> xw;
    xw.template set_planned<false>(wx, nullptr, plan.x0[col]);
    forward_window<1>(xw, wy, y0, ny, in, c, h, w, dst, plane_out);
  } else {
    XWindow<2, T> xw;
    xw.template set_planned<false>(wx, nullptr, plan.x0[col]);
    forward_window<2>(xw, wy, y0, ny, in, c, h, w, dst, plane_out);
  }
}

// The x and y tap runs of output pixel p (index in [N, Ho, Wo]), at column `col` of its planned
// row whose footprints are sx, sy, for a pixel not read directly (plan.blocks[col] <= 0): the
// planned weights folded across an edge, or (not planned) computed alone; false where its grid
// location is not finite (the runs are then left as they were).
template <bool kGrad, typename scalar_t, typename T>
LATENTX_INLINE bool pixel_runs(const GridSampleArgs& a, const scalar_t* grid, const RowPlan<T>& plan,
                               int64_t col, const T* sx, const T* sy, int64_t p, AxisRun<T>& rx,
                               AxisRun<T>& ry) {
  constexpr int64_t kTaps = RowPlan<T>::kTaps;
  const int64_t h = a.input.size(2), w = a.input.size(3);
  if (plan.blocks[col] < 0) {
    const int64_t at = col * kTaps;
    rx.template fill<kGrad>(plan.wx.data() + at, kGrad ? plan.dwx.data() + at : nullptr,
                            plan.x0[col], kTaps, w, a.padding, a.align_corners);
    ry.template fill<kGrad>(plan.wy.data() + at, kGrad ? plan.dwy.data() + at : nullptr,
                            plan.y0[col] - plan.wy_at[col], kTaps, h, a.padding, a.align_corners);
    return true;
  }
  const T cap = T(std::max(h, w));
  const T ix = grid_unnormalize(static_cast<T>(grid[2 * p]), w, a.align_corners);
  const T iy = grid_unnormalize(static_cast<T>(grid[2 * p + 1]), h, a.align_corners);
  if (!(grid_finite(ix) && grid_finite(iy))) return false;
  rx.template fill<kGrad>(grid_axis(ix, sx[col], w, cap, a.padding, a.align_corners, a.filter, false),
                          w, a.padding, a.align_corners);
  ry.template fill<kGrad>(grid_axis(iy, sy[col], h, cap, a.padding, a.align_corners, a.filter, false),
                          h, a.padding, a.align_corners);
  return true;
}

// Output row `row` of a sample whose input holds a NaN or an infinity: every tap of each
// pixel's window (zero weights included) reads its pixel, as F.grid_sample and the reference
// do (grid_sample_window), so such values reach every output whose window holds them. The fast
// path skips taps of weight 0 (0 * v is 0 for finite v) and runs only on finite samples.
template <typename scalar_t, typename T>
void forward_row_all_taps(const GridSampleArgs& a, const scalar_t* grid, const T* sx,
                          const T* sy, int64_t row, const scalar_t* plane, scalar_t* dst_row) {
  const int64_t c = a.input.size(1), h = a.input.size(2), w = a.input.size(3);
  const int64_t ho = a.grid.size(1), wo = a.grid.size(2), plane_out = ho * wo;
  const T cap = T(std::max(h, w));
  for (int64_t col = 0; col < wo; ++col) {
    const int64_t p = row * wo + col;
    scalar_t* dst = dst_row + col;
    const T ix = grid_unnormalize(static_cast<T>(grid[2 * p]), w, a.align_corners);
    const T iy = grid_unnormalize(static_cast<T>(grid[2 * p + 1]), h, a.align_corners);
    if (!(grid_finite(ix) && grid_finite(iy))) {  // undefined location: 0
      for (int64_t ch = 0; ch < c; ++ch) dst[ch * plane_out] = scalar_t(0);
      continue;
    }
    const GridAxis<T> ax = grid_axis(ix, sx[col], w, cap, a.padding, a.align_corners, a.filter);
    const GridAxis<T> ay = grid_axis(iy, sy[col], h, cap, a.padding, a.align_corners, a.filter);
    for (int64_t ch = 0; ch < c; ++ch)
      dst[ch * plane_out] = static_cast<scalar_t>(
          grid_sample_window(ax, ay, plane + ch * h * w, h, w, a.padding, a.align_corners));
  }
}

// Output rows [begin, end) of [N * Ho]; finite[s]: sample s's input is finite.
template <typename scalar_t>
LATENTX_CPU_MULTIVERSION void forward_rows(const GridSampleArgs& a, scalar_t* o, const bool* finite,
                                           int64_t begin, int64_t end) {
  using T = at::opmath_type<scalar_t>;
  const int64_t c = a.input.size(1), h = a.input.size(2), w = a.input.size(3);
  const int64_t ho = a.grid.size(1), wo = a.grid.size(2), plane_out = ho * wo;
  const int64_t max_taps = grid_max_taps(std::max(h, w));
  const scalar_t* in = a.input.const_data_ptr<scalar_t>();
  const scalar_t* grid = a.grid.const_data_ptr<scalar_t>();
  const T* stretch = a.stretch.defined() ? a.stretch.const_data_ptr<T>() : nullptr;
  AxisRun<T> rx(max_taps), ry(max_taps);
  std::vector<T> sx(round_up(wo, kLanes)), sy(round_up(wo, kLanes));
  RowPlan<T> plan(wo, false);
  for (int64_t row = begin; row < end; ++row) {
    const int64_t s = row / ho, r = row % ho;
    const scalar_t* plane = in + s * c * h * w;
    row_stretch(a, grid, stretch, row, sx.data(), sy.data());
    if (!finite[s]) {
      forward_row_all_taps(a, grid, sx.data(), sy.data(), row, plane, o + s * c * plane_out + r * wo);
      continue;
    }
    plan_row<false>(a, grid, sx.data(), sy.data(), row, plan);
    for (int64_t col = 0; col < wo; ++col) {
      const int64_t p = row * wo + col;  // pixel index in [N, Ho, Wo]
      scalar_t* dst = o + s * c * plane_out + r * wo + col;
      const int64_t blocks = plan.blocks[col];
      if (blocks > 0) {
        forward_planned(plan, col, blocks, plane, c, h, w, dst, plane_out);
        continue;
      }
      if (!pixel_runs<false>(a, grid, plan, col, sx.data(), sy.data(), p, rx, ry)) {
        for (int64_t ch = 0; ch < c; ++ch) dst[ch * plane_out] = scalar_t(0);  // undefined location: 0
        continue;
      }
      if (rx.len == 0 || ry.len == 0) {  // every tap reads zero padding
        for (int64_t ch = 0; ch < c; ++ch) dst[ch * plane_out] = scalar_t(0);
      } else if (rx.len <= kLanes && w >= kLanes) {
        XWindow<1, T> xw;
        xw.template set<false>(rx, w);
        forward_window<1>(xw, ry.w, ry.start, ry.len, plane, c, h, w, dst, plane_out);
      } else if (rx.len <= 2 * kLanes && w >= 2 * kLanes) {
        XWindow<2, T> xw;
        xw.template set<false>(rx, w);
        forward_window<2>(xw, ry.w, ry.start, ry.len, plane, c, h, w, dst, plane_out);
      } else {
        forward_run(rx, ry, plane, c, h, w, dst, plane_out);
      }
    }
  }
}

template <typename scalar_t>
void forward_impl(const GridSampleArgs& a, at::Tensor& out) {
  const int64_t n = a.input.size(0), c = a.input.size(1);
  const int64_t ho = a.grid.size(1), wo = a.grid.size(2);
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  // Which samples' inputs are finite, from one reduction (no copy of the input): a sum is
  // finite where every value is, or where it overflows (then the slower all-taps path runs,
  // with the same result).
  const at::Tensor finite =
      a.input.view({n, -1}).sum(1, /*keepdim=*/false, at::toOpMathType(a.input.scalar_type()))
          .isfinite().contiguous();
  const bool* fin = finite.const_data_ptr<bool>();
  // Chunks of at least ~kGrainValues output values: small calls stay on one thread.
  const int64_t grain = std::max<int64_t>(1, kGrainValues / std::max<int64_t>(1, wo * c));
  at::parallel_for(0, n * ho, grain,
                   [&](int64_t begin, int64_t end) { forward_rows<scalar_t>(a, o, fin, begin, end); });
}

// Backward of one pixel, every channel, x as a window of NB * kLanes pixels, y as the rows
// y0 .. y0 + ny - 1 with weights wy and derivatives dwy. With g the output's gradient:
// d out / d ix = sum_x dwx sum_y wy v and d out / d iy = sum_x wx sum_y dwy v go to gx, gy
// (times g, summed over channels) where kRead (the grid's gradient is wanted); g wx wy goes to
// each input pixel's gradient where kWrite.
template <bool kRead, bool kWrite, int64_t NB, typename scalar_t, typename T>
LATENTX_INLINE void backward_window_channels(const XWindow<NB, T>& x, const T* wy, const T* dwy,
                                             int64_t y0, int64_t ny, const scalar_t* in,
                                             const scalar_t* go, T* gin, int64_t c, int64_t h,
                                             int64_t w, int64_t plane_out, T& gx, T& gy) {
  using S = Simd<T>;
  using V = typename S::V;
  const V zero = S::splat(T(0));
  V bx = zero, by = zero;  // g sum_y ... summed over channels, per lane: one lane sum per pixel
  for (int64_t ch = 0; ch < c; ++ch) {
    const T g = static_cast<T>(go[ch * plane_out]);
    const int64_t offset = (ch * h + y0) * w + x.x0;
    const scalar_t* p = kRead ? in + offset : nullptr;
    T* line = kWrite ? gin + offset : nullptr;
    V cw[NB], cd[NB], gw[NB];  // sum_y wy v and sum_y dwy v per window column; g wx (0 outside)
    for (int64_t b = 0; b < NB; ++b) {
      cw[b] = cd[b] = zero;
      gw[b] = S::select(x.in[b], g * x.w[b], zero);
    }
#pragma GCC unroll 2
    for (int64_t j = 0; j < ny; ++j) {
      const T wj = wy[j], dj = dwy[j];
      for (int64_t b = 0; b < NB; ++b) {
        if (kRead) {
          const V v = S::load(p + b * kLanes);
          cw[b] += wj * v;
          cd[b] += dj * v;
        }
        if (kWrite) S::store(line + b * kLanes, S::load(line + b * kLanes) + wj * gw[b]);
      }
      if (kRead) p += w;
      if (kWrite) line += w;
    }
    if (kRead)
      for (int64_t b = 0; b < NB; ++b) {
        bx += g * S::select(x.in[b], x.dw[b] * cw[b], zero);
        by += g * S::select(x.in[b], x.w[b] * cd[b], zero);
      }
  }
  if (kRead) {
    gx += S::sum(bx);
    gy += S::sum(by);
  }
}

// The same, reading the input where `in` is given and accumulating into `gin` where given.
template <int64_t NB, typename scalar_t, typename T>
LATENTX_INLINE void backward_window(const XWindow<NB, T>& x, const T* wy, const T* dwy,
                                    int64_t y0, int64_t ny, const scalar_t* in,
                                    const scalar_t* go, T* gin, int64_t c, int64_t h, int64_t w,
                                    int64_t plane_out, T& gx, T& gy) {
  if (in && gin)
    backward_window_channels<true, true>(x, wy, dwy, y0, ny, in, go, gin, c, h, w, plane_out, gx, gy);
  else if (in)
    backward_window_channels<true, false>(x, wy, dwy, y0, ny, in, go, gin, c, h, w, plane_out, gx, gy);
  else if (gin)
    backward_window_channels<false, true>(x, wy, dwy, y0, ny, in, go, gin, c, h, w, plane_out, gx, gy);
}

// The same for a run of any length.
template <typename scalar_t, typename T>
LATENTX_INLINE void backward_run(const AxisRun<T>& rx, const AxisRun<T>& ry, const scalar_t* in,
                                 const scalar_t* go, T* gin, int64_t c, int64_t h, int64_t w,
                                 int64_t plane_out, T& gx, T& gy) {
  for (int64_t ch = 0; ch < c; ++ch) {
    const T g = static_cast<T>(go[ch * plane_out]);
    const int64_t offset = (ch * h + ry.start) * w + rx.start;
    if (in) {
      const scalar_t* p = in + offset;
      T bx = T(0), by = T(0);
      for (int64_t j = 0; j < ry.len; ++j, p += w) {
        T rw = T(0), rd = T(0);
        for (int64_t i = 0; i < rx.len; ++i) {
          const T v = static_cast<T>(p[i]);
          rw += rx.w[i] * v;
          rd += rx.dw[i] * v;
        }
        bx += ry.w[j] * rd;
        by += ry.dw[j] * rw;
      }
      gx += g * bx;
      gy += g * by;
    }
    if (gin) {
      T* line = gin + offset;
      for (int64_t j = 0; j < ry.len; ++j, line += w) {
        const T gj = g * ry.w[j];
        for (int64_t i = 0; i < rx.len; ++i) line[i] += gj * rx.w[i];
      }
    }
  }
}

// The backward of pixel `col` of a planned row whose window lies inside the image (blocks > 0),
// as forward_planned.
template <typename scalar_t, typename T>
LATENTX_INLINE void backward_planned(const RowPlan<T>& plan, int64_t col, int64_t blocks,
                                     const scalar_t* in, const scalar_t* go, T* gin, int64_t c,
                                     int64_t h, int64_t w, int64_t plane_out, T& gx, T& gy) {
  constexpr int64_t kTaps = RowPlan<T>::kTaps;
  const T* wx = plan.wx.data() + col * kTaps;
  const T* dwx = plan.dwx.data() + col * kTaps;
  const int64_t at = col * kTaps + plan.wy_at[col];
  const T* wy = plan.wy.data() + at;
  const T* dwy = plan.dwy.data() + at;
  const int64_t y0 = plan.y0[col], ny = plan.ny[col];
  if (blocks == 1) {
    XWindow<1, T> xw;
    xw.template set_planned<true>(wx, dwx, plan.x0[col]);
    backward_window<1>(xw, wy, dwy, y0, ny, in, go, gin, c, h, w, plane_out, gx, gy);
  } else {
    XWindow<2, T> xw;
    xw.template set_planned<true>(wx, dwx, plan.x0[col]);
    backward_window<2>(xw, wy, dwy, y0, ny, in, go, gin, c, h, w, plane_out, gx, gy);
  }
}

// Samples [begin, end), an output row at a time, planned as in the forward. gin / gg null:
// that gradient is not wanted.
template <typename scalar_t>
LATENTX_CPU_MULTIVERSION void backward_samples(const GridSampleArgs& a, const scalar_t* go,
                                               at::opmath_type<scalar_t>* gin, scalar_t* gg,
                                               int64_t begin, int64_t end) {
  using T = at::opmath_type<scalar_t>;
  const int64_t c = a.input.size(1), h = a.input.size(2), w = a.input.size(3);
  const int64_t ho = a.grid.size(1), wo = a.grid.size(2), plane_out = ho * wo;
  const int64_t max_taps = grid_max_taps(std::max(h, w));
  const T scale_x = T(grid_unnormalize_scale(w, a.align_corners));
  const T scale_y = T(grid_unnormalize_scale(h, a.align_corners));
  const scalar_t* in = a.input.const_data_ptr<scalar_t>();
  const scalar_t* grid = a.grid.const_data_ptr<scalar_t>();
  const T* stretch = a.stretch.defined() ? a.stretch.const_data_ptr<T>() : nullptr;
  AxisRun<T> rx(max_taps), ry(max_taps);
  std::vector<T> sx(round_up(wo, kLanes)), sy(round_up(wo, kLanes));
  RowPlan<T> plan(wo, true);
  for (int64_t s = begin; s < end; ++s) {
    // The input is read only for the grid's gradient.
    const scalar_t* plane = gg ? in + s * c * h * w : nullptr;
    T* gplane = gin ? gin + s * c * h * w : nullptr;
    for (int64_t r = 0; r < ho; ++r) {
      const int64_t row = s * ho + r;
      row_stretch(a, grid, stretch, row, sx.data(), sy.data());
      plan_row<true>(a, grid, sx.data(), sy.data(), row, plan);
      for (int64_t col = 0; col < wo; ++col) {
        const int64_t p = row * wo + col;  // pixel index in [N, Ho, Wo]
        const scalar_t* gop = go + s * c * plane_out + r * wo + col;
        const int64_t blocks = plan.blocks[col];
        T gx = T(0), gy = T(0);
        if (blocks > 0) {
          backward_planned(plan, col, blocks, plane, gop, gplane, c, h, w, plane_out, gx, gy);
        } else {
          if (!pixel_runs<true>(a, grid, plan, col, sx.data(), sy.data(), p, rx, ry))
            continue;  // not finite: the output is 0 and has no gradient (zeroed)
          if (rx.len == 0 || ry.len == 0) continue;  // every tap reads zero padding
          if (rx.len <= kLanes && w >= kLanes) {
            XWindow<1, T> xw;
            xw.template set<true>(rx, w);
            backward_window<1>(xw, ry.w, ry.dw, ry.start, ry.len, plane, gop, gplane, c, h, w,
                               plane_out, gx, gy);
          } else if (rx.len <= 2 * kLanes && w >= 2 * kLanes) {
            XWindow<2, T> xw;
            xw.template set<true>(rx, w);
            backward_window<2>(xw, ry.w, ry.dw, ry.start, ry.len, plane, gop, gplane, c, h, w,
                               plane_out, gx, gy);
          } else {
            backward_run(rx, ry, plane, gop, gplane, c, h, w, plane_out, gx, gy);
          }
        }
        if (gg) {
          gg[2 * p] = static_cast<scalar_t>(gx * scale_x);
          gg[2 * p + 1] = static_cast<scalar_t>(gy * scale_y);
        }
      }
    }
  }
}

template <typename scalar_t>
void backward_impl(const GridSampleArgs& a, const at::Tensor& grad, at::Tensor& grad_input,
                   at::Tensor& grad_grid) {
  using T = at::opmath_type<scalar_t>;
  const int64_t n = a.input.size(0), c = a.input.size(1);
  const int64_t plane_out = a.grid.size(1) * a.grid.size(2);
  const scalar_t* go = grad.const_data_ptr<scalar_t>();
  T* gin = grad_input.defined() ? grad_input.mutable_data_ptr<T>() : nullptr;
  scalar_t* gg = grad_grid.defined() ? grad_grid.mutable_data_ptr<scalar_t>() : nullptr;
  const int64_t grain = std::max<int64_t>(1, kGrainValues / std::max<int64_t>(1, plane_out * c));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    backward_samples<scalar_t>(a, go, gin, gg, begin, end);
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
