// Per-position LPIPS head math shared by the CPU and CUDA kernels (see lpips_head.h).
//   forward:  d = sum_c w_c (a_c inv0 - b_c inv1)^2,  inv = 1 / (|f| + eps)
//   backward: with g_c = 2 w_c (a_c inv0 - b_c inv1) = dd/du_c and r = |f|,
//     dd/da_k =  g_k inv0 - (sum_c g_c a_c) a_k inv0^2 / r0
//     dd/db_k = -g_k inv1 + (sum_c g_c b_c) b_k inv1^2 / r1
//   The second terms are O(|f|) as f -> 0 and are taken as 0 at f = 0, where lpips' autograd
//   gives NaN (its issue #69): the gradient stays finite.
#pragma once

#include "common/host_device.h"

namespace latentx {

// The factor multiplying a_k (or b_k) in the second backward term: G inv^2 / r, 0 at r = 0.
template <typename T>
LATENTX_HOST_DEVICE T lpips_radial_factor(T dot, T inv, T r) {
  const T safe_r = r > T(0) ? r : T(1);
  return r > T(0) ? dot * inv * inv / safe_r : T(0);
}

}  // namespace latentx
