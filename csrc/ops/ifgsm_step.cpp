// Argument checking shared by the CPU and CUDA kernels of ifgsm_step, and its autograd
// registration (none: the step is an optimizer update, like torch.optim's).
#include "ops/ifgsm_step.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/checks.h"

namespace latentx {

IfgsmStepArgs prepare_ifgsm_step(const at::Tensor& z, const at::Tensor& grad, double step_size,
                                 const std::optional<at::Tensor>& step_sizes,
                                 const std::optional<at::Tensor>& anchor,
                                 std::optional<double> radius,
                                 const std::optional<at::Tensor>& radii,
                                 std::optional<double> lower, std::optional<double> upper,
                                 bool ascend) {
  constexpr const char* op = "ifgsm_step";
  check_float(op, "z", z);
  check_like(op, "grad", grad, "z", z);
  const at::ScalarType opmath = z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;

  IfgsmStepArgs args;
  args.ascend = ascend;
  args.z = z.contiguous();
  args.grad = grad.contiguous();
  const int64_t rows = z.dim() == 0 ? 1 : z.size(0);
  args.inner = rows == 0 ? 0 : z.numel() / rows;

  if (step_sizes.has_value()) {
    args.step_sizes = per_sample(op, "step_size", *step_sizes, z, opmath);
    if (args.z.numel() > 0) check_nonnegative(op, "step_size", args.step_sizes, false);
    if (ascend) args.step_sizes = args.step_sizes.neg();
  } else {
    check_nonnegative(op, "step_size", step_size, false);
    args.step_size = ascend ? -step_size : step_size;
  }

  const bool has_radius = radius.has_value() || radii.has_value();
  TORCH_CHECK_VALUE(anchor.has_value() == has_radius, op,
                    ": anchor and radius go together (the l-inf ball of radius r around the "
                    "anchor); got ", anchor.has_value() ? "an anchor without a radius"
                                                       : "a radius without an anchor");
  if (anchor.has_value()) {
    check_like(op, "anchor", *anchor, "z", z);
    args.anchor = anchor->contiguous();
    if (radii.has_value()) {
      args.radii = per_sample(op, "radius", *radii, z, opmath);
      if (args.z.numel() > 0) check_nonnegative(op, "radius", args.radii, true);
    } else {
      check_nonnegative(op, "radius", *radius, true);
      args.radius = *radius;
    }
  }

  check_box(op, lower, upper);
  if (lower.has_value()) args.lower = *lower;
  if (upper.has_value()) args.upper = *upper;
  return args;
}

}  // namespace latentx

// The step has no derivative to offer (it is an update, not a function to differentiate):
// autograd falls through, so outputs never carry a grad_fn, exactly like the reference run
// under torch.no_grad().
TORCH_LIBRARY_IMPL(latentx, Autograd, m) {
  m.impl("ifgsm_step", torch::CppFunction::makeFallthrough());
  m.impl("ifgsm_step_", torch::CppFunction::makeFallthrough());
}
