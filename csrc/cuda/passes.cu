// The four normalization passes on the GPU (see passes.h for the row layouts).
//
// Reductions: one warp per (row, split) for channels-first rows, a 32x8 block per (sample, 32 channels, split) for
// channels-last and ragged rows. Each thread keeps a Welford state (or plain sums for the backward pass), states are
// merged with Chan's formula in a fixed order, and rows split for parallelism at small N are merged by a second
// kernel in split order: the result depends only on the sizes, never on scheduling (no atomics).
// Elementwise passes: 16-byte loads and stores where the layout allows, 64-bit indices throughout.
#include "passes.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

namespace eqnorm_cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kBlock = 256;
constexpr int kColumns = 8;  // rows of the 32x8 channels-last block

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename A> __device__ __forceinline__ A to_acc(float v) { return v; }
template <typename A> __device__ __forceinline__ A to_acc(double v) { return v; }
template <typename A> __device__ __forceinline__ A to_acc(__half v) { return __half2float(v); }
template <typename A> __device__ __forceinline__ A to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(float v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <typename T> __device__ __forceinline__ T from_acc(double v) { return v; }

// Mean and sum of squared deviations of the values pushed so far.
template <typename A> struct Welford {
  A n = 0, mean = 0, m2 = 0;
  __device__ void push(A x, A) {
    n += 1;
    const A d = x - mean;
    mean += d / n;
    m2 += d * (x - mean);
  }
  __device__ void merge(const Welford& o) {
    if (o.n == 0) return;
    if (n == 0) { *this = o; return; }
    const A total = n + o.n, d = o.mean - mean, f = o.n / total;
    mean += d * f;
    m2 += o.m2 + d * d * n * f;
    n = total;
  }
  __device__ Welford shfl_down(int offset) const {
    Welford o;
    o.n = __shfl_down_sync(0xffffffffu, n, offset);
    o.mean = __shfl_down_sync(0xffffffffu, mean, offset);
    o.m2 = __shfl_down_sync(0xffffffffu, m2, offset);
    return o;
  }
  __device__ void store(A* first, A* second, int64_t row) const { first[row] = mean; second[row] = m2; }
};

// sum dy and sum dy * x (the first pushed value is dy, the second x).
template <typename A> struct Sums {
  A dy = 0, dy_x = 0;
  __device__ void push(A g, A x) { dy += g; dy_x += g * x; }
  __device__ void merge(const Sums& o) { dy += o.dy; dy_x += o.dy_x; }
  __device__ Sums shfl_down(int offset) const {
    Sums o;
    o.dy = __shfl_down_sync(0xffffffffu, dy, offset);
    o.dy_x = __shfl_down_sync(0xffffffffu, dy_x, offset);
    return o;
  }
  __device__ void store(A* first, A* second, int64_t row) const { first[row] = dy; second[row] = dy_x; }
};

template <typename T> struct alignas(16) Vec { T v[16 / sizeof(T)]; };

// Push element i: for moments the value x[i]; for sums the pair (dy[i], x[i]).
template <typename T, typename State>
__device__ __forceinline__ void push_at(State& s, const T* first, const T* second, int64_t i) {
  using A = typename Acc<T>::type;
  if (second == nullptr) s.push(to_acc<A>(first[i]), A(0));
  else s.push(to_acc<A>(first[i]), to_acc<A>(second[i]));
}

template <typename T, typename State>
__device__ __forceinline__ void push_vec(State& s, const T* first, const T* second, int64_t i) {
  using A = typename Acc<T>::type;
  constexpr int V = 16 / sizeof(T);
  const Vec<T> a = *reinterpret_cast<const Vec<T>*>(first + i);
  if (second == nullptr) {
#pragma unroll
    for (int j = 0; j < V; ++j) s.push(to_acc<A>(a.v[j]), A(0));
  } else {
    const Vec<T> b = *reinterpret_cast<const Vec<T>*>(second + i);
#pragma unroll
    for (int j = 0; j < V; ++j) s.push(to_acc<A>(a.v[j]), to_acc<A>(b.v[j]));
  }
}

// Channels-first rows: one warp per (row, split); chunk is a multiple of the vector width when vectorized.
template <typename T, typename State>
__global__ void reduce_rows(const T* first, const T* second, int64_t rows, int64_t positions, int64_t splits,
                            int64_t chunk, bool vectorized, typename Acc<T>::type* out1,
                            typename Acc<T>::type* out2, State* partial) {
  constexpr int V = 16 / sizeof(T);
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / kWarp);
  for (int64_t item = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp; item < rows * splits; item += warps) {
    const int64_t row = item / splits, split = item % splits;
    const int64_t begin = split * chunk, end = min(positions, begin + chunk), base = row * positions;
    State s;
    if (vectorized) {
      for (int64_t p = begin + int64_t(lane) * V; p < end; p += int64_t(kWarp) * V) push_vec<T>(s, first, second, base + p);
    } else {
      for (int64_t p = begin + lane; p < end; p += kWarp) push_at<T>(s, first, second, base + p);
    }
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) s.merge(s.shfl_down(offset));
    if (lane == 0) {
      if (splits == 1) s.store(out1, out2, row);
      else partial[item] = s;
    }
  }
}

