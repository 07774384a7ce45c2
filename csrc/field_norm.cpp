// The device-generic parts of the layer: the driver of the passes, and the ATen forms of the coefficient map.
#include "field_norm.h"

namespace eqnorm {
namespace {

// cen = K m for (S, C) rows m (K is symmetric, so this is also the transpose product of the backward).
at::Tensor center(const at::Tensor& m, const LayoutArgs& l) {
  const auto value = l.center_value.to(m.scalar_type());
  const at::Tensor z = at::zeros({m.size(0), l.classes()}, m.options())
                           .index_add(1, l.center_class, m.index_select(1, l.center_channel) * value) *
                       l.class_scale.to(m.scalar_type());
  return at::zeros_like(m).index_add(1, l.center_channel, z.index_select(1, l.center_class) * value);
}

struct Spread {
  at::Tensor cen, dev, rstd, rstd_c;  // (S, C), (S, C), (S, G), (S, C)
};

Spread spread(const Pooled& s, const LayoutArgs& l, double eps) {
  const at::Tensor cen = center(s.mean, l), dev = s.mean - cen, positions = s.positions_tensor();
  const at::Tensor var = at::zeros({s.mean.size(0), l.groups()}, s.mean.options())
                             .index_add(1, l.group_of_channel, s.m2 + positions * dev.square()) /
                         (positions * l.group_size.to(s.mean.scalar_type()));
  const at::Tensor rstd = (var + eps).rsqrt();
  return {cen, dev, rstd, rstd.index_select(1, l.group_of_channel)};
}

at::Tensor channel_weight(const at::Tensor& weight, const LayoutArgs& l, at::ScalarType t) {
  return weight.to(t).index_select(0, l.field_of_channel);
}

// Pools per-sample statistics (equal counts P) over the batch by Chan's formula: one (1, C) row of N P values.
Pooled pool_batch(const at::Tensor& mean, const at::Tensor& m2, int64_t positions) {
  const at::Tensor mu = mean.mean(0, true);
  const at::Tensor spread = m2.sum(0, true) + (mean - mu).square().sum(0, true) * static_cast<double>(positions);
  return {mu, spread, static_cast<double>(positions * mean.size(0)), at::Tensor()};
}

Pooled pooled(const at::Tensor& mean, const at::Tensor& m2, const std::optional<at::Tensor>& ptr, const RowShape& s,
              bool batch) {
  if (ptr.has_value())  // an empty segment has zero statistics and no output: count it as 1, never divide by 0
    return {mean, m2, 0.0, at::diff(*ptr).clamp_min(1).to(mean.scalar_type()).unsqueeze(1)};
  if (batch) return pool_batch(mean, m2, s.positions);
  return {mean, m2, static_cast<double>(s.positions), at::Tensor()};
}

at::Tensor empty_stat(const at::Tensor& x, const RowShape& s) {
  return at::zeros({s.samples, s.channels}, x.options().dtype(accumulation_type(x.scalar_type())));
}

}  // namespace

Checked check(const char* op, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
              at::TensorList layout, const std::optional<at::Tensor>& ptr, bool last, bool batch) {
  const RowShape s = check_rows(op, x, last, ptr);
  TORCH_CHECK(!(batch && ptr.has_value()), op, ": batch statistics pool over every sample and take no ptr");
  LayoutArgs l = layout_args(op, layout, x, s.channels, weight, bias);
  if (ptr.has_value()) check_ptr_values(op, ptr->device().is_cpu() ? *ptr : ptr->cpu(), s.positions);
  return {s, l};
}

Checked check_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& m2,
                       const at::Tensor& weight, const at::Tensor& bias, at::TensorList layout,
                       const std::optional<at::Tensor>& ptr, bool last, bool batch) {
  const char* op = "eqnorm::field_norm_backward";
  Checked checked = check(op, x, weight, bias, layout, ptr, last, batch);
  check_like(op, "dy", dy, x);
  check_stat(op, "mean", mean, x, checked.shape);
  check_stat(op, "m2", m2, x, checked.shape);
  return checked;
}

