// The compiled module latentx._C: a pybind11 module that reports the build's facts, and
// whose loading runs every TORCH_LIBRARY registration. Every op schema is declared here,
// once; each device registers its kernels in ops/<device>/<op>_kernel.*.
#include <ATen/Parallel.h>
#include <pybind11/pybind11.h>
#include <torch/library.h>
#include <torch/version.h>

#ifndef LATENTX_CUDA_ARCHS
#define LATENTX_CUDA_ARCHS ""
#endif
#ifndef LATENTX_CUDA_VERSION
#define LATENTX_CUDA_VERSION ""
#endif

TORCH_LIBRARY(latentx, m) {
  // step_sizes / radii (one value per sample, [B]) replace step_size / radius when given.
  m.def(
      "ifgsm_step(Tensor z, Tensor grad, float step_size, Tensor? step_sizes, Tensor? anchor, "
      "float? radius, Tensor? radii, float? lower, float? upper, bool ascend) -> Tensor");
  m.def(
      "ifgsm_step_(Tensor(a!) z, Tensor grad, float step_size, Tensor? step_sizes, "
      "Tensor? anchor, float? radius, Tensor? radii, float? lower, float? upper, "
      "bool ascend) -> ()");

  // Batched CMA-ES (SPEC A1). noise [B,L,d], mean [B,d], sigma [B], eigvecs [B,d,d] (None:
  // diagonal CMA), sqrt_eigvals [B,d] -> (x, y) [B,L,d].
  m.def(
      "cma_sample(Tensor noise, Tensor mean, Tensor sigma, Tensor? eigvecs, Tensor sqrt_eigvals, "
      "float? lower, float? upper) -> (Tensor, Tensor)");
  // cov [B,d,d], pc [B,d], y [B,k,d], weights [B,k] or [k], decay [B]:
  // decay*cov + c1*pc pc^T + cmu*sum_k w_k y_k y_k^T.
  m.def(
      "cma_covariance_update(Tensor cov, Tensor pc, Tensor y, Tensor weights, Tensor decay, "
      "float c1, float cmu) -> Tensor");
  m.def(
      "cma_covariance_update_(Tensor(a!) cov, Tensor pc, Tensor y, Tensor weights, "
      "Tensor decay, float c1, float cmu) -> ()");
  // The lazy decomposition of B covariances: cov [B,d,d] (symmetric; the lower triangle is
  // read) -> (eigvals [B,d] ascending, eigvecs [B,d,d] in columns), as torch.linalg.eigh.
  m.def("cma_eigh(Tensor cov) -> (Tensor, Tensor)");

  // LPIPS per-layer head (SPEC A3). feat0 [N,C,H,W], feat1 [N or 1,C,H,W], weight [C],
  // mask [N or 1,1,H,W] at the layer's size -> [N] (or the [N,1,H,W] map when spatial).
  m.def(
      "lpips_head(Tensor feat0, Tensor feat1, Tensor weight, Tensor? mask, bool spatial) "
      "-> Tensor");
  // Gradients w.r.t. feat0 and feat1 (feat1's summed over N when it broadcasts); one not
  // asked for comes back as an empty [0] tensor.
  m.def(
      "lpips_head_backward(Tensor grad, Tensor feat0, Tensor feat1, Tensor weight, "
      "Tensor? mask, bool spatial, bool needs_grad0, bool needs_grad1) -> (Tensor, Tensor)");

  // Grid sample with low-pass filtering (SPEC A4). input [N,C,H,W], grid [N,Ho,Wo,2] in
  // [-1,1], stretch [N,Ho,Wo,2] = footprint (s_x, s_y) in input pixels (held constant), or
  // None: estimated from the grid (reference.grid_stretch); padding_mode 0 zeros / 1 border /
  // 2 reflection; filter 0 none / 1 tent / 2 gaussian -> [N,C,Ho,Wo].
  m.def(
      "filtered_grid_sample(Tensor input, Tensor grid, Tensor? stretch, int padding_mode, "
      "bool align_corners, int filter) -> Tensor");
  // Gradients w.r.t. input and grid; one not asked for comes back as an empty [0] tensor.
  m.def(
      "filtered_grid_sample_backward(Tensor grad, Tensor input, Tensor grid, Tensor? stretch, "
      "int padding_mode, bool align_corners, int filter, bool needs_input_grad, "
      "bool needs_grid_grad) -> (Tensor, Tensor)");
}

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "latentx native library: build facts; ops live under torch.ops.latentx";
  m.def(
      "build_info",
      [] {
        py::dict info;
        info["torch_version"] = TORCH_VERSION;
#ifdef LATENTX_WITH_CUDA
        info["cuda"] = true;
#else
        info["cuda"] = false;
#endif
        info["cuda_version"] = LATENTX_CUDA_VERSION;
        info["cuda_archs"] = LATENTX_CUDA_ARCHS;
#ifdef _OPENMP
        info["openmp"] = true;
#else
        info["openmp"] = false;
#endif
        info["num_threads"] = at::get_num_threads();
        return info;
      },
      "Facts about this build: torch it was built against, CUDA, architectures, OpenMP.");
}