// Channels-last and ragged rows: a 32x8 block per (sample, 32 channels, split); threadIdx.x walks the channels.
template <typename T, typename State>
__global__ void reduce_columns(const T* first, const T* second, int64_t samples, int64_t channels, int64_t positions,
                               const int64_t* ptr, int64_t splits, typename Acc<T>::type* out1,
                               typename Acc<T>::type* out2, State* partial) {
  // raw storage: __shared__ variables cannot have constructors
  __shared__ alignas(State) unsigned char storage[sizeof(State) * kColumns * kWarp];
  State(*shared)[kWarp] = reinterpret_cast<State(*)[kWarp]>(storage);
  const int64_t c = int64_t(blockIdx.x) * kWarp + threadIdx.x;
  const int64_t split = blockIdx.y;
  for (int64_t n = blockIdx.z; n < samples; n += gridDim.z) {
    const int64_t start = ptr ? ptr[n] : n * positions;
    const int64_t length = ptr ? ptr[n + 1] - start : positions;
    const int64_t chunk = (length + splits - 1) / splits;
    const int64_t begin = split * chunk, end = min(length, begin + chunk);
    State s;
    if (c < channels) {
      for (int64_t p = begin + threadIdx.y; p < end; p += kColumns) push_at<T>(s, first, second, (start + p) * channels + c);
    }
    shared[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < channels) {
      for (int k = 1; k < kColumns; ++k) s.merge(shared[k][threadIdx.x]);
      const int64_t row = n * channels + c;
      if (splits == 1) s.store(out1, out2, row);
      else partial[row * splits + split] = s;
    }
    __syncthreads();
  }
}

