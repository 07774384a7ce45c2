// The four normalization passes on the GPU, free of torch headers: raw pointers, sizes and a cudaStream_t.
//
// A feature tensor is a set of rows, one per (sample n, channel c), each a run of positions p:
//   channels-first  x[(n * C + c) * P + p]                         (ptr == nullptr, channels_last == false)
//   channels-last   x[(n * P + p) * C + c]                         (ptr == nullptr, channels_last == true)
//   ragged          x[(ptr[n] + p) * C + c], 0 <= p < ptr[n+1] - ptr[n]   (ptr != nullptr, channels_last == true)
// Statistics are (N, C) arrays of the accumulation type: float for half, bfloat16 and float, double for double.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

namespace eqnorm_cuda {

enum class DType { Half, BFloat16, Float, Double };

struct Rows {
  int64_t samples;
  int64_t channels;
  int64_t positions;     // per sample; when ptr is set, the total number of positions (rows of x)
  const int64_t* ptr;    // device offsets, samples + 1 of them, or nullptr
  bool channels_last;
};

// Bytes of device workspace the two reductions need (0 when no row is split).
size_t reduction_workspace_bytes(Rows rows, DType dtype, int num_sms);

// mean = sum_p x / P, m2 = sum_p (x - mean)^2, by Welford per thread and Chan combines.
cudaError_t moments(DType dtype, const void* x, void* mean, void* m2, Rows rows, void* workspace, int num_sms,
                    cudaStream_t stream);

// y = a * x + beta, a and beta (N, C) in the accumulation type.
cudaError_t affine(DType dtype, const void* x, const void* a, const void* beta, void* y, Rows rows,
                   cudaStream_t stream);

// sum_dy = sum_p dy, sum_dy_x = sum_p dy * x.
cudaError_t moments_backward(DType dtype, const void* dy, const void* x, void* sum_dy, void* sum_dy_x, Rows rows,
                             void* workspace, int num_sms, cudaStream_t stream);

// dx = a * dy + u * x + v.
cudaError_t affine_backward(DType dtype, const void* dy, const void* x, const void* a, const void* u, const void* v,
                            void* dx, Rows rows, cudaStream_t stream);

}  // namespace eqnorm_cuda
