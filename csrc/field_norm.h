// The layer as one op, for any device: the passes over x come from the device, the small (N, C) coefficient map from
// the device or from the ATen form below. Formulas: eqnorm/coefficients.py.
#pragma once

#include <array>
#include <functional>
#include <string>
#include <vector>
#include <tuple>

#include "index_args.h"

namespace eqnorm {

using Stats = std::tuple<at::Tensor, at::Tensor>;
using Outputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
// Which of (dx, dweight, dbias) the backward computes; the others are returned undefined (None), as in torch's
// native_group_norm_backward.
using OutputMask = std::array<bool, 3>;

// An optional parameter as the kernels take it: undefined when absent (a weight of 1, a bias of 0).
inline at::Tensor given(const std::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }
inline std::optional<at::Tensor> optional(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}
// t's data as A*, nullptr when undefined (an absent parameter, or a gradient not asked for): the map's convention.
template <typename A> A* data_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr<A>() : nullptr; }
// A parameter's gradient, computed in the accumulation type, in the parameter's dtype (undefined stays undefined).
inline at::Tensor in_dtype_of(const at::Tensor& grad, const at::Tensor& parameter) {
  return grad.defined() ? grad.to(parameter.scalar_type()) : grad;
}

// (dx, dweight, dbias) as the backward's schema returns them: Tensor?, None where not computed (what Inductor and
// the fake kernels expect of an output that may be absent).
using Gradients = std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>, std::optional<at::Tensor>>;
inline Gradients gradients(const Outputs& g) {
  return {optional(std::get<0>(g)), optional(std::get<1>(g)), optional(std::get<2>(g))};
}

// The four passes over x of one device (docs/kernels.rst, "Four passes, one small function").
struct Passes {
  Stats (*moments)(const at::Tensor& x, bool last, const std::optional<at::Tensor>& ptr);
  at::Tensor (*affine)(const at::Tensor& x, const at::Tensor& a, const at::Tensor& beta, bool last,
                       const std::optional<at::Tensor>& ptr);
  Stats (*moments_backward)(const at::Tensor& dy, const at::Tensor& x, bool last, const std::optional<at::Tensor>& ptr);
  at::Tensor (*affine_backward)(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& a, const at::Tensor& u,
                                const at::Tensor& v, bool last, const std::optional<at::Tensor>& ptr);
};

// Every argument check of field_norm and its backward (field_norm.cpp): the rows of x, the layout and the parameters.
// Below the checks, weight and bias are tensors that are undefined when absent.
struct Checked {
  RowShape shape;
  IndexArgs index;
};
Checked check(const char* op, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
              at::TensorList index, const std::optional<at::Tensor>& ptr, bool last, bool batch);
// check, and dy, mean and m2 against x
Checked check_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& m2,
                       const at::Tensor& weight, const at::Tensor& bias, at::TensorList index,
                       const std::optional<at::Tensor>& ptr, bool last, bool batch);

// The CPU's passes (cpu_passes.cpp).
const Passes& cpu_passes();

// The statistics the coefficient map sees: (S, C) mean and M2 over `positions` values per row, or over counts[n]
// values in row n when counts ((S, 1), ragged) is defined (S = N, or 1 when pooled over the batch).
struct Pooled {
  at::Tensor mean, m2;
  double positions;
  at::Tensor counts;
  // the values per row as a tensor that broadcasts against (S, C)
  at::Tensor positions_tensor() const {
    return counts.defined() ? counts : at::scalar_tensor(positions, mean.options());
  }
};

// (mean, m2, weight, bias) -> (a, beta), each (S, C) in the statistics' dtype.
using CoefficientsForward = Stats (*)(const Pooled& s, const at::Tensor& weight, const at::Tensor& bias,
                                      const IndexArgs& l, double eps);
// (sum dy x, sum dy) -> (a, u, v, dweight, dbias): dx = a dy + u x + v, and the parameter gradients (undefined where
// the mask or an absent parameter says none).
using CoefficientsBackward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> (*)(
    const at::Tensor& sum_dy_x, const at::Tensor& sum_dy, const Pooled& s, const at::Tensor& weight,
    const at::Tensor& bias, const IndexArgs& l, double eps, OutputMask mask);

// The coefficient map and its closed-form vector-Jacobian product in ATen operations (differentiable, any device).
Stats coefficients_aten(const Pooled& s, const at::Tensor& weight, const at::Tensor& bias, const IndexArgs& l,
                        double eps);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> coefficients_backward_aten(
    const at::Tensor& sum_dy_x, const at::Tensor& sum_dy, const Pooled& s, const at::Tensor& weight,
    const at::Tensor& bias, const IndexArgs& l, double eps, OutputMask mask);

Outputs field_norm_forward(const Passes& p, CoefficientsForward coefficients, const at::Tensor& x,
                           const at::Tensor& weight, const at::Tensor& bias, at::TensorList index,
                           const std::optional<at::Tensor>& ptr, bool last, bool batch, double eps);

Outputs field_norm_backward(const Passes& p, CoefficientsBackward coefficients, const at::Tensor& dy,
                            const at::Tensor& x, const at::Tensor& mean, const at::Tensor& m2,
                            const at::Tensor& weight, const at::Tensor& bias, at::TensorList index,
                            const std::optional<at::Tensor>& ptr, bool last, bool batch, double eps, OutputMask mask);

// eqnorm::field_norm through the dispatcher (autograd.cpp).
Outputs call_field_norm(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                        const std::optional<at::Tensor>& bias, at::TensorList index,
                        const std::optional<at::Tensor>& ptr, bool last, bool batch, double eps);

// y of field_norm from differentiable ATen operations only: what double backward differentiates (weight and bias
// undefined when absent).
at::Tensor field_norm_composite(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                at::TensorList index, const std::optional<at::Tensor>& ptr, bool last, bool batch,
                                double eps);

}  // namespace eqnorm
