// Per-axis filter math of filtered_grid_sample (SPEC A4), shared by the CPU and CUDA kernels
// and mirrored by latentx/ops/reference.py (filtered_grid_sample).
//
// One output pixel samples the input around the pixel coordinate (ix, iy) with separable
// weights over integer taps t: d = t - ix,
//   tent:     w(d) = max(0, 1 - |d|/s)          support (-s, s]   (s = 1: bilinear)
//   gaussian: w(d) = e(d) - e(3 sigma) (1 + 9/2 - d^2 / (2 sigma^2)),  e(d) = exp(-d^2 / (2 sigma^2))
//                                               support (-3 sigma, 3 sigma], sigma = s/2
// where s >= 1 is the footprint (stretch) along the axis. Where s > 1 the weights are
// normalised by their sum (separably); where s = 1 they are the bilinear ones, not divided,
// so the result is F.grid_sample's. The derivative w' = dw/dix is the one-sided one from the
// right at the tent's kinks (as grid_sample's bilinear gradient): -1/s on (-s, 0], 1/s on
// (0, s]; the Gaussian's is (e(d) - e(3 sigma)) d / sigma^2. The Gaussian less the quadratic
// that matches its value and slope at 3 sigma reaches 0 there with slope 0: truncated as it
// is, it jumps by 1.1 % of its peak at the support's edge (and its slope by more), and a
// last-bit change of the footprint or the coordinate that moves a tap across the edge changed
// the output by ~1 % and the grid's gradient by ~2 % (the estimated and the given footprints
// differ in the last bit: a flaky test, LATENTX_TEST_SEED=392448400).
//
// Non-finite input values: every tap of a pixel's window (first .. first + count - 1, weight 0
// or not) that reads a pixel multiplies it by its weight, so a NaN or +-inf there gives NaN or
// +-inf, as F.grid_sample multiplies its 4 taps (grid_sample_window; the CPU kernel's fast path,
// which skips zero weights, runs only on samples whose input is finite). With W = sum w and the normalised weight
// w^ = w/W, dw^/dix = (w' - w sum(w')/W) / W.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace latentx {

// Codes of the op's padding_mode and filter arguments (padding in torch's GridSamplerPadding
// order).
constexpr int64_t kGridPadZeros = 0, kGridPadBorder = 1, kGridPadReflection = 2;
constexpr int64_t kGridFilterNone = 0, kGridFilterTent = 1, kGridFilterGaussian = 2;
// sigma = s/2 (close to the tent's variance s^2/6), taps within 3 sigma.
constexpr double kGaussianRadiusPerStretch = 0.5 * 3.0;
// exp(-3^2 / 2): the Gaussian's value at its truncation radius, subtracted (continuity).
constexpr double kGaussianTail = 0.011108996538242306;
constexpr double kGaussianTailOffset = 1.0 + 4.5;  // 1 + (3 sigma)^2 / (2 sigma^2)

// F.grid_sample's map from [-1, 1] to input pixel coordinates.
template <typename T>
LATENTX_HOST_DEVICE T grid_unnormalize(T coord, int64_t size, bool align_corners) {
  return align_corners ? (coord + T(1)) / T(2) * T(size - 1)
                       : ((coord + T(1)) * T(size) - T(1)) / T(2);
}

// x - x is 0 for finite x and NaN for NaN and +-inf (no <cmath> overload games on device).
template <typename T>
LATENTX_HOST_DEVICE bool grid_finite(T x) {
  return x - x == T(0);
}

// The in-range index tap t reads under the padding rule, or -1 for zero padding (reads 0).
// Reflection mirrors about -0.5 and size - 0.5 (about 0 and size - 1 with align_corners):
// per tap, this reproduces grid_sample's reflection of the coordinate in the bilinear case.
LATENTX_HOST_DEVICE int64_t grid_pad_index(int64_t t, int64_t size, int64_t padding,
                                           bool align_corners) {
  if (padding == kGridPadZeros) return (t >= 0 && t < size) ? t : -1;
  if (padding == kGridPadBorder) return t < 0 ? 0 : (t >= size ? size - 1 : t);
  if (t >= 0 && t < size) return t;
  if (align_corners) {
    if (size == 1) return 0;
    // Within one reflection of the image (the usual case): without the division.
    if (t >= -(size - 1) && t <= 2 * (size - 1)) return t < 0 ? -t : 2 * (size - 1) - t;
    const int64_t period = 2 * (size - 1);
    int64_t m = t % period;
    if (m < 0) m += period;
    return m >= size ? period - m : m;
  }
  if (t >= -size && t < 2 * size) return t < 0 ? -1 - t : 2 * size - 1 - t;
  const int64_t period = 2 * size;
  int64_t m = t % period;
  if (m < 0) m += period;
  return m >= size ? period - 1 - m : m;
}

