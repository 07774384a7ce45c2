// The coefficient map on the GPU: one block per row (grid-stride over rows), the phases of coefficient_map.h with the
// block's threads across each phase's outputs, separated by __syncthreads(). A row's scratch lives in shared memory
// when it fits, else in the block's slice of a global buffer.
#include "coefficients.h"

#include <algorithm>

namespace eqnorm_cuda {
namespace {

constexpr int kThreads = 128;
constexpr int64_t kMostBlocks = 4096;
constexpr size_t kSharedBytes = 48 * 1024;

// A phase: thread t of the block computes outputs begin + t, begin + t + T, ...; then the block synchronizes.
struct BlockRun {
  template <typename F> __device__ void operator()(int64_t begin, int64_t end, F&& body) const {
    for (int64_t o = begin + threadIdx.x; o < end; o += blockDim.x) body(o);
    __syncthreads();
  }
  template <typename V, typename F, typename A>
  __device__ void gather(const eqnorm_map::Sparse<V>& op, int64_t begin, int64_t end, F&& f, A* out) const {
    (*this)(begin, end, [&](int64_t o) { out[o] = op.template apply<A>(o, f); });
  }
  template <typename V, typename F>
  __device__ void by_group(const eqnorm_map::Map<V>& l, const eqnorm_map::Part& q, F&& body) const {
    (*this)(q.c0, q.c1, [&](int64_t c) { body(c, l.group[c]); });
  }
};

// Outputs spread over every thread of the grid: phases that need no synchronization (the parameter gradients).
struct GridRun {
  template <typename F> __device__ void operator()(int64_t begin, int64_t end, F&& body) const {
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t o = begin + int64_t(blockIdx.x) * blockDim.x + threadIdx.x; o < end; o += stride) body(o);
  }
  template <typename V, typename F, typename A>
  __device__ void gather(const eqnorm_map::Sparse<V>& op, int64_t begin, int64_t end, F&& f, A* out) const {
    (*this)(begin, end, [&](int64_t o) { out[o] = op.template apply<A>(o, f); });
  }
};

// A block's scratch: a row's (coefficient_map.h) and each channel's weight and bias (2 C).
__host__ __device__ int64_t scratch_size(int64_t C, int64_t G, int64_t L) { return eqnorm_map::Scratch<char>::size(C, G, L) + 2 * C; }
__host__ __device__ int64_t scratch_size(const eqnorm_map::Map<double>& l) { return scratch_size(l.C, l.G, l.L); }

bool fits_shared(int64_t size, size_t element) { return size_t(size) * element <= kSharedBytes; }

template <typename A> __device__ A* row_scratch(A* global, int64_t size) {
  extern __shared__ __align__(16) unsigned char shared[];
  return global ? global + blockIdx.x * size : reinterpret_cast<A*>(shared);
}

template <typename A> __device__ eqnorm_map::Row<A> row_of(const Statistics<A>& st, int64_t n, int64_t C) {
  return {st.mean + n * C, st.m2 + n * C, st.counts ? st.counts[n] : st.positions, st.eps};
}

// The block's scratch, with the channels' weights and biases (phase 0) computed into its end.
template <typename A> struct BlockScratch {
  eqnorm_map::Scratch<A> row;
  A *wc, *bc;
  __device__ BlockScratch(const eqnorm_map::Map<double>& l, const A* weight, const A* bias, A* base, BlockRun& run)
      : row(l.C, l.G, l.L, base), wc(base + eqnorm_map::Scratch<A>::size(l.C, l.G, l.L)), bc(wc + l.C) {
    eqnorm_map::channel_parameters(l, weight, bias, wc, bc, run);
  }
};

template <typename A>
__global__ void forward_rows(eqnorm_map::Map<double> l, const A* weight, const A* bias, Statistics<A> st, A* a,
                             A* beta, A* global) {
  BlockRun run;
  BlockScratch<A> s(l, weight, bias, row_scratch(global, scratch_size(l)), run);
  const eqnorm_map::Part whole = eqnorm_map::whole_row(l);
  for (int64_t n = blockIdx.x; n < st.rows; n += gridDim.x)  // the same trip count for every thread of the block
    eqnorm_map::forward(l, whole, row_of(st, n, l.C), s.wc, s.bc, s.row, a + n * l.C, beta + n * l.C, run);
}

template <typename A>
__global__ void backward_rows(eqnorm_map::Map<double> l, const A* weight, const A* bias, Statistics<A> st,
                              const A* g_a, const A* g_beta, A* a, A* u, A* v, A* gw, A* global) {
  BlockRun run;
  BlockScratch<A> s(l, weight, bias, row_scratch(global, scratch_size(l)), run);
  const eqnorm_map::Part whole = eqnorm_map::whole_row(l);
  for (int64_t n = blockIdx.x; n < st.rows; n += gridDim.x) {
    const int64_t r = n * l.C;
    eqnorm_map::backward(l, whole, row_of(st, n, l.C), s.wc, g_a + r, g_beta + r, s.row, a + r, u + r, v + r, gw + r,
                         run);
  }
}

template <typename A>
__global__ void parameter_sums(eqnorm_map::Map<double> l, const A* gw, const A* g_beta, A* dweight, A* dbias) {
  GridRun run;
  eqnorm_map::parameter_gradients(l, gw, g_beta, dweight, dbias, run);
}

int blocks_for(int64_t rows) { return int(std::clamp<int64_t>(rows, 1, kMostBlocks)); }

}  // namespace

