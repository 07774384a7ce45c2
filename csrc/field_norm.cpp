// The device-generic parts of the layer: the driver of the passes, and the ATen forms of the coefficient map.
#include "field_norm.h"

#include <vector>

namespace eqnorm {
namespace {

// The sums of src's slices along dim (the last by default) by index into `size` outputs: out_i = sum_{k: index_k = i}
// src_k. The sum runs into one output more, left empty: Inductor's vectorized CPU code fails on a scatter into a
// dimension of size 1 (torch 2.13), which a layer norm's one group, a single centering class or a batch of one graph
// would be.
at::Tensor scatter_sum(const at::Tensor& src, const at::Tensor& index, const c10::SymInt& size, int64_t dim = -1) {
  dim = dim < 0 ? dim + src.dim() : dim;
  std::vector<c10::SymInt> shape(src.sym_sizes().begin(), src.sym_sizes().end());
  shape[dim] = size + 1;
  return at::zeros_symint(shape, src.options()).index_add(dim, index, src).narrow_symint(dim, 0, size);
}

// t's slices along dim by index: t.index_select(dim, index), from t with one more slice (zero, never selected), so
// that the scatter of its backward, too, never targets a dimension of size 1 (see scatter_sum).
at::Tensor gather(const at::Tensor& t, const at::Tensor& index, int64_t dim = -1) {
  dim = dim < 0 ? dim + t.dim() : dim;
  std::vector<c10::SymInt> pad(2 * (t.dim() - dim), 0);
  pad.back() = 1;
  return at::constant_pad_nd_symint(t, pad, 0).index_select(dim, index);
}

// cen = K m for (S, C) rows m (K is symmetric, so this is also the transpose product of the backward).
at::Tensor center(const at::Tensor& m, const IndexArgs& l) {
  const auto value = l.center_value.to(m.scalar_type());
  const at::Tensor z = scatter_sum(gather(m, l.center_channel) * value, l.center_class,
                                   l.class_scale.sym_size(0)) *
                       l.class_scale.to(m.scalar_type());
  return scatter_sum(gather(z, l.center_class) * value, l.center_channel, m.sym_size(1));
}

struct Spread {
  at::Tensor cen, dev, rstd, rstd_c;  // (S, C), (S, C), (S, G), (S, C)
};

Spread spread(const Pooled& s, const IndexArgs& l, double eps) {
  const at::Tensor cen = center(s.mean, l), dev = s.mean - cen, positions = s.positions_tensor();
  const at::Tensor var = scatter_sum(s.m2 + positions * dev.square(), l.group_of_channel, l.group_size.sym_size(0)) /
                         (positions * l.group_size.to(s.mean.scalar_type()));
  const at::Tensor rstd = (var + eps).rsqrt().masked_fill(var.isinf(), NAN);  // overflow: NaN, not 0
  return {cen, dev, rstd, gather(rstd, l.group_of_channel)};
}

// w_field(c) per channel, or undefined without a weight (a weight of 1)
at::Tensor channel_weight(const at::Tensor& weight, const IndexArgs& l, at::ScalarType t) {
  return weight.defined() ? gather(weight.to(t), l.field_of_channel) : at::Tensor();
}

at::Tensor times(const at::Tensor& w, const at::Tensor& t) { return w.defined() ? w * t : t; }

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

// field_norm's mean or m2 of an empty x, or of point rows (which keep none)
at::Tensor empty_stat(const at::Tensor& x, const RowShape& s, int64_t columns) {
  return at::zeros({s.samples, columns}, x.options().dtype(accumulation_type(x.scalar_type())));
}

// The statistics that point rows do not keep: mean x and M2 0, each (N, C)
Stats point_statistics(const at::Tensor& x, const RowShape& s) {
  const at::Tensor mean = x.reshape({s.samples, s.channels}).to(accumulation_type(x.scalar_type()));
  return {mean, at::zeros_like(mean)};
}

}  // namespace

Checked check(const char* op, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
              at::TensorList index, const std::optional<at::Tensor>& ptr, bool last, bool batch) {
  const RowShape s = check_rows(op, x, last, ptr);
  TORCH_CHECK(!(batch && ptr.has_value()), op, ": batch statistics pool over every sample and take no ptr");
  IndexArgs l = index_args(op, index, x, s.channels, weight, bias);
  if (ptr.has_value()) check_ptr_values(op, ptr->device().is_cpu() ? *ptr : ptr->cpu(), s.positions);
  return {s, l};
}

Checked check_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& m2,
                       const at::Tensor& weight, const at::Tensor& bias, at::TensorList index,
                       const std::optional<at::Tensor>& ptr, bool last, bool batch) {
  const char* op = "eqnorm::field_norm_backward";
  Checked checked = check(op, x, weight, bias, index, ptr, last, batch);
  check_like(op, "dy", dy, x);
  const int64_t columns = statistics_columns(checked.shape, ptr, batch);
  check_stat(op, "mean", mean, x, checked.shape, columns);
  check_stat(op, "m2", m2, x, checked.shape, columns);
  return checked;
}

