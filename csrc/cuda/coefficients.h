// The coefficient map on the GPU, free of torch headers: one thread block per row runs the phases of
// coefficient_rows.h. A and the statistics are float (for half, bfloat16 and float x) or double.
#pragma once

#include <cuda_runtime.h>

#include "../coefficient_rows.h"

namespace eqnorm_cuda {

// Blocks the kernels launch for `rows` rows, and the scratch they need (elements of A).
int coefficient_blocks(int64_t rows);
template <typename A> int64_t coefficient_scratch(const eqnorm_rows::LayoutView<A>& l, int64_t rows) {
  return coefficient_blocks(rows) * eqnorm_rows::Scratch<A>::size(l);
}

// a, beta (rows, C) from mean, m2 (rows, C) over `positions` values per row, or counts[n] for row n when counts is set.
template <typename A>
cudaError_t coefficients(const eqnorm_rows::LayoutView<A>& l, const A* mean, const A* m2, A positions, const A* counts,
                         A eps, A* a, A* beta, int64_t rows, A* scratch, cudaStream_t stream);

// a, u, v and the per-channel weight cotangent gw (rows, C) from g_a = sum dy x and g_beta = sum dy (rows, C).
template <typename A>
cudaError_t coefficients_backward(const eqnorm_rows::LayoutView<A>& l, const A* mean, const A* m2, A positions,
                                  const A* counts, A eps, const A* g_a, const A* g_beta, A* a, A* u, A* v, A* gw,
                                  int64_t rows, A* scratch, cudaStream_t stream);

// dweight (F,) and dbias (NB,) from gw and g_beta summed over rows (C,).
template <typename A>
cudaError_t parameter_gradients(const eqnorm_rows::LayoutView<A>& l, const A* gw, const A* g_beta, A* dweight,
                                A* dbias, cudaStream_t stream);

}  // namespace eqnorm_cuda