// Merge each row's splits in split order.
template <typename A, typename State>
__global__ void merge_splits(const State* partial, int64_t rows, int64_t splits, A* out1, A* out2) {
  for (int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; row < rows; row += int64_t(gridDim.x) * blockDim.x) {
    State s = partial[row * splits];
    for (int64_t k = 1; k < splits; ++k) s.merge(partial[row * splits + k]);
    s.store(out1, out2, row);
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// How many pieces each row is cut into so that at least ~4 waves of warps (blocks) cover the GPU.
int64_t split_count(Rows rows, int num_sms) {
  if (rows.ptr != nullptr) return 1;
  const int64_t min_piece = rows.channels_last ? 64 : 512;
  const int64_t items = rows.channels_last ? rows.samples * ceil_div(rows.channels, kWarp)
                                           : rows.samples * rows.channels;
  const int64_t wanted = rows.channels_last ? int64_t(num_sms) * 16 : int64_t(num_sms) * 64 * 4;
  const int64_t most = std::max<int64_t>(1, ceil_div(rows.positions, min_piece));
  return std::clamp<int64_t>(ceil_div(wanted, std::max<int64_t>(items, 1)), 1, most);
}

int grid_for(int64_t work, int threads) {
  return int(std::clamp<int64_t>(ceil_div(work, threads), 1, 65535LL * 32));
}

template <typename T, typename State>
cudaError_t reduce(const T* first, const T* second, void* out1, void* out2, Rows rows, void* workspace, int num_sms,
                   cudaStream_t stream) {
  using A = typename Acc<T>::type;
  constexpr int V = 16 / sizeof(T);
  A* o1 = static_cast<A*>(out1);
  A* o2 = static_cast<A*>(out2);
  State* partial = static_cast<State*>(workspace);
  const int64_t nrows = rows.samples * rows.channels;
  if (nrows == 0) return cudaSuccess;
  const int64_t splits = split_count(rows, num_sms);
  if (rows.channels_last) {
    const dim3 block(kWarp, kColumns);
    const dim3 grid(unsigned(ceil_div(rows.channels, kWarp)), unsigned(splits),
                    unsigned(std::min<int64_t>(rows.samples, 65535)));
    reduce_columns<T, State><<<grid, block, 0, stream>>>(first, second, rows.samples, rows.channels, rows.positions,
                                                         rows.ptr, splits, o1, o2, partial);
  } else {
    const bool vectorized = rows.positions % V == 0 && aligned16(first) && (second == nullptr || aligned16(second));
    int64_t chunk = ceil_div(rows.positions, splits);
    if (vectorized) chunk = ceil_div(chunk, V) * V;
    const int64_t warps_per_block = kBlock / kWarp;
    reduce_rows<T, State><<<grid_for(nrows * splits, int(warps_per_block)), kBlock, 0, stream>>>(
        first, second, nrows, rows.positions, splits, chunk, vectorized, o1, o2, partial);
  }
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || splits == 1) return err;
  merge_splits<A, State><<<grid_for(nrows, kBlock), kBlock, 0, stream>>>(partial, nrows, splits, o1, o2);
  return cudaGetLastError();
}

// Which row element idx belongs to, for the first element of a vector (the others are row + j * step).
struct RowOf {
  Rows rows;
  __device__ int64_t operator()(int64_t idx) const {
    const int64_t C = rows.channels;
    if (!rows.channels_last) return idx / rows.positions;
    const int64_t position = idx / C, c = idx % C;
    if (rows.ptr == nullptr) return (position / rows.positions) * C + c;
    int64_t lo = 0, hi = rows.samples;  // the sample n with ptr[n] <= position < ptr[n + 1]
    while (hi - lo > 1) {
      const int64_t mid = (lo + hi) / 2;
      if (rows.ptr[mid] <= position) lo = mid; else hi = mid;
    }
    return lo * C + c;
  }
};

// out = a * in + b (forward, dy == nullptr) or out = a * dy + u * x + v (backward).
template <typename T>
__global__ void elementwise(const T* dy, const T* x, const typename Acc<T>::type* a, const typename Acc<T>::type* u,
                            const typename Acc<T>::type* v, T* out, int64_t total, RowOf row_of, bool vectorized) {
  using A = typename Acc<T>::type;
  constexpr int V = 16 / sizeof(T);
  const int width = vectorized ? V : 1;
  const int64_t step = row_of.rows.channels_last ? 1 : 0;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x * width;
  for (int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * width; i < total; i += stride) {
    const int64_t row = row_of(i);
    if (vectorized) {
      const Vec<T> xv = *reinterpret_cast<const Vec<T>*>(x + i);
      Vec<T> dv, ov;
      if (dy) dv = *reinterpret_cast<const Vec<T>*>(dy + i);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const int64_t r = row + j * step;
        const A xa = to_acc<A>(xv.v[j]);
        ov.v[j] = from_acc<T>(dy ? a[r] * to_acc<A>(dv.v[j]) + u[r] * xa + v[r] : a[r] * xa + u[r]);
      }
      *reinterpret_cast<Vec<T>*>(out + i) = ov;
    } else {
      const A xa = to_acc<A>(x[i]);
      out[i] = from_acc<T>(dy ? a[row] * to_acc<A>(dy[i]) + u[row] * xa + v[row] : a[row] * xa + u[row]);
    }
  }
}