// One axis of one output pixel: taps first .. first + count - 1.
template <typename T>
struct GridAxis {
  int64_t first = 0;
  int64_t count = 0;
  T coord = T(0);        // input pixel coordinate (reduced to a safe range)
  T s = T(1);            // footprint in input pixels, in [1, cap]
  T inv_s = T(1);        // 1 / s
  T radius = T(1);       // support half-width
  T inv_two_var = T(0);  // 1 / (2 sigma^2), Gaussian
  bool gaussian = false;
  T inv_norm = T(1);     // 1 / sum(w) where normalised (s > 1), else 1
  T dnorm = T(0);        // sum(w') / sum(w) where normalised, else 0
};

// Unnormalised weight of tap k; its derivative w.r.t. the coordinate goes to dw.
template <typename T>
LATENTX_HOST_DEVICE T grid_tap_weight(const GridAxis<T>& a, int64_t k, T& dw) {
  using std::exp;
  const T d = T(a.first + k) - a.coord;
  if (!(d > -a.radius && d <= a.radius)) {  // outside the support (or NaN): no weight
    dw = T(0);
    return T(0);
  }
  if (a.gaussian) {
    const T q = d * d * a.inv_two_var;
    const T e = exp(-q);
    dw = (e - T(kGaussianTail)) * d * (T(2) * a.inv_two_var);
    return e - T(kGaussianTail) * (T(kGaussianTailOffset) - q);
  }
  if (d <= T(0)) {
    dw = -a.inv_s;
    return T(1) + d * a.inv_s;
  }
  dw = a.inv_s;
  return T(1) - d * a.inv_s;
}

// The axis of an output pixel at input coordinate `coord` (finite) with footprint `stretch`
// (<= 1 and NaN mean 1; capped at `cap` = max(H, W), which bounds the tap count). Without
// `normalize` the caller sets inv_norm (and dnorm) itself (the CPU forward sums the weights
// while it stores them).
template <typename T>
LATENTX_HOST_DEVICE GridAxis<T> grid_axis(T coord, T stretch, int64_t size, T cap,
                                          int64_t padding, bool align_corners, int64_t filter,
                                          bool normalize = true) {
  using std::ceil;
  using std::floor;
  using std::fmod;
  GridAxis<T> a;
  T s = stretch > T(1) ? stretch : T(1);
  if (s > cap) s = cap;
  if (filter == kGridFilterNone) s = T(1);
  a.s = s;
  a.inv_s = T(1) / s;
  a.gaussian = filter == kGridFilterGaussian && s > T(1);
  a.radius = a.gaussian ? s * T(kGaussianRadiusPerStretch) : s;
  const T sigma = s * T(0.5);
  a.inv_two_var = T(1) / (T(2) * sigma * sigma);
  const int64_t reach = static_cast<int64_t>(ceil(a.radius));
  if (padding == kGridPadReflection && (size > 1 || !align_corners)) {
    // Reflection is periodic: an exact fmod by the period changes neither the reflected tap
    // indices nor the distances, and keeps huge coordinates in int64 range.
    // Within one period (the usual case) fmod is the identity: skip it.
    const T period = T(align_corners ? 2 * (size - 1) : 2 * size);
    if (!(coord > -period && coord < period)) coord = fmod(coord, period);
  } else {
    // Beyond these bounds every tap lies outside the image (zeros: all 0; border: all the
    // edge pixel; reflection of a single pixel: all pixel 0): the result does not change.
    const T lo = -T(reach + 2), hi = T(size - 1 + reach + 2);
    coord = coord < lo ? lo : (coord > hi ? hi : coord);
  }
  a.coord = coord;
  a.first = static_cast<int64_t>(floor(coord)) - reach + 1;
  a.count = 2 * reach;
  if (normalize && s > T(1)) {
    T sum = T(0), dsum = T(0);
    for (int64_t k = 0; k < a.count; ++k) {
      T dw;
      sum += grid_tap_weight(a, k, dw);
      dsum += dw;
    }
    a.inv_norm = T(1) / sum;
    a.dnorm = dsum / sum;
  }
  return a;
}