Stats coefficients_aten(const Pooled& s, const at::Tensor& weight, const at::Tensor& bias, const LayoutArgs& l,
                        double eps) {
  const auto t = s.mean.scalar_type();
  const Spread sp = spread(s, l, eps);
  const at::Tensor b = at::zeros({s.mean.size(1)}, s.mean.options())
                           .index_add(0, l.bias_channel, bias.to(t).index_select(0, l.bias_index) * l.bias_value.to(t));
  const at::Tensor a = channel_weight(weight, l, t) * sp.rstd_c;
  return {a, b - a * sp.cen};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> coefficients_backward_aten(
    const at::Tensor& sum_dy_x, const at::Tensor& sum_dy, const Pooled& s, const at::Tensor& weight,
    const at::Tensor& bias, const LayoutArgs& l, double eps) {
  const auto t = s.mean.scalar_type();
  const Spread sp = spread(s, l, eps);
  const at::Tensor positions = s.positions_tensor();
  const at::Tensor w = channel_weight(weight, l, t), a = w * sp.rstd_c;
  const at::Tensor ga = sum_dy_x - sum_dy * sp.cen;
  const at::Tensor dweight = at::zeros({weight.size(0)}, s.mean.options())
                                 .index_add(0, l.field_of_channel, (ga * sp.rstd_c).sum(0));
  const at::Tensor gvar = sp.rstd.pow(3) * -0.5 *
                          at::zeros({s.mean.size(0), l.groups()}, s.mean.options()).index_add(1, l.group_of_channel, ga * w);
  const at::Tensor gm2 = (gvar / (positions * l.group_size.to(t))).index_select(1, l.group_of_channel);
  const at::Tensor u = gm2 * 2, gdev = u * positions * sp.dev;
  const at::Tensor gmean = gdev + center(-a * sum_dy - gdev, l);
  const at::Tensor dbias = at::zeros({bias.size(0)}, s.mean.options())
                               .index_add(0, l.bias_index, sum_dy.sum(0).index_select(0, l.bias_channel) * l.bias_value.to(t));
  return {a, u, gmean / positions - u * s.mean, dweight.to(weight.scalar_type()), dbias.to(bias.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> field_norm_forward(const Passes& p, CoefficientsForward coefficients,
                                                                 const at::Tensor& x, const at::Tensor& weight,
                                                                 const at::Tensor& bias, at::TensorList layout,
                                                                 const std::optional<at::Tensor>& ptr, bool last,
                                                                 bool batch, double eps) {
  const auto [s, l] = check("eqnorm::field_norm", x, weight, bias, layout, ptr, last, batch);
  if (x.numel() == 0) return {at::empty_like(x, at::MemoryFormat::Contiguous), empty_stat(x, s), empty_stat(x, s)};
  const auto [mean, m2] = p.moments(x, last, ptr);
  auto [a, beta] = coefficients(pooled(mean, m2, ptr, s, batch), weight, bias, l, eps);
  if (batch) {
    a = a.expand_as(mean).contiguous();
    beta = beta.expand_as(mean).contiguous();
  }
  return {p.affine(x, a, beta, last, ptr), mean, m2};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> field_norm_backward(
    const Passes& p, CoefficientsBackward coefficients, const at::Tensor& dy, const at::Tensor& x,
    const at::Tensor& mean, const at::Tensor& m2, const at::Tensor& weight, const at::Tensor& bias,
    at::TensorList layout, const std::optional<at::Tensor>& ptr, bool last, bool batch, double eps) {
  const auto [s, l] = check_backward(dy, x, mean, m2, weight, bias, layout, ptr, last, batch);
  if (x.numel() == 0)
    return {at::empty_like(x, at::MemoryFormat::Contiguous), at::zeros_like(weight), at::zeros_like(bias)};
  auto [sum_dy, sum_dy_x] = p.moments_backward(dy, x, last, ptr);
  if (batch) {
    sum_dy = sum_dy.sum(0, true);
    sum_dy_x = sum_dy_x.sum(0, true);
  }
  auto [a, u, v, dweight, dbias] = coefficients(sum_dy_x, sum_dy, pooled(mean, m2, ptr, s, batch), weight, bias, l, eps);
  if (batch) {
    a = a.expand_as(mean).contiguous();
    u = u.expand_as(mean).contiguous();
    v = v.expand_as(mean).contiguous();
  }
  return {p.affine_backward(dy, x, a, u, v, last, ptr), dweight, dbias};
}

at::Tensor field_norm_composite(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                at::TensorList layout, const std::optional<at::Tensor>& ptr, bool last, bool batch,
                                double eps) {
  const auto [s, l] = check("eqnorm::field_norm", x, weight, bias, layout, ptr, last, batch);
  if (x.numel() == 0) return x.clone();
  const at::Tensor xf = x.to(accumulation_type(x.scalar_type()));
  // statistics per row, and how an (S, C) row coefficient broadcasts back over x
  at::Tensor mean, m2;
  std::function<at::Tensor(const at::Tensor&)> spread_rows;
  if (ptr.has_value()) {
    const at::Tensor counts = at::diff(*ptr);
    const at::Tensor segment = at::repeat_interleave(at::arange(s.samples, ptr->options()), counts, 0, s.positions);
    const at::Tensor zeros = at::zeros({s.samples, s.channels}, xf.options());
    mean = zeros.index_add(0, segment, xf) / counts.clamp_min(1).to(xf.scalar_type()).unsqueeze(1);
    m2 = zeros.index_add(0, segment, (xf - mean.index_select(0, segment)).square());
    spread_rows = [segment](const at::Tensor& t) { return t.index_select(0, segment); };
  } else {
    const int64_t dim = last ? 1 : 2;
    mean = xf.mean(dim);
    m2 = (xf - mean.unsqueeze(dim)).square().sum(dim);
    spread_rows = [dim](const at::Tensor& t) { return t.unsqueeze(dim); };
  }
  const auto [a, beta] = coefficients_aten(pooled(mean, m2, ptr, s, batch), weight, bias, l, eps);
  return (xf * spread_rows(a) + spread_rows(beta)).to(x.scalar_type());
}

}  // namespace eqnorm
