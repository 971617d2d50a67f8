// Argument checks and the device-independent parts (mask weighting, reduction) of the LPIPS
// head op; its autograd formula is attached from Python (latentx/ops/lpips_head.py).
#include "ops/lpips_head.h"

#include <torch/library.h>

#include "common/checks.h"

namespace latentx {

LpipsHeadArgs prepare_lpips_head(const at::Tensor& feat0, const at::Tensor& feat1,
                                 const at::Tensor& weight, const std::optional<at::Tensor>& mask,
                                 bool spatial) {
  constexpr const char* op = "lpips_head";
  check_float(op, "feat0", feat0);
  TORCH_CHECK_VALUE(feat0.dim() == 4, op, ": feat0 must be [N, C, H, W], got shape ",
                    feat0.sizes());
  check_float(op, "feat1", feat1);
  TORCH_CHECK_VALUE(feat1.device() == feat0.device() && feat1.scalar_type() == feat0.scalar_type(),
                    op, ": feat1 must match feat0's device and dtype (", feat0.device(), ", ",
                    feat0.scalar_type(), "), got (", feat1.device(), ", ", feat1.scalar_type(), ")");
  const int64_t n = feat0.size(0), c = feat0.size(1), h = feat0.size(2), w = feat0.size(3);
  TORCH_CHECK_VALUE(feat1.dim() == 4 && (feat1.size(0) == n || feat1.size(0) == 1) &&
                        feat1.size(1) == c && feat1.size(2) == h && feat1.size(3) == w,
                    op, ": feat1 must be [", n, " or 1, ", c, ", ", h, ", ", w, "], got ",
                    feat1.sizes());
  check_float(op, "weight", weight);
  TORCH_CHECK_VALUE(weight.device() == feat0.device(), op,
                    ": weight must be on feat0's device (", feat0.device(), "), got ",
                    weight.device());
  TORCH_CHECK_VALUE(weight.dim() == 1 && weight.size(0) == c, op, ": weight must be [", c,
                    "], got ", weight.sizes());
  const at::ScalarType opmath = feat0.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  LpipsHeadArgs a;
  if (mask.has_value()) {
    TORCH_CHECK_VALUE(!spatial, op, ": mask weights the spatial reduction; with spatial=True "
                      "there is none (multiply the returned map instead)");
    check_float(op, "mask", *mask);
    TORCH_CHECK_VALUE(mask->device() == feat0.device(), op, ": mask must be on feat0's device (",
                      feat0.device(), "), got ", mask->device());
    TORCH_CHECK_VALUE(mask->dim() == 4 && (mask->size(0) == n || mask->size(0) == 1) &&
                          mask->size(1) == 1 && mask->size(2) == h && mask->size(3) == w,
                      op, ": mask must be [", n, " or 1, 1, ", h, ", ", w,
                      "] (resized to the layer), got ", mask->sizes());
    a.mask = mask->to(opmath).contiguous();
    // Host-side value checks, one transfer (on CUDA it waits for the device): NaN, values
    // outside [0, 1] or a sample without weight would give NaN (0/0) or a meaningless mean.
    const at::Tensor m = a.mask.view({a.mask.size(0), h * w});
    const at::Tensor ok = at::stack({m.ge(0).logical_and(m.le(1)).all(), m.sum(1).gt(0).all()}).cpu();
    TORCH_CHECK_VALUE(ok[0].item<bool>(), op, ": mask values must lie in [0, 1] (NaN is not allowed)");
    TORCH_CHECK_VALUE(ok[1].item<bool>(), op, ": mask must have a positive value for every sample "
                      "at the layer's resolution (an all-zero mask gives 0/0)");
  }
  a.feat0 = feat0.contiguous();
  a.feat1 = feat1.contiguous();
  a.weight = weight.to(opmath).contiguous();
  a.spatial = spatial;
  return a;
}

at::Tensor lpips_head_reduce(const LpipsHeadArgs& a, const at::Tensor& d) {
  const int64_t n = a.feat0.size(0), h = a.feat0.size(2), w = a.feat0.size(3);
  const auto dtype = a.feat0.scalar_type();
  if (a.spatial) return d.view({n, 1, h, w}).to(dtype);
  if (!a.mask.defined()) return d.mean(1).to(dtype);
  const at::Tensor m = a.mask.view({-1, h * w});
  return ((d * m).sum(1) / m.sum(1)).to(dtype);
}

at::Tensor lpips_head_coef(const LpipsHeadArgs& a, const at::Tensor& grad_out) {
  const int64_t n = a.feat0.size(0), h = a.feat0.size(2), w = a.feat0.size(3);
  const at::ScalarType opmath = a.weight.scalar_type();
  const at::Tensor g = grad_out.to(opmath);
  if (a.spatial) return g.reshape({n, h * w}).contiguous();
  if (!a.mask.defined()) return (g.reshape({n, 1}) / static_cast<double>(h * w)).expand({n, h * w}).contiguous();
  const at::Tensor m = a.mask.view({-1, h * w});
  return (g.reshape({n, 1}) * m / m.sum(1, /*keepdim=*/true)).expand({n, h * w}).contiguous();
}

}  // namespace latentx

// lpips_head_backward's autograd kernel is registered from Python (latentx/ops/lpips_head.py):
// differentiating it raises (no double backward), instead of a silently graph-less gradient.
