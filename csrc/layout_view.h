// The layout and parameters as the raw arrays of coefficient_rows.h, with the tensors that hold them.
#pragma once

#include <vector>

#include "coefficient_rows.h"
#include "field_norm.h"

namespace eqnorm {

template <typename A> struct HeldLayout {
  eqnorm_rows::LayoutView<A> view;
  std::vector<at::Tensor> held;  // the converted values the view points into
};

// Layout values as double, weight and bias as A, all contiguous on the layout's device.
template <typename A> HeldLayout<A> layout_view(const LayoutArgs& l, const at::Tensor& weight, const at::Tensor& bias) {
  const auto type = c10::CppTypeToScalarType<A>::value;
  HeldLayout<A> h;
  std::vector<at::Tensor>& held = h.held;  // a non-dependent name, so that data_ptr<T> needs no `template`
  for (const at::Tensor& t : {l.group_size, l.center_value, l.class_scale, l.bias_value})
    held.push_back(t.to(at::kDouble).contiguous());
  held.push_back(weight.to(type).contiguous());
  held.push_back(bias.to(type).contiguous());
  eqnorm_rows::LayoutView<A>& v = h.view;
  v.C = l.field_of_channel.numel();
  v.G = l.groups();
  v.L = l.classes();
  v.K = l.center_channel.numel();
  v.B = l.bias_channel.numel();
  v.F = weight.numel();
  v.NB = bias.numel();
  v.field = l.field_of_channel.data_ptr<int64_t>();
  v.group = l.group_of_channel.data_ptr<int64_t>();
  v.center_channel = l.center_channel.data_ptr<int64_t>();
  v.center_class = l.center_class.data_ptr<int64_t>();
  v.bias_channel = l.bias_channel.data_ptr<int64_t>();
  v.bias_index = l.bias_index.data_ptr<int64_t>();
  v.group_size = held[0].data_ptr<double>();
  v.center_value = held[1].data_ptr<double>();
  v.class_scale = held[2].data_ptr<double>();
  v.bias_value = held[3].data_ptr<double>();
  v.weight = held[4].data_ptr<A>();
  v.bias = held[5].data_ptr<A>();
  return h;
}

// The statistics as the row code takes them; `held` keeps the contiguous counts alive.
template <typename A>
eqnorm_rows::Statistics<A> row_statistics(const Pooled& s, const at::Tensor& mean, const at::Tensor& m2,
                                          at::Tensor& held, double eps) {
  if (s.counts.defined()) held = s.counts.contiguous();
  return {mean.size(0), mean.data_ptr<A>(), m2.data_ptr<A>(), static_cast<A>(s.positions),
          s.counts.defined() ? held.data_ptr<A>() : nullptr, static_cast<A>(eps)};
}

// The coefficient map of coefficient_rows.h on a device: run_rows(view, statistics, a, beta) fills a and beta.
template <typename RunRows>
Stats coefficients_by_rows(const Pooled& s, const at::Tensor& weight, const at::Tensor& bias, const LayoutArgs& args,
                           double eps, RunRows run_rows) {
  const at::Tensor mean = s.mean.contiguous(), m2 = s.m2.contiguous();
  at::Tensor a = at::empty_like(mean), beta = at::empty_like(mean), counts;
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "eqnorm::field_norm coefficients", [&] {
    using A = scalar_t;
    const HeldLayout<A> h = layout_view<A>(args, weight, bias);
    run_rows(h.view, row_statistics<A>(s, mean, m2, counts, eps), a.data_ptr<A>(), beta.data_ptr<A>());
  });
  return {a, beta};
}

// Its backward: run_rows(view, statistics, cotangents) fills a, u, v and gw per row; gw and g_beta are summed over
// rows by ATen's deterministic reduction, and run_parameters(view, gw, g_beta, dweight, dbias) sums them per field
// and per bias entry.
template <typename RunRows, typename RunParameters>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> coefficients_backward_by_rows(
    const at::Tensor& sum_dy_x, const at::Tensor& sum_dy, const Pooled& s, const at::Tensor& weight,
    const at::Tensor& bias, const LayoutArgs& args, double eps, RunRows run_rows, RunParameters run_parameters) {
  const at::Tensor mean = s.mean.contiguous(), m2 = s.m2.contiguous();
  const at::Tensor gax = sum_dy_x.contiguous(), gb = sum_dy.contiguous();
  at::Tensor a = at::empty_like(mean), u = at::empty_like(mean), v = at::empty_like(mean), gw = at::empty_like(mean);
  at::Tensor dweight = at::empty(weight.sizes(), mean.options()), dbias = at::empty(bias.sizes(), mean.options());
  at::Tensor counts;
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "eqnorm::field_norm_backward coefficients", [&] {
    using A = scalar_t;
    const HeldLayout<A> h = layout_view<A>(args, weight, bias);
    const eqnorm_rows::Cotangents<A> ct{gax.data_ptr<A>(), gb.data_ptr<A>(), a.data_ptr<A>(),
                                        u.data_ptr<A>(),   v.data_ptr<A>(),  gw.data_ptr<A>()};
    run_rows(h.view, row_statistics<A>(s, mean, m2, counts, eps), ct);
    const at::Tensor gw_total = gw.sum(0), gb_total = gb.sum(0);
    run_parameters(h.view, gw_total.data_ptr<A>(), gb_total.data_ptr<A>(), dweight.data_ptr<A>(),
                   dbias.data_ptr<A>());
  });
  return {a, u, v, dweight.to(weight.scalar_type()), dbias.to(bias.scalar_type())};
}

}  // namespace eqnorm
