// The layer as one op, for any device: the passes over x come from the device, the small (N, C) coefficient map from
// the device or from the ATen form below. Formulas: eqnorm/coefficients.py.
#pragma once

#include <functional>
#include <string>
#include <vector>
#include <tuple>

#include "layout_args.h"

namespace eqnorm {

using Stats = std::tuple<at::Tensor, at::Tensor>;

// The four passes over x of one device (docs/kernels.rst, "Four passes, one small function").
struct Passes {
  Stats (*moments)(const at::Tensor& x, bool last, const std::optional<at::Tensor>& ptr);
  at::Tensor (*affine)(const at::Tensor& x, const at::Tensor& a, const at::Tensor& beta, bool last,
                       const std::optional<at::Tensor>& ptr);
  Stats (*moments_backward)(const at::Tensor& dy, const at::Tensor& x, bool last, const std::optional<at::Tensor>& ptr);
  at::Tensor (*affine_backward)(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& a, const at::Tensor& u,
                                const at::Tensor& v, bool last, const std::optional<at::Tensor>& ptr);
};

// Every argument check of field_norm and its backward (field_norm.cpp): the rows of x and the layout.
struct Checked {
  RowShape shape;
  LayoutArgs layout;
};
Checked check(const char* op, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
              at::TensorList layout, const std::optional<at::Tensor>& ptr, bool last, bool batch);
// check, and dy, mean and m2 against x
Checked check_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& m2,
                       const at::Tensor& weight, const at::Tensor& bias, at::TensorList layout,
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
                                      const LayoutArgs& l, double eps);
// (sum dy x, sum dy) -> (a, u, v, dweight, dbias): dx = a dy + u x + v, and the parameter gradients.
using CoefficientsBackward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> (*)(
    const at::Tensor& sum_dy_x, const at::Tensor& sum_dy, const Pooled& s, const at::Tensor& weight,
    const at::Tensor& bias, const LayoutArgs& l, double eps);

// The coefficient map and its closed-form vector-Jacobian product in ATen operations (differentiable, any device).
Stats coefficients_aten(const Pooled& s, const at::Tensor& weight, const at::Tensor& bias, const LayoutArgs& l,
                        double eps);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> coefficients_backward_aten(
    const at::Tensor& sum_dy_x, const at::Tensor& sum_dy, const Pooled& s, const at::Tensor& weight,
    const at::Tensor& bias, const LayoutArgs& l, double eps);

std::tuple<at::Tensor, at::Tensor, at::Tensor> field_norm_forward(const Passes& p, CoefficientsForward coefficients,
                                                                 const at::Tensor& x, const at::Tensor& weight,
                                                                 const at::Tensor& bias, at::TensorList layout,
                                                                 const std::optional<at::Tensor>& ptr, bool last,
                                                                 bool batch, double eps);

std::tuple<at::Tensor, at::Tensor, at::Tensor> field_norm_backward(
    const Passes& p, CoefficientsBackward coefficients, const at::Tensor& dy, const at::Tensor& x,
    const at::Tensor& mean, const at::Tensor& m2, const at::Tensor& weight, const at::Tensor& bias,
    at::TensorList layout, const std::optional<at::Tensor>& ptr, bool last, bool batch, double eps);

// The CPU's coefficient map for tests (cpu_field_norm.cpp), bound as eqnorm._C._coefficient_map: executor "rows"
// (the map's rows under at::parallel_for, each row whole), "parts" (each row split at every cut of the layout) or
// "aten" (the differentiable ATen form). Returns (a, beta), or with the cotangents (a, u, v, dweight, dbias).
std::vector<at::Tensor> coefficient_map_for_test(const std::string& executor, const at::Tensor& mean,
                                                 const at::Tensor& m2, const std::optional<at::Tensor>& counts,
                                                 double positions, const at::Tensor& weight, const at::Tensor& bias,
                                                 const std::vector<at::Tensor>& layout, double eps,
                                                 const std::optional<at::Tensor>& sum_dy_x,
                                                 const std::optional<at::Tensor>& sum_dy);
// How often the map, run over every row of float64 statistics (forward, or backward and the parameter gradients),
// reads each entry of each compiled operator, in the order of eqnorm.compiled.OPERATORS.
std::vector<at::Tensor> coefficient_visits_for_test(const at::Tensor& mean, const at::Tensor& m2, double positions,
                                                    const at::Tensor& weight, const at::Tensor& bias,
                                                    const std::vector<at::Tensor>& layout, double eps, bool backward);

// eqnorm::field_norm through the dispatcher (autograd.cpp).
std::tuple<at::Tensor, at::Tensor, at::Tensor> call_field_norm(const at::Tensor& x, const at::Tensor& weight,
                                                              const at::Tensor& bias, at::TensorList layout,
                                                              const std::optional<at::Tensor>& ptr, bool last,
                                                              bool batch, double eps);

// y of field_norm from differentiable ATen operations only: what double backward differentiates.
at::Tensor field_norm_composite(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                at::TensorList layout, const std::optional<at::Tensor>& ptr, bool last, bool batch,
                                double eps);

}  // namespace eqnorm
