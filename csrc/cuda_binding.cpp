// eqnorm::field_norm on CUDA: the four passes and the coefficient map (argument checks, allocation and the current
// stream here; the kernels in cuda/passes.cu and cuda/coefficients.cu, which include no torch header). Compiled only
// when the extension is built with CUDA.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/coefficients.h"
#include "cuda/passes.h"
#include "field_norm.h"
#include "compiled_view.h"

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

int sm_count() {
  int device = 0, count = 0;
  check_cuda("eqnorm::field_norm", cudaGetDevice(&device));
  check_cuda("eqnorm::field_norm", cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

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
                                      ws.data_ptr(), sm_count(), c10::cuda::getCurrentCUDAStream()));
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
                                               c10::cuda::getCurrentCUDAStream()));
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
                                     c10::cuda::getCurrentCUDAStream()));
  return y;
}

at::Tensor affine_backward_cuda(const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& a_in,
                                const at::Tensor& u_in, const at::Tensor& v_in, bool last,
                                const std::optional<at::Tensor>& ptr) {
  const char* op = "eqnorm::affine_backward";
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Launch l = prepare(op, x_in, last, ptr);
  check_affine_backward(dy_in, x_in, a_in, u_in, v_in, l.shape);
  const at::Tensor x = x_in.contiguous(), dy = dy_in.contiguous();
  const at::Tensor a = a_in.contiguous(), u = u_in.contiguous(), v = v_in.contiguous();
  at::Tensor dx = at::empty_like(x);
  check_cuda(op, eqnorm_cuda::affine_backward(dtype_of(x), dy.data_ptr(), x.data_ptr(), a.data_ptr(), u.data_ptr(),
                                              v.data_ptr(), dx.data_ptr(), l.rows, c10::cuda::getCurrentCUDAStream()));
  return dx;
}

const Passes& cuda_passes() {
  static const Passes passes{&moments_cuda, &affine_cuda, &moments_backward_cuda, &affine_backward_cuda};
  return passes;
}

// The layout's map on the GPU: values read as double straight from compiled_value; weight and bias as A (undefined
// when absent: the map reads nullptr as a weight of 1, a bias of 0).
template <typename A> struct DeviceMap {
  at::Tensor weight, bias;
  CompiledView<double> view;
  static at::Tensor as_a(const at::Tensor& t) {
    return t.defined() ? t.to(c10::CppTypeToScalarType<A>::value).contiguous() : t;
  }
  DeviceMap(const IndexArgs& l, const at::Tensor& w, const at::Tensor& b)
      : weight(as_a(w)), bias(as_a(b)), view(compiled_view<double>(l, l.compiled_value.data_ptr<double>())) {}
};

template <typename A>
eqnorm_cuda::Statistics<A> device_statistics(const Pooled& s, const at::Tensor& mean, const at::Tensor& m2,
                                             at::Tensor& held, double eps) {
  if (s.counts.defined()) held = s.counts.contiguous();
  return {mean.size(0), mean.data_ptr<A>(), m2.data_ptr<A>(), s.counts.defined() ? held.data_ptr<A>() : nullptr,
          static_cast<A>(s.positions), static_cast<A>(eps)};
}

at::Tensor map_scratch(const eqnorm_map::Map<double>& l, const at::Tensor& mean) {
  return at::empty({eqnorm_cuda::coefficient_scratch(l.C, l.G, l.L, mean.size(0), mean.element_size())},
                   mean.options());
}

