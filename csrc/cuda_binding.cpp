// The CUDA implementations of the four passes: argument checks, allocation and the current stream here, the kernels
// in cuda/passes.cu (which include no torch header). Compiled only when the extension is built with CUDA.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "checks.h"
#include "cuda/coefficients.h"
#include "cuda/passes.h"

namespace eqnorm {
namespace {

eqnorm_cuda::DType dtype_of(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kHalf: return eqnorm_cuda::DType::Half;
    case at::kBFloat16: return eqnorm_cuda::DType::BFloat16;
    case at::kFloat: return eqnorm_cuda::DType::Float;
    default: return eqnorm_cuda::DType::Double;
  }
}

struct Launch {
  RowShape shape;
  std::optional<at::Tensor> ptr;
  eqnorm_cuda::Rows rows;
};

Launch prepare(const char* op, const at::Tensor& x, bool last, const std::optional<at::Tensor>& ptr) {
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor, got ", x.device());
  const RowShape s = check_rows(op, x, last, ptr);
  std::optional<at::Tensor> p;
  if (ptr.has_value()) p = ptr->contiguous();
  return {s, p, {s.samples, s.channels, s.positions, p ? p->data_ptr<int64_t>() : nullptr, last}};
}

void check_cuda(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA error ", cudaGetErrorString(err));
}

int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

at::Tensor stat_like(const at::Tensor& x, const RowShape& s) {
  return at::empty({s.samples, s.channels}, x.options().dtype(accumulation_type(x.scalar_type())));
}

at::Tensor workspace(const at::Tensor& x, const Launch& l) {
  const size_t bytes = eqnorm_cuda::reduction_workspace_bytes(l.rows, dtype_of(x), sm_count());
  return at::empty({static_cast<int64_t>(bytes)}, x.options().dtype(at::kByte));
}

std::tuple<at::Tensor, at::Tensor> moments_cuda(const at::Tensor& x_in, bool last,
                                                const std::optional<at::Tensor>& ptr) {
  const char* op = "eqnorm::moments";
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Launch l = prepare(op, x_in, last, ptr);
  const at::Tensor x = x_in.contiguous();
  at::Tensor mean = stat_like(x, l.shape), m2 = stat_like(x, l.shape), ws = workspace(x, l);
  check_cuda(op, eqnorm_cuda::moments(dtype_of(x), x.data_ptr(), mean.data_ptr(), m2.data_ptr(), l.rows,
                                      ws.data_ptr(), sm_count(), at::cuda::getCurrentCUDAStream()));
  return {mean, m2};
}

std::tuple<at::Tensor, at::Tensor> moments_backward_cuda(const at::Tensor& dy_in, const at::Tensor& x_in, bool last,
                                                         const std::optional<at::Tensor>& ptr) {
  const char* op = "eqnorm::moments_backward";
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Launch l = prepare(op, x_in, last, ptr);
  check_like(op, "dy", dy_in, x_in);
  const at::Tensor x = x_in.contiguous(), dy = dy_in.contiguous();
  at::Tensor sdy = stat_like(x, l.shape), sdyx = stat_like(x, l.shape), ws = workspace(x, l);
  check_cuda(op, eqnorm_cuda::moments_backward(dtype_of(x), dy.data_ptr(), x.data_ptr(), sdy.data_ptr(),
                                               sdyx.data_ptr(), l.rows, ws.data_ptr(), sm_count(),
                                               at::cuda::getCurrentCUDAStream()));
  return {sdy, sdyx};
}

at::Tensor affine_cuda(const at::Tensor& x_in, const at::Tensor& a_in, const at::Tensor& beta_in, bool last,
                       const std::optional<at::Tensor>& ptr) {
  const char* op = "eqnorm::affine";
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Launch l = prepare(op, x_in, last, ptr);
  check_stat(op, "a", a_in, x_in, l.shape);
  check_stat(op, "beta", beta_in, x_in, l.shape);
  const at::Tensor x = x_in.contiguous(), a = a_in.contiguous(), beta = beta_in.contiguous();
  at::Tensor y = at::empty_like(x);
  check_cuda(op, eqnorm_cuda::affine(dtype_of(x), x.data_ptr(), a.data_ptr(), beta.data_ptr(), y.data_ptr(), l.rows,
                                     at::cuda::getCurrentCUDAStream()));
  return y;
}

at::Tensor affine_backward_cuda(const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& a_in,
                                const at::Tensor& u_in, const at::Tensor& v_in, bool last,
                                const std::optional<at::Tensor>& ptr) {
  const char* op = "eqnorm::affine_backward";
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Launch l = prepare(op, x_in, last, ptr);
  check_like(op, "dy", dy_in, x_in);
  check_stat(op, "a", a_in, x_in, l.shape);
  check_stat(op, "u", u_in, x_in, l.shape);
  check_stat(op, "v", v_in, x_in, l.shape);
  const at::Tensor x = x_in.contiguous(), dy = dy_in.contiguous();
  const at::Tensor a = a_in.contiguous(), u = u_in.contiguous(), v = v_in.contiguous();
  at::Tensor dx = at::empty_like(x);
  check_cuda(op, eqnorm_cuda::affine_backward(dtype_of(x), dy.data_ptr(), x.data_ptr(), a.data_ptr(), u.data_ptr(),
                                              v.data_ptr(), dx.data_ptr(), l.rows, at::cuda::getCurrentCUDAStream()));
  return dx;
}

std::tuple<at::Tensor, at::Tensor> coefficients_cuda(const at::Tensor& mean_in, const at::Tensor& m2_in,
                                                     const at::Tensor& weight, const at::Tensor& bias,
                                                     const at::Tensor& center_in, const at::Tensor& center_out,
                                                     const at::Tensor& group_of_channel, const at::Tensor& group_size,
                                                     const at::Tensor& channels_by_group,
                                                     const at::Tensor& group_start, double positions,
                                                     const std::optional<at::Tensor>& counts, double eps) {
  const char* op = "eqnorm::coefficients";
  const c10::cuda::CUDAGuard guard(mean_in.device());
  const at::Tensor mean = mean_in.contiguous(), m2 = m2_in.contiguous();
  const at::Tensor w = weight.contiguous(), b = bias.contiguous();
  TORCH_CHECK(b.sizes() == w.sizes(), op, ": bias must have the shape of weight ", w.sizes(), ", got ", b.sizes());
  at::Tensor a = at::empty_like(mean), beta = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "eqnorm_coefficients", [&] {
    auto [cen, pos] = check_centering<scalar_t>(op, mean, {m2}, w, center_in, center_out, group_of_channel, group_size,
                                          channels_by_group, group_start, positions, counts);
    check_cuda(op, eqnorm_cuda::coefficients<scalar_t>(mean.data_ptr<scalar_t>(), m2.data_ptr<scalar_t>(),
                                                       w.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), cen, pos,
                                                       static_cast<scalar_t>(eps), mean.size(0),
                                                       a.data_ptr<scalar_t>(), beta.data_ptr<scalar_t>(),
                                                       at::cuda::getCurrentCUDAStream()));
  });
  return {a, beta};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> coefficients_backward_cuda(
    const at::Tensor& grad_a_in, const at::Tensor& grad_beta_in, const at::Tensor& mean_in, const at::Tensor& m2_in,
    const at::Tensor& weight, const at::Tensor& center_in, const at::Tensor& center_out,
    const at::Tensor& group_of_channel, const at::Tensor& group_size, const at::Tensor& channels_by_group,
    const at::Tensor& group_start, double positions, const std::optional<at::Tensor>& counts, double eps) {
  const char* op = "eqnorm::coefficients_backward";
  const c10::cuda::CUDAGuard guard(mean_in.device());
  const at::Tensor mean = mean_in.contiguous(), m2 = m2_in.contiguous();
  const at::Tensor ga = grad_a_in.contiguous(), gb = grad_beta_in.contiguous(), w = weight.contiguous();
  at::Tensor a = at::empty_like(mean), u = at::empty_like(mean), v = at::empty_like(mean);
  at::Tensor gw = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "eqnorm_coefficients_backward", [&] {
    auto [cen, pos] = check_centering<scalar_t>(op, mean, {m2, ga, gb}, w, center_in, center_out, group_of_channel,
                                          group_size, channels_by_group, group_start, positions, counts);
    check_cuda(op, eqnorm_cuda::coefficients_backward<scalar_t>(
                       ga.data_ptr<scalar_t>(), gb.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(),
                       m2.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), cen, pos, static_cast<scalar_t>(eps),
                       mean.size(0), a.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                       gw.data_ptr<scalar_t>(), at::cuda::getCurrentCUDAStream()));
  });
  return {a, u, v, gw};
}

}  // namespace

TORCH_LIBRARY_IMPL(eqnorm, CUDA, m) {
  m.impl("coefficients", &coefficients_cuda);
  m.impl("coefficients_backward", &coefficients_backward_cuda);
  m.impl("moments", &moments_cuda);
  m.impl("affine", &affine_cuda);
  m.impl("moments_backward", &moments_backward_cuda);
  m.impl("affine_backward", &affine_backward_cuda);
}

}  // namespace eqnorm
