// The coefficient map on the GPU: one block per row (grid-stride over rows), the phases of coefficient_rows.h
// separated by __syncthreads(); each block owns one row's scratch in global memory.
#include "coefficients.h"

#include <algorithm>

namespace eqnorm_cuda {
namespace {

constexpr int kThreads = 128;
constexpr int64_t kMostBlocks = 4096;

// A phase runs on every thread of the block, then the block synchronizes.
struct BlockRun {
  template <typename F> __host__ __device__ void operator()(F&& phase) {
#ifdef __CUDA_ARCH__
    phase(int64_t(threadIdx.x), int64_t(blockDim.x));
    __syncthreads();
#endif
  }
};

template <typename A>
__global__ void forward_rows(eqnorm_rows::LayoutView<A> l, eqnorm_rows::Statistics<A> st, A* a, A* beta, A* scratch) {
  BlockRun run;
  eqnorm_rows::Scratch<A> s(l, scratch + blockIdx.x * eqnorm_rows::Scratch<A>::size(l));
  for (int64_t n = blockIdx.x; n < st.rows; n += gridDim.x)  // the same trip count for every thread of the block
    eqnorm_rows::forward_row(l, st, a, beta, n, s, run);
}

template <typename A>
__global__ void backward_rows(eqnorm_rows::LayoutView<A> l, eqnorm_rows::Statistics<A> st,
                              eqnorm_rows::Cotangents<A> ct, A* scratch) {
  BlockRun run;
  eqnorm_rows::Scratch<A> s(l, scratch + blockIdx.x * eqnorm_rows::Scratch<A>::size(l));
  for (int64_t n = blockIdx.x; n < st.rows; n += gridDim.x) eqnorm_rows::backward_row(l, st, ct, n, s, run);
}

template <typename A>
__global__ void parameter_rows(eqnorm_rows::LayoutView<A> l, const A* gw, const A* g_beta, A* dweight, A* dbias) {
  BlockRun run;
  eqnorm_rows::parameter_gradients(l, gw, g_beta, dweight, dbias, run);
}

}  // namespace

int coefficient_blocks(int64_t rows) { return int(std::clamp<int64_t>(rows, 1, kMostBlocks)); }

template <typename A>
cudaError_t coefficients(const eqnorm_rows::LayoutView<A>& l, const eqnorm_rows::Statistics<A>& st, A* a, A* beta,
                         A* scratch, cudaStream_t stream) {
  if (st.rows == 0 || l.C == 0) return cudaSuccess;
  forward_rows<A><<<coefficient_blocks(st.rows), kThreads, 0, stream>>>(l, st, a, beta, scratch);
  return cudaGetLastError();
}

template <typename A>
cudaError_t coefficients_backward(const eqnorm_rows::LayoutView<A>& l, const eqnorm_rows::Statistics<A>& st,
                                  const eqnorm_rows::Cotangents<A>& ct, A* scratch, cudaStream_t stream) {
  if (st.rows == 0 || l.C == 0) return cudaSuccess;
  backward_rows<A><<<coefficient_blocks(st.rows), kThreads, 0, stream>>>(l, st, ct, scratch);
  return cudaGetLastError();
}

template <typename A>
cudaError_t parameter_gradients(const eqnorm_rows::LayoutView<A>& l, const A* gw, const A* g_beta, A* dweight,
                                A* dbias, cudaStream_t stream) {
  if (l.F == 0 && l.NB == 0) return cudaSuccess;
  parameter_rows<A><<<1, kThreads * 2, 0, stream>>>(l, gw, g_beta, dweight, dbias);
  return cudaGetLastError();
}

#define EQNORM_INSTANTIATE(A)                                                                                          \
  template cudaError_t coefficients<A>(const eqnorm_rows::LayoutView<A>&, const eqnorm_rows::Statistics<A>&, A*, A*,  \
                                       A*, cudaStream_t);                                                              \
  template cudaError_t coefficients_backward<A>(const eqnorm_rows::LayoutView<A>&, const eqnorm_rows::Statistics<A>&, \
                                                const eqnorm_rows::Cotangents<A>&, A*, cudaStream_t);                 \
  template cudaError_t parameter_gradients<A>(const eqnorm_rows::LayoutView<A>&, const A*, const A*, A*, A*,          \
                                              cudaStream_t);
EQNORM_INSTANTIATE(float)
EQNORM_INSTANTIATE(double)

}  // namespace eqnorm_cuda
