// Grid sampling with low-pass filtering (SPEC A4): F.grid_sample whose bilinear kernel is
// stretched by each output pixel's footprint in the input and normalised, so a shrinking
// warp does not alias. The footprint (stretch) is an input (warp_affine's exact one), or
// estimated per pixel from the grid's Jacobian where absent (grid_stretch_at); the gradients
// hold it constant.
// The per-axis filter math is in filtered_grid_sample_math.h.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace latentx {

struct GridSampleArgs {
  at::Tensor input;    // [N, C, H, W] contiguous
  at::Tensor grid;     // [N, Ho, Wo, 2] contiguous, input's dtype: (x, y) in [-1, 1]
  at::Tensor stretch;  // [N, Ho, Wo, 2] opmath dtype, strided (stretch_strides): (s_x, s_y) in
                       // input pixels; undefined: estimated from the grid
  int64_t stretch_strides[4] = {0, 0, 0, 0};  // 0 along a dimension the user's stretch broadcasts
  int64_t padding = 0;  // kGridPad*
  bool align_corners = false;
  int64_t filter = 1;   // kGridFilter*
};

GridSampleArgs prepare_filtered_grid_sample(const at::Tensor& input, const at::Tensor& grid,
                                            const std::optional<at::Tensor>& stretch,
                                            int64_t padding_mode, bool align_corners,
                                            int64_t filter);

// Writes out [N, C, Ho, Wo] (contiguous, input's dtype); called only when out is non-empty.
using GridSampleForwardKernel = void (*)(const GridSampleArgs& args, at::Tensor& out);
// grad [N, C, Ho, Wo] contiguous (input's dtype). Accumulates into grad_input [N, C, H, W]
// (opmath dtype, zeroed) and writes grad_grid [N, Ho, Wo, 2] (grid's dtype); an undefined
// one is not wanted.
using GridSampleBackwardKernel = void (*)(const GridSampleArgs& args, const at::Tensor& grad,
                                          at::Tensor& grad_input, at::Tensor& grad_grid);

template <GridSampleForwardKernel Forward>
at::Tensor filtered_grid_sample(const at::Tensor& input, const at::Tensor& grid,
                                const std::optional<at::Tensor>& stretch, int64_t padding_mode,
                                bool align_corners, int64_t filter) {
  const GridSampleArgs a =
      prepare_filtered_grid_sample(input, grid, stretch, padding_mode, align_corners, filter);
  at::Tensor out = at::empty({a.input.size(0), a.input.size(1), a.grid.size(1), a.grid.size(2)},
                             a.input.options());
  if (out.numel() > 0) Forward(a, out);
  return out;
}

template <GridSampleBackwardKernel Backward>
std::tuple<at::Tensor, at::Tensor> filtered_grid_sample_backward(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& grid,
    const std::optional<at::Tensor>& stretch, int64_t padding_mode, bool align_corners, int64_t filter,
    bool needs_input_grad, bool needs_grid_grad) {
  const GridSampleArgs a =
      prepare_filtered_grid_sample(input, grid, stretch, padding_mode, align_corners, filter);
  const int64_t n = a.input.size(0), c = a.input.size(1), ho = a.grid.size(1), wo = a.grid.size(2);
  TORCH_CHECK_VALUE(grad.dim() == 4 && grad.size(0) == n && grad.size(1) == c &&
                        grad.size(2) == ho && grad.size(3) == wo,
                    "filtered_grid_sample_backward: grad must be [", n, ", ", c, ", ", ho, ", ",
                    wo, "], got ", grad.sizes());
  const at::Tensor g = grad.to(a.input.scalar_type()).contiguous();
  const at::ScalarType opmath = a.input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor grad_input = needs_input_grad ? at::zeros(a.input.sizes(), a.input.options().dtype(opmath))
                                           : at::Tensor();
  at::Tensor grad_grid = needs_grid_grad ? at::zeros_like(a.grid) : at::Tensor();
  if (g.numel() > 0 && (needs_input_grad || needs_grid_grad)) Backward(a, g, grad_input, grad_grid);
  // A gradient not asked for comes back empty ([0]): the schema returns tensors.
  return {needs_input_grad ? grad_input.to(a.input.scalar_type()) : at::empty({0}, input.options()),
          needs_grid_grad ? grad_grid : at::empty({0}, grid.options())};
}

}  // namespace latentx
