// One block per sample: the centering (two small mat-vecs) and the group sums, each a warp per output with lanes
// striding over the channels and a fixed shuffle tree (deterministic), then the affine coefficients, all in shared
// memory; the backward kernel does the closed-form vector-Jacobian product of eqnorm/coefficients.py the same way.
#include "coefficients.h"

namespace eqnorm_cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;

// out[l] = sum_c x[c] * matrix[c * in_stride + l * out_stride], a warp per output.
template <typename A>
__device__ void warp_matvec(const A* x, const A* matrix, int64_t inputs, int64_t outputs, int64_t in_stride,
                            int64_t out_stride, A* out) {
  const int lane = threadIdx.x % kWarp;
  for (int64_t l = threadIdx.x / kWarp; l < outputs; l += blockDim.x / kWarp) {
    A acc = 0;
    for (int64_t c = lane; c < inputs; c += kWarp) acc += x[c] * matrix[c * in_stride + l * out_stride];
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) acc += __shfl_down_sync(0xffffffffu, acc, offset);
    if (lane == 0) out[l] = acc;
  }
}

// out[g] = f(g, sum of values[c] over the channels c of group g), one warp per group.
template <typename A, typename F>
__device__ void group_sums(const A* values, const Centering<A>& op, F f) {
  const int lane = threadIdx.x % kWarp;
  for (int64_t g = threadIdx.x / kWarp; g < op.groups; g += blockDim.x / kWarp) {
    A acc = 0;
    for (int64_t k = op.group_start[g] + lane; k < op.group_start[g + 1]; k += kWarp)
      acc += values[op.channels_by_group[k]];
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) acc += __shfl_down_sync(0xffffffffu, acc, offset);
    if (lane == 0) f(g, acc);
  }
}

template <typename A> struct Shared {
  A* z;     // (L) centered irrep coordinates, then their cotangent
  A* cen;   // (C)
  A* work;  // (C) spread, then the cotangent of cen
  A* rstd;  // (G)
  A* gvar;  // (G)
  __device__ Shared(A* base, int64_t C, int64_t L, int64_t G)
      : z(base), cen(base + L), work(base + L + C), rstd(base + L + 2 * C), gvar(base + L + 2 * C + G) {}
};

// cen = (m Ain) Aout, spread = m2 + P (m - cen)^2 summed per group, rstd per group; leaves cen and rstd in shared.
template <typename A>
__device__ void statistics(const A* m, const A* m2, const Centering<A>& op, A P, A eps, Shared<A>& sh) {
  const int64_t C = op.channels, L = op.classes;
  warp_matvec(m, op.center_in, C, L, L, 1, sh.z);  // z = m Ain
  __syncthreads();
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    A acc = 0;
    for (int64_t l = 0; l < L; ++l) acc += sh.z[l] * op.center_out[l * C + c];
    const A d = m[c] - acc;
    sh.cen[c] = acc;
    sh.work[c] = m2[c] + P * d * d;
  }
  __syncthreads();
  group_sums(sh.work, op, [&](int64_t g, A sum) { sh.rstd[g] = rsqrt(sum / (P * op.group_size[g]) + eps); });
  __syncthreads();
}

template <typename A>
__global__ void forward_kernel(const A* mean, const A* m2, const A* weight, const A* bias, Centering<A> op,
                               Positions<A> pos, A eps, int64_t samples, A* a, A* beta) {
  extern __shared__ unsigned char raw[];
  Shared<A> sh(reinterpret_cast<A*>(raw), op.channels, op.classes, op.groups);
  const int64_t C = op.channels;
  for (int64_t n = blockIdx.x; n < samples; n += gridDim.x) {
    const A P = pos.counts ? pos.counts[n] : pos.positions;
    statistics(mean + n * C, m2 + n * C, op, P, eps, sh);
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const A ac = weight[c] * sh.rstd[op.group_of_channel[c]];
      a[n * C + c] = ac;
      beta[n * C + c] = bias[c] - ac * sh.cen[c];
    }
    __syncthreads();
  }
}