// The coefficient map in one kernel launch per direction (the ATen form launches dozens of tiny kernels per call).
Stats coefficients_cuda(const Pooled& s, const at::Tensor& weight, const at::Tensor& bias, const IndexArgs& args,
                        double eps) {
  const at::Tensor mean = s.mean.contiguous(), m2 = s.m2.contiguous();
  at::Tensor a = at::empty_like(mean), beta = at::empty_like(mean), counts;
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "eqnorm::field_norm coefficients", [&] {
    using A = scalar_t;
    const DeviceMap<A> l(args, weight, bias);
    const at::Tensor scratch = map_scratch(l.view.map, mean);
    check_cuda("eqnorm::field_norm",
               eqnorm_cuda::coefficients(l.view.map, data_or_null<A>(l.weight), data_or_null<A>(l.bias),
                                         device_statistics<A>(s, mean, m2, counts, eps), a.data_ptr<A>(),
                                         beta.data_ptr<A>(), static_cast<A*>(scratch.data_ptr()),
                                         c10::cuda::getCurrentCUDAStream()));
  });
  return {a, beta};
}

// Its backward: per row a, u, v and gw; gw and g_beta summed over rows by ATen's deterministic reduction, then per
// field and per bias.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> coefficients_backward_cuda(
    const at::Tensor& sum_dy_x, const at::Tensor& sum_dy, const Pooled& s, const at::Tensor& weight,
    const at::Tensor& bias, const IndexArgs& args, double eps, OutputMask mask) {
  const char* op = "eqnorm::field_norm_backward";
  const at::Tensor mean = s.mean.contiguous(), m2 = s.m2.contiguous();
  const at::Tensor gax = sum_dy_x.contiguous(), gb = sum_dy.contiguous();
  at::Tensor a = at::empty_like(mean), u = at::empty_like(mean), v = at::empty_like(mean), gw = at::empty_like(mean);
  at::Tensor dweight, dbias, counts;
  if (mask[1] && weight.defined()) dweight = at::empty(weight.sizes(), mean.options());
  if (mask[2] && bias.defined()) dbias = at::empty(bias.sizes(), mean.options());
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "eqnorm::field_norm_backward coefficients", [&] {
    using A = scalar_t;
    const DeviceMap<A> l(args, weight, bias);
    const at::Tensor scratch = map_scratch(l.view.map, mean);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    check_cuda(op, eqnorm_cuda::coefficients_backward(
                       l.view.map, data_or_null<A>(l.weight), data_or_null<A>(l.bias),
                       device_statistics<A>(s, mean, m2, counts, eps),
                       gax.data_ptr<A>(), gb.data_ptr<A>(), a.data_ptr<A>(), u.data_ptr<A>(), v.data_ptr<A>(),
                       gw.data_ptr<A>(), static_cast<A*>(scratch.data_ptr()), stream));
    if (!dweight.defined() && !dbias.defined()) return;
    const at::Tensor gw_total = gw.sum(0), gb_total = gb.sum(0);
    check_cuda(op, eqnorm_cuda::parameter_gradients(l.view.map, gw_total.data_ptr<A>(), gb_total.data_ptr<A>(),
                                                    data_or_null<A>(dweight), data_or_null<A>(dbias), stream));
  });
  return {a, u, v, in_dtype_of(dweight, weight), in_dtype_of(dbias, bias)};
}

Outputs field_norm_cuda(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                        const std::optional<at::Tensor>& bias, at::TensorList index,
                        const std::optional<at::Tensor>& ptr, bool last, bool batch, double eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  return field_norm_forward(cuda_passes(), &coefficients_cuda, x, given(weight), given(bias), index, ptr, last, batch,
                            eps);
}

Gradients field_norm_backward_cuda(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                                   const at::Tensor& m2, const std::optional<at::Tensor>& weight,
                                   const std::optional<at::Tensor>& bias, at::TensorList index,
                                   const std::optional<at::Tensor>& ptr, bool last, bool batch, double eps,
                                   OutputMask mask) {
  const c10::cuda::CUDAGuard guard(x.device());
  return gradients(field_norm_backward(cuda_passes(), &coefficients_backward_cuda, dy, x, mean, m2, given(weight),
                                       given(bias), index, ptr, last, batch, eps, mask));
}

}  // namespace

TORCH_LIBRARY_IMPL(eqnorm, CUDA, m) {
  m.impl("field_norm", &field_norm_cuda);
  m.impl("field_norm_backward", &field_norm_backward_cuda);
}

}  // namespace eqnorm
