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

// The per-row positions as the row kernels take them: counts (S,) when ragged, else nullptr and `positions`.
template <typename A> const A* row_counts(const Pooled& s, at::Tensor& held) {
  if (!s.counts.defined()) return nullptr;
  held = s.counts.contiguous();
  return held.data_ptr<A>();
}

}  // namespace eqnorm