template <typename T>
cudaError_t launch_elementwise(const T* dy, const T* x, const void* a, const void* u, const void* v, T* out,
                               Rows rows, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  constexpr int V = 16 / sizeof(T);
  const int64_t count = (rows.ptr ? 1 : rows.samples) * rows.channels * rows.positions;
  if (count == 0) return cudaSuccess;
  const int64_t unit = rows.channels_last ? rows.channels : rows.positions;
  const bool vectorized = unit % V == 0 && aligned16(x) && aligned16(out) && (dy == nullptr || aligned16(dy));
  const int blocks = grid_for(ceil_div(count, vectorized ? V : 1), kBlock);
  elementwise<T><<<blocks, kBlock, 0, stream>>>(dy, x, static_cast<const A*>(a), static_cast<const A*>(u),
                                                static_cast<const A*>(v), out, count, RowOf{rows}, vectorized);
  return cudaGetLastError();
}

template <typename F> cudaError_t dispatch(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Half: return f(__half{});
    case DType::BFloat16: return f(__nv_bfloat16{});
    case DType::Float: return f(float{});
    case DType::Double: return f(double{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace

size_t reduction_workspace_bytes(Rows rows, DType dtype, int num_sms) {
  const int64_t splits = split_count(rows, num_sms);
  if (splits == 1) return 0;
  const size_t state = dtype == DType::Double ? sizeof(Welford<double>) : sizeof(Welford<float>);
  return size_t(rows.samples * rows.channels * splits) * state;
}

cudaError_t moments(DType dtype, const void* x, void* mean, void* m2, Rows rows, void* workspace, int num_sms,
                    cudaStream_t stream) {
  return dispatch(dtype, [&](auto t) {
    using T = decltype(t);
    using A = typename Acc<T>::type;
    return reduce<T, Welford<A>>(static_cast<const T*>(x), nullptr, mean, m2, rows, workspace, num_sms, stream);
  });
}

cudaError_t moments_backward(DType dtype, const void* dy, const void* x, void* sum_dy, void* sum_dy_x, Rows rows,
                             void* workspace, int num_sms, cudaStream_t stream) {
  return dispatch(dtype, [&](auto t) {
    using T = decltype(t);
    using A = typename Acc<T>::type;
    return reduce<T, Sums<A>>(static_cast<const T*>(dy), static_cast<const T*>(x), sum_dy, sum_dy_x, rows, workspace,
                              num_sms, stream);
  });
}

cudaError_t affine(DType dtype, const void* x, const void* a, const void* beta, void* y, Rows rows,
                   cudaStream_t stream) {
  return dispatch(dtype, [&](auto t) {
    using T = decltype(t);
    return launch_elementwise<T>(nullptr, static_cast<const T*>(x), a, beta, nullptr, static_cast<T*>(y), rows, stream);
  });
}

cudaError_t affine_backward(DType dtype, const void* dy, const void* x, const void* a, const void* u, const void* v,
                            void* dx, Rows rows, cudaStream_t stream) {
  return dispatch(dtype, [&](auto t) {
    using T = decltype(t);
    return launch_elementwise<T>(static_cast<const T*>(dy), static_cast<const T*>(x), a, u, v, static_cast<T*>(dx),
                                 rows, stream);
  });
}

}  // namespace eqnorm_cuda