// One channel of one output pixel with axes ax, ay (normalised) over plane [H, W]: every tap of
// the window that reads a pixel is multiplied by its weight, zero or not, so non-finite values
// propagate as in F.grid_sample (and as reference.filtered_grid_sample).
template <typename T, typename scalar_t>
LATENTX_HOST_DEVICE T grid_sample_window(const GridAxis<T>& ax, const GridAxis<T>& ay,
                                         const scalar_t* plane, int64_t h, int64_t w,
                                         int64_t padding, bool align_corners) {
  T acc = T(0);
  for (int64_t j = 0; j < ay.count; ++j) {
    T unused;
    const T wy = grid_tap_weight(ay, j, unused) * ay.inv_norm;
    const int64_t yi = grid_pad_index(ay.first + j, h, padding, align_corners);
    if (yi < 0) continue;  // zero padding: reads nothing
    const scalar_t* line = plane + yi * w;
    T racc = T(0);
    for (int64_t i = 0; i < ax.count; ++i) {
      const T wx = grid_tap_weight(ax, i, unused) * ax.inv_norm;
      const int64_t xi = grid_pad_index(ax.first + i, w, padding, align_corners);
      if (xi < 0) continue;
      racc += wx * static_cast<T>(line[xi]);
    }
    acc += wy * racc;
  }
  return acc;
}

// --- The footprint estimated from the grid (reference.grid_stretch) -----------------------------

// Tolerance of grid_clamp_stretch for a grid of this dtype (double or not).
template <typename scalar_t>
LATENTX_HOST_DEVICE constexpr double grid_stretch_tolerance() {
  return sizeof(scalar_t) == 8 ? 1e-9 : 1e-4;
}

// reference.clamp_stretch: values <= 1 + tol (no shrinking, or within rounding of it) and NaN
// become 1, values within tol (relative) of an integer become it (a footprint of 4 computed
// as 4 + 5e-7 would add a tap of weight ~1e-7 at each end), and values are capped at cap.
template <typename T>
LATENTX_HOST_DEVICE T grid_clamp_stretch(T s, T cap, T tol) {
  using std::fabs;
  using std::rint;
  s = s > T(1) + tol ? s : T(1);
  const T r = rint(s);  // half to even, as torch.round
  if (fabs(s - r) <= tol * r) s = r;
  return s < cap ? s : cap;
}

// The derivative of the input pixel coordinate along one output axis at sample i of n: central
// differences (g(i+1) - g(i-1)) / 2 inside, one-sided ones at the ends, 0 where n < 2 (as
// torch.gradient). The axis's normalised coordinates are g[j * stride].
template <typename T, typename scalar_t>
LATENTX_HOST_DEVICE T grid_coord_derivative(const scalar_t* g, int64_t stride, int64_t n,
                                            int64_t i, int64_t size, bool align_corners) {
  if (n < 2) return T(0);
  const int64_t lo = i == 0 ? 0 : i - 1, hi = i == n - 1 ? n - 1 : i + 1;
  const T d = grid_unnormalize(static_cast<T>(g[hi * stride]), size, align_corners) -
              grid_unnormalize(static_cast<T>(g[lo * stride]), size, align_corners);
  return hi - lo == 2 ? d / T(2) : d;
}

// reference.grid_stretch at output pixel (r, c) of one sample's grid g [Ho, Wo, 2] for an
// input of H x W: s_x = |(dix/du, dix/dv)|, s_y = |(diy/du, diy/dv)| (u the output column,
// v the row), clamped by grid_clamp_stretch.
template <typename T, typename scalar_t>
LATENTX_HOST_DEVICE void grid_stretch_at(const scalar_t* g, int64_t ho, int64_t wo, int64_t r,
                                         int64_t c, int64_t h, int64_t w, bool align_corners,
                                         T& sx, T& sy) {
  using std::sqrt;
  const T tol = T(grid_stretch_tolerance<scalar_t>());
  const T cap = T(h > w ? h : w);
  const scalar_t* row = g + 2 * r * wo;  // along u: stride 2
  const scalar_t* col = g + 2 * c;       // along v: stride 2 Wo
  const T xu = grid_coord_derivative<T>(row, 2, wo, c, w, align_corners);
  const T xv = grid_coord_derivative<T>(col, 2 * wo, ho, r, w, align_corners);
  const T yu = grid_coord_derivative<T>(row + 1, 2, wo, c, h, align_corners);
  const T yv = grid_coord_derivative<T>(col + 1, 2 * wo, ho, r, h, align_corners);
  sx = grid_clamp_stretch(sqrt(xu * xu + xv * xv), cap, tol);
  sy = grid_clamp_stretch(sqrt(yu * yu + yv * yv), cap, tol);
}

// Input pixels per normalised unit: d(ix)/d(x), the grid gradient's chain-rule factor.
inline double grid_unnormalize_scale(int64_t size, bool align_corners) {
  return align_corners ? (size - 1) / 2.0 : size / 2.0;
}

// Upper bound of GridAxis::count for any stretch <= cap.
inline int64_t grid_max_taps(int64_t cap) {
  return 2 * (static_cast<int64_t>(std::ceil(cap * kGaussianRadiusPerStretch)) + 1);
}

}  // namespace latentx
