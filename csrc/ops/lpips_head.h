// The LPIPS per-layer head (SPEC A3; lpips v0.1 with seed 003's mask, Appendix B eq. 7):
//   u = f0 / (|f0|_c + eps),  v = f1 / (|f1|_c + eps)        (unit-normalise over channels)
//   d[n, h, w] = sum_c w_c (u_c - v_c)^2                     (lpips' linear layer, w >= 0)
//   out[n] = sum_hw m d / sum_hw m   (the plain spatial mean without a mask), or d itself.
// The device kernels compute the channel reductions (the costly part: C x H x W per sample);
// the [N, H*W] mask weighting and reduction are shared ATen code.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace latentx {

constexpr double kLpipsEps = 1e-10;  // lpips.normalize_tensor's eps, added to the norm

struct LpipsHeadArgs {
  at::Tensor feat0;   // [N, C, H, W] contiguous
  at::Tensor feat1;   // [N or 1, C, H, W] contiguous; size(0) == 1 broadcasts the target
  at::Tensor weight;  // [C] contiguous, opmath dtype
  at::Tensor mask;    // [N or 1, 1, H, W] contiguous, opmath dtype; undefined: plain mean
  bool spatial = false;
};

LpipsHeadArgs prepare_lpips_head(const at::Tensor& feat0, const at::Tensor& feat1,
                                 const at::Tensor& weight, const std::optional<at::Tensor>& mask,
                                 bool spatial);

// d [N, H*W] (opmath dtype) from the features: the forward channel reduction.
using LpipsDistanceKernel = at::Tensor (*)(const LpipsHeadArgs& args);
// Given coef [N, H*W] = d out / d d (opmath), writes grad0 and grad1, both [N, C, H, W]
// (per sample, before any broadcast reduction); an undefined output is not wanted.
using LpipsBackwardKernel = void (*)(const LpipsHeadArgs& args, const at::Tensor& coef,
                                     at::Tensor& grad0, at::Tensor& grad1);

// d out / d d for every sample and position: the upstream gradient spread by the mask.
at::Tensor lpips_head_coef(const LpipsHeadArgs& a, const at::Tensor& grad_out);
// The reduction of d [N, H*W] to the op's output.
at::Tensor lpips_head_reduce(const LpipsHeadArgs& a, const at::Tensor& d);

template <LpipsDistanceKernel Distance>
at::Tensor lpips_head(const at::Tensor& feat0, const at::Tensor& feat1, const at::Tensor& weight,
                      const std::optional<at::Tensor>& mask, bool spatial) {
  const LpipsHeadArgs a = prepare_lpips_head(feat0, feat1, weight, mask, spatial);
  return lpips_head_reduce(a, Distance(a));
}

template <LpipsBackwardKernel Backward>
std::tuple<at::Tensor, at::Tensor> lpips_head_backward(
    const at::Tensor& grad_out, const at::Tensor& feat0, const at::Tensor& feat1,
    const at::Tensor& weight, const std::optional<at::Tensor>& mask, bool spatial,
    bool needs_grad0, bool needs_grad1) {
  const LpipsHeadArgs a = prepare_lpips_head(feat0, feat1, weight, mask, spatial);
  const at::Tensor coef = lpips_head_coef(a, grad_out);
  at::Tensor grad0 = needs_grad0 ? at::empty_like(a.feat0) : at::Tensor();
  at::Tensor grad1 = needs_grad1 ? at::empty_like(a.feat0) : at::Tensor();
  if (a.feat0.numel() > 0 && (needs_grad0 || needs_grad1)) Backward(a, coef, grad0, grad1);
  if (needs_grad1 && a.feat1.size(0) != a.feat0.size(0)) {
    grad1 = grad1.sum(0, /*keepdim=*/true);  // the broadcast target collects every sample's
  }
  // A gradient not asked for comes back empty ([0]): the schema returns tensors.
  return {needs_grad0 ? grad0 : at::empty({0}, feat0.options()),
          needs_grad1 ? grad1 : at::empty({0}, feat0.options())};
}

}  // namespace latentx
