// The coefficient map on the GPU, free of torch headers: a block per row runs the phases of coefficient_map.h with its
// threads across each phase's outputs. A is float (for half, bfloat16 and float x) or double; the layout's values
// are read as double.
#pragma once

#include <cuda_runtime.h>

#include "../coefficient_map.h"

namespace eqnorm_cuda {

// The statistics of a call: `rows` rows of mean and M2 over counts[n] values (ragged) or `positions`.
template <typename A> struct Statistics {
  int64_t rows;
  const A *mean, *m2, *counts;
  A positions, eps;
};

// Elements of A of global scratch the map needs for `rows` rows (0 when a row's scratch fits in shared memory).
int64_t coefficient_scratch(int64_t C, int64_t G, int64_t L, int64_t rows, size_t element);

// a, beta (rows, C) from the statistics.
template <typename A>
cudaError_t coefficients(const eqnorm_map::Map<double>& l, const A* weight, const A* bias, const Statistics<A>& st,
                         A* a, A* beta, A* scratch, cudaStream_t stream);

// a, u, v and the weight cotangent per channel gw (rows, C), from g_a = sum dy x and g_beta = sum dy.
template <typename A>
cudaError_t coefficients_backward(const eqnorm_map::Map<double>& l, const A* weight, const A* bias,
                                  const Statistics<A>& st, const A* g_a, const A* g_beta, A* a, A* u, A* v, A* gw,
                                  A* scratch, cudaStream_t stream);

// dweight (F,) and dbias (NB,) from gw and g_beta summed over rows (C,); either may be nullptr (not asked for).
// weight and bias, above, may be nullptr too: a weight of 1, a bias of 0.
template <typename A>
cudaError_t parameter_gradients(const eqnorm_map::Map<double>& l, const A* gw, const A* g_beta, A* dweight, A* dbias,
                                cudaStream_t stream);

}  // namespace eqnorm_cuda