int64_t coefficient_scratch(int64_t C, int64_t G, int64_t L, int64_t rows, size_t element) {
  const int64_t size = scratch_size(C, G, L);
  return fits_shared(size, element) ? 0 : blocks_for(rows) * size;
}

template <typename A>
cudaError_t coefficients(const eqnorm_map::Map<double>& l, const A* weight, const A* bias, const Statistics<A>& st,
                         A* a, A* beta, A* scratch, cudaStream_t stream) {
  if (st.rows == 0 || l.C == 0) return cudaSuccess;
  const int64_t size = scratch_size(l);
  const size_t shared = fits_shared(size, sizeof(A)) ? size_t(size) * sizeof(A) : 0;
  forward_rows<A><<<blocks_for(st.rows), kThreads, shared, stream>>>(l, weight, bias, st, a, beta,
                                                                     shared ? nullptr : scratch);
  return cudaGetLastError();
}

template <typename A>
cudaError_t coefficients_backward(const eqnorm_map::Map<double>& l, const A* weight, const A* bias,
                                  const Statistics<A>& st, const A* g_a, const A* g_beta, A* a, A* u, A* v, A* gw,
                                  A* scratch, cudaStream_t stream) {
  if (st.rows == 0 || l.C == 0) return cudaSuccess;
  const int64_t size = scratch_size(l);
  const size_t shared = fits_shared(size, sizeof(A)) ? size_t(size) * sizeof(A) : 0;
  backward_rows<A><<<blocks_for(st.rows), kThreads, shared, stream>>>(l, weight, bias, st, g_a, g_beta, a, u, v, gw,
                                                                      shared ? nullptr : scratch);
  return cudaGetLastError();
}

template <typename A>
cudaError_t parameter_gradients(const eqnorm_map::Map<double>& l, const A* gw, const A* g_beta, A* dweight, A* dbias,
                                cudaStream_t stream) {
  const int64_t outputs = std::max(dweight ? l.F : 0, dbias ? l.NB : 0);  // nullptr: not asked for
  if (outputs == 0) return cudaSuccess;
  const int blocks = int(std::min<int64_t>((outputs + kThreads - 1) / kThreads, 1024));
  parameter_sums<A><<<blocks, kThreads, 0, stream>>>(l, gw, g_beta, dweight, dbias);
  return cudaGetLastError();
}

#define EQNORM_INSTANTIATE(A)                                                                                          \
  template cudaError_t coefficients<A>(const eqnorm_map::Map<double>&, const A*, const A*, const Statistics<A>&, A*,   \
                                       A*, A*, cudaStream_t);                                                          \
  template cudaError_t coefficients_backward<A>(const eqnorm_map::Map<double>&, const A*, const A*,                    \
                                                const Statistics<A>&, const A*, const A*, A*, A*, A*, A*, A*,        \
                                                cudaStream_t);                                                         \
  template cudaError_t parameter_gradients<A>(const eqnorm_map::Map<double>&, const A*, const A*, A*, A*, cudaStream_t);
EQNORM_INSTANTIATE(float)
EQNORM_INSTANTIATE(double)

}  // namespace eqnorm_cuda
