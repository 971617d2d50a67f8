// Argument checks of filtered_grid_sample; its autograd formula is attached from Python
// (latentx/ops/filtered_grid_sample.py).
#include "ops/filtered_grid_sample.h"

#include <torch/library.h>

#include "common/checks.h"
#include "ops/filtered_grid_sample_math.h"

namespace latentx {

GridSampleArgs prepare_filtered_grid_sample(const at::Tensor& input, const at::Tensor& grid,
                                            const std::optional<at::Tensor>& stretch,
                                            int64_t padding_mode, bool align_corners,
                                            int64_t filter) {
  constexpr const char* op = "filtered_grid_sample";
  check_float(op, "input", input);
  TORCH_CHECK_VALUE(input.dim() == 4, op, ": input must be [N, C, H, W], got shape ",
                    input.sizes());
  const int64_t n = input.size(0);
  TORCH_CHECK_VALUE(input.size(2) >= 1 && input.size(3) >= 1, op,
                    ": input must have H >= 1 and W >= 1, got shape ", input.sizes());
  check_float(op, "grid", grid);
  TORCH_CHECK_VALUE(grid.device() == input.device(), op,
                    ": grid must be on the same device as input (", input.device(), "), got ",
                    grid.device());
  TORCH_CHECK_TYPE(grid.scalar_type() == input.scalar_type(), op,
                   ": grid must have the same dtype as input (", input.scalar_type(), "), got ",
                   grid.scalar_type());
  TORCH_CHECK_VALUE(grid.dim() == 4 && grid.size(0) == n && grid.size(3) == 2, op,
                    ": grid must be [", n, ", Ho, Wo, 2] (x, y in [-1, 1]), got shape ",
                    grid.sizes());
  if (stretch.has_value()) {
    check_float(op, "stretch", *stretch);
    TORCH_CHECK_VALUE(stretch->device() == input.device(), op,
                      ": stretch must be on the same device as input (", input.device(),
                      "), got ", stretch->device());
    bool broadcasts = stretch->dim() == 4 && stretch->size(3) == 2;
    for (int64_t d = 0; d < 3 && broadcasts; ++d)
      broadcasts = stretch->size(d) == grid.size(d) || stretch->size(d) == 1;
    TORCH_CHECK_VALUE(broadcasts, op, ": stretch must have grid's shape ", grid.sizes(),
                      " or broadcast to it (size 1 in N, Ho or Wo), got ", stretch->sizes());
  }
  TORCH_CHECK_VALUE(padding_mode == kGridPadZeros || padding_mode == kGridPadBorder ||
                        padding_mode == kGridPadReflection,
                    op, ": padding_mode must be 0 (zeros), 1 (border) or 2 (reflection), got ",
                    padding_mode);
  TORCH_CHECK_VALUE(filter == kGridFilterNone || filter == kGridFilterTent ||
                        filter == kGridFilterGaussian,
                    op, ": filter must be 0 (none), 1 (tent) or 2 (gaussian), got ", filter);
  const at::ScalarType opmath = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  GridSampleArgs a;
  a.input = input.contiguous();
  a.grid = grid.contiguous();
  if (stretch.has_value()) {
    // A view: a footprint per sample ([N, 1, 1, 2], warp_affine's) is not copied per pixel.
    a.stretch = stretch->to(opmath).expand(grid.sizes());
    for (int64_t d = 0; d < 4; ++d) a.stretch_strides[d] = a.stretch.stride(d);
  }
  a.padding = padding_mode;
  a.align_corners = align_corners;
  a.filter = filter;
  return a;
}

}  // namespace latentx

// filtered_grid_sample_backward's autograd kernel is registered from Python
// (latentx/ops/filtered_grid_sample.py): differentiating it raises (no double backward), instead
// of a silently graph-less gradient.
