// The per-(sample, channel) coefficient map of the normalization and its vector-Jacobian product, fused into one
// kernel each (see eqnorm/coefficients.py for the formulas). Free of torch headers.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "../centering.h"

namespace eqnorm_cuda {

template <typename A> using Centering = eqnorm_layout::Centering<A>;
template <typename A> using Positions = eqnorm_layout::Positions<A>;

// Shared memory one block needs; kernels are launched only when it fits.
size_t coefficient_shared_bytes(int64_t channels, int64_t classes, int64_t groups, bool dbl);

// a = w * rstd, beta = b - a * cen, per sample.
template <typename A>
cudaError_t coefficients(const A* mean, const A* m2, const A* weight, const A* bias, Centering<A> op, Positions<A> pos,
                         A eps, int64_t samples, A* a, A* beta, cudaStream_t stream);

// From grad_a = sum dy*x and grad_beta = sum dy: a, u, v of affine_backward (dx = a dy + u x + v) and the
// per-sample weight gradient (summed over samples by the caller).
template <typename A>
cudaError_t coefficients_backward(const A* grad_a, const A* grad_beta, const A* mean, const A* m2, const A* weight,
                                  Centering<A> op, Positions<A> pos, A eps, int64_t samples, A* a, A* u, A* v,
                                  A* grad_weight, cudaStream_t stream);

}  // namespace eqnorm_cuda
