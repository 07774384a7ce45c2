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

// a, beta (rows, C) from the statistics.
template <typename A>
cudaError_t coefficients(const eqnorm_rows::LayoutView<A>& l, const eqnorm_rows::Statistics<A>& st, A* a, A* beta,
                         A* scratch, cudaStream_t stream);

// a, u, v and gw from the statistics and g_a, g_beta.
template <typename A>
cudaError_t coefficients_backward(const eqnorm_rows::LayoutView<A>& l, const eqnorm_rows::Statistics<A>& st,
                                  const eqnorm_rows::Cotangents<A>& ct, A* scratch, cudaStream_t stream);

// dweight (F,) and dbias (NB,) from gw and g_beta summed over rows (C,).
template <typename A>
cudaError_t parameter_gradients(const eqnorm_rows::LayoutView<A>& l, const A* gw, const A* g_beta, A* dweight,
                                A* dbias, cudaStream_t stream);

}  // namespace eqnorm_cuda
