// Helpers shared by the CPU kernels.
#pragma once

// Compile a hot loop for AVX-512, AVX2 and baseline x86-64, chosen once at load time by the
// CPU it runs on (as ATen does for its own kernels). Elsewhere: one baseline build.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define LATENTX_CPU_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LATENTX_CPU_MULTIVERSION
#endif

namespace latentx {

// Elements per at::parallel_for chunk for elementwise kernels: large enough that thread
// start-up is noise.
constexpr int64_t kElementwiseGrain = 32768;

}  // namespace latentx