Stats coefficients_aten(const Pooled& s, const at::Tensor& weight, const at::Tensor& bias, const IndexArgs& l,
                        double eps) {
  const auto t = s.mean.scalar_type();
  const Spread sp = spread(s, l, eps);
  const at::Tensor a = times(channel_weight(weight, l, t), sp.rstd_c);
  if (!bias.defined()) return {a, -a * sp.cen};
  const at::Tensor b =
      scatter_sum(gather(bias.to(t), l.bias_index) * l.bias_value.to(t), l.bias_channel, s.mean.sym_size(1));
  return {a, b - a * sp.cen};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> coefficients_backward_aten(
    const at::Tensor& sum_dy_x, const at::Tensor& sum_dy, const Pooled& s, const at::Tensor& weight,
    const at::Tensor& bias, const IndexArgs& l, double eps, OutputMask mask) {
  const auto t = s.mean.scalar_type();
  const Spread sp = spread(s, l, eps);
  const at::Tensor positions = s.positions_tensor();
  const at::Tensor w = channel_weight(weight, l, t), a = times(w, sp.rstd_c);
  const at::Tensor ga = sum_dy_x - sum_dy * sp.cen;
  at::Tensor dweight, dbias;
  if (mask[1] && weight.defined())
    dweight = scatter_sum((ga * sp.rstd_c).sum(0), l.field_of_channel, weight.sym_size(0)).to(weight.scalar_type());
  if (mask[2] && bias.defined())
    dbias = scatter_sum(gather(sum_dy.sum(0), l.bias_channel) * l.bias_value.to(t), l.bias_index, bias.sym_size(0))
                .to(bias.scalar_type());
  const at::Tensor gvar =
      sp.rstd.pow(3) * -0.5 * scatter_sum(times(w, ga), l.group_of_channel, l.group_size.sym_size(0));
  const at::Tensor gm2 = gather(gvar / (positions * l.group_size.to(t)), l.group_of_channel);
  const at::Tensor u = gm2 * 2, gdev = u * positions * sp.dev;
  const at::Tensor gmean = gdev + center(-a * sum_dy - gdev, l);
  return {a, u, gmean / positions - u * s.mean, dweight, dbias};
}

Outputs field_norm_forward(const Passes& p, CoefficientsForward coefficients, const at::Tensor& x,
                           const at::Tensor& weight, const at::Tensor& bias, at::TensorList index,
                           const std::optional<at::Tensor>& ptr, bool last, bool batch, double eps) {
  const auto [s, l] = check("eqnorm::field_norm", x, weight, bias, index, ptr, last, batch);
  const int64_t columns = statistics_columns(s, ptr, batch);
  if (x.numel() == 0)
    return {at::empty_like(x, at::MemoryFormat::Contiguous), empty_stat(x, s, columns), empty_stat(x, s, columns)};
  const auto [mean, m2] = p.moments(x, last, ptr);
  auto [a, beta] = coefficients(pooled(mean, m2, ptr, s, batch), weight, bias, l, eps);
  if (batch) {
    a = a.expand_as(mean).contiguous();
    beta = beta.expand_as(mean).contiguous();
  }
  at::Tensor y = p.affine(x, a, beta, last, ptr);
  if (columns == 0) return {y, empty_stat(x, s, 0), empty_stat(x, s, 0)};
  return {y, mean, m2};
}

// The backward of an empty x.
static Outputs no_gradient(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, OutputMask mask) {
  return {mask[0] ? at::empty_like(x, at::MemoryFormat::Contiguous) : at::Tensor(),
          mask[1] && weight.defined() ? at::zeros_like(weight) : at::Tensor(),
          mask[2] && bias.defined() ? at::zeros_like(bias) : at::Tensor()};
}

Outputs field_norm_backward(const Passes& p, CoefficientsBackward coefficients, const at::Tensor& dy,
                            const at::Tensor& x, const at::Tensor& mean_in, const at::Tensor& m2_in,
                            const at::Tensor& weight, const at::Tensor& bias, at::TensorList index,
                            const std::optional<at::Tensor>& ptr, bool last, bool batch, double eps, OutputMask mask) {
  const auto [s, l] = check_backward(dy, x, mean_in, m2_in, weight, bias, index, ptr, last, batch);
  if (x.numel() == 0) return no_gradient(x, weight, bias, mask);
  const auto [mean, m2] = point_rows(s, ptr, batch) ? point_statistics(x, s) : Stats{mean_in, m2_in};
  auto [sum_dy, sum_dy_x] = p.moments_backward(dy, x, last, ptr);
  if (batch) {
    sum_dy = sum_dy.sum(0, true);
    sum_dy_x = sum_dy_x.sum(0, true);
  }
  auto [a, u, v, dweight, dbias] =
      coefficients(sum_dy_x, sum_dy, pooled(mean, m2, ptr, s, batch), weight, bias, l, eps, mask);
  if (!mask[0]) return {at::Tensor(), dweight, dbias};
  if (batch) {
    a = a.expand_as(mean).contiguous();
    u = u.expand_as(mean).contiguous();
    v = v.expand_as(mean).contiguous();
  }
  return {p.affine_backward(dy, x, a, u, v, last, ptr), dweight, dbias};
}

at::Tensor field_norm_composite(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                at::TensorList index, const std::optional<at::Tensor>& ptr, bool last, bool batch,
                                double eps) {
  // The forward checked every argument. Here only differentiable ATen operations, on sizes that may be symbolic (a
  // backward traced by torch.compile or torch.export runs this on fake tensors): no value is read, no size is an
  // integer. Each row's statistics are its means and biased variances, i.e. M2 / P over one value (P = 1).
  const IndexArgs l = index_fields(index);
  if (x.sym_numel() == 0) return x.clone();
  const at::Tensor xf = x.to(accumulation_type(x.scalar_type()));
  at::Tensor mean, var;
  std::function<at::Tensor(const at::Tensor&)> spread_rows;
  if (ptr.has_value()) {
    const at::Tensor counts = at::diff(*ptr);
    const at::Tensor segment = at::repeat_interleave_symint(counts, std::optional<c10::SymInt>(x.sym_size(0)));
    const c10::SymInt samples = counts.sym_size(0);
    const at::Tensor n = counts.clamp_min(1).to(xf.scalar_type()).unsqueeze(1);
    mean = scatter_sum(xf, segment, samples, 0) / n;
    var = scatter_sum((xf - gather(mean, segment, 0)).square(), segment, samples, 0) / n;
    spread_rows = [segment](const at::Tensor& t) { return gather(t, segment, 0); };
  } else {
    const int64_t dim = last ? 1 : 2;
    mean = xf.mean(dim);
    var = (xf - mean.unsqueeze(dim)).square().mean(dim);
    spread_rows = [dim](const at::Tensor& t) { return t.unsqueeze(dim); };
  }
  Pooled rows{mean, var, 1.0, at::Tensor()};
  if (batch) {  // Chan's formula over samples of equal counts: the mean of the variances about the pooled mean
    const at::Tensor mu = mean.mean(0, true);
    rows = {mu, (var + (mean - mu).square()).mean(0, true), 1.0, at::Tensor()};
  }
  const auto [a, beta] = coefficients_aten(rows, weight, bias, l, eps);
  return (xf * spread_rows(a) + spread_rows(beta)).to(x.scalar_type());
}

}  // namespace eqnorm