template <typename A>
__global__ void backward_kernel(const A* grad_a, const A* grad_beta, const A* mean, const A* m2, const A* weight,
                                Centering<A> op, Positions<A> pos, A eps, int64_t samples, A* a_out, A* u_out,
                                A* v_out, A* grad_weight) {
  extern __shared__ unsigned char raw[];
  Shared<A> sh(reinterpret_cast<A*>(raw), op.channels, op.classes, op.groups);
  const int64_t C = op.channels, L = op.classes;
  for (int64_t n = blockIdx.x; n < samples; n += gridDim.x) {
    const A P = pos.counts ? pos.counts[n] : pos.positions;
    const A* m = mean + n * C;
    statistics(m, m2 + n * C, op, P, eps, sh);
    // the cotangent of a, with that of beta folded in; grad_weight; per-group sums of (cotangent of a) * w
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const A r = sh.rstd[op.group_of_channel[c]];
      const A ga = grad_a[n * C + c] - grad_beta[n * C + c] * sh.cen[c];
      grad_weight[n * C + c] = ga * r;
      sh.work[c] = ga * weight[c];
    }
    __syncthreads();
    group_sums(sh.work, op, [&](int64_t g, A sum) {
      const A r = sh.rstd[g];
      sh.gvar[g] = A(-0.5) * r * r * r * sum / (P * op.group_size[g]);  // already the cotangent of m2
    });
    __syncthreads();
    // cotangents of m2 (u / 2) and of cen; work now holds the latter
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const int64_t g = op.group_of_channel[c];
      const A ac = weight[c] * sh.rstd[g];
      const A gm2 = sh.gvar[g];
      const A gdev = 2 * P * gm2 * (m[c] - sh.cen[c]);
      a_out[n * C + c] = ac;
      u_out[n * C + c] = 2 * gm2;
      v_out[n * C + c] = gdev;  // completed below
      sh.work[c] = -ac * grad_beta[n * C + c] - gdev;
    }
    __syncthreads();
    warp_matvec(sh.work, op.center_out, C, L, 1, C, sh.z);  // z = (cotangent of cen) Aout^T
    __syncthreads();
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      A acc = 0;
      for (int64_t l = 0; l < L; ++l) acc += sh.z[l] * op.center_in[c * L + l];
      const A gm = v_out[n * C + c] + acc;  // cotangent of the mean
      v_out[n * C + c] = gm / P - u_out[n * C + c] * m[c];
    }
    __syncthreads();
  }
}

int blocks_for(int64_t samples) { return int(samples < 65535 ? samples : 65535); }

}  // namespace

size_t coefficient_shared_bytes(int64_t channels, int64_t classes, int64_t groups, bool dbl) {
  return size_t(classes + 2 * channels + 2 * groups) * (dbl ? sizeof(double) : sizeof(float));
}

template <typename A>
cudaError_t coefficients(const A* mean, const A* m2, const A* weight, const A* bias, Centering<A> op, Positions<A> pos,
                         A eps, int64_t samples, A* a, A* beta, cudaStream_t stream) {
  if (samples == 0) return cudaSuccess;
  const size_t shared = coefficient_shared_bytes(op.channels, op.classes, op.groups, sizeof(A) == 8);
  forward_kernel<A><<<blocks_for(samples), kThreads, shared, stream>>>(mean, m2, weight, bias, op, pos, eps, samples,
                                                                       a, beta);
  return cudaGetLastError();
}

template <typename A>
cudaError_t coefficients_backward(const A* grad_a, const A* grad_beta, const A* mean, const A* m2, const A* weight,
                                  Centering<A> op, Positions<A> pos, A eps, int64_t samples, A* a, A* u, A* v,
                                  A* grad_weight, cudaStream_t stream) {
  if (samples == 0) return cudaSuccess;
  const size_t shared = coefficient_shared_bytes(op.channels, op.classes, op.groups, sizeof(A) == 8);
  backward_kernel<A><<<blocks_for(samples), kThreads, shared, stream>>>(grad_a, grad_beta, mean, m2, weight, op, pos,
                                                                        eps, samples, a, u, v, grad_weight);
  return cudaGetLastError();
}

template cudaError_t coefficients<float>(const float*, const float*, const float*, const float*, Centering<float>,
                                         Positions<float>, float, int64_t, float*, float*, cudaStream_t);
template cudaError_t coefficients<double>(const double*, const double*, const double*, const double*,
                                          Centering<double>, Positions<double>, double, int64_t, double*, double*,
                                          cudaStream_t);
template cudaError_t coefficients_backward<float>(const float*, const float*, const float*, const float*,
                                                  const float*, Centering<float>, Positions<float>, float, int64_t,
                                                  float*, float*, float*, float*, cudaStream_t);
template cudaError_t coefficients_backward<double>(const double*, const double*, const double*, const double*,
                                                   const double*, Centering<double>, Positions<double>, double,
                                                   int64_t, double*, double*, double*, double*, cudaStream_t);

}  // namespace eqnorm_cuda
