// The op schemas, and the Python module that loads them (import eqnorm._C).
#include <torch/extension.h>

#include "field_norm.h"

// Importing the module runs the static registrations of this library. It also binds the op for eager calls: the same
// dispatcher call as torch.ops.eqnorm.field_norm, without the generic argument parsing of torch.ops (about half the
// cost of a small call). Traced code (torch.compile) calls torch.ops.
PYBIND11_MODULE(_C, m) {
  m.def(
      "field_norm",
      [](const at::Tensor& x, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
         const std::vector<at::Tensor>& index, const std::optional<at::Tensor>& ptr, bool last, bool batch,
         double eps) {
        return eqnorm::call_field_norm(x, weight, bias, index, ptr, last, batch, eps);
      },
      "eqnorm::field_norm through the dispatcher");
  // A contiguous (N, C, *spatial) x viewed as (N, C, P) rows and y viewed back, here rather than in Python: the two
  // views cost a fraction of a microsecond in C++ and several in Python, a quarter of a small call.
  m.def(
      "field_norm_dense",
      [](const at::Tensor& x, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
         const std::vector<at::Tensor>& index, bool batch, double eps) {
        TORCH_CHECK(x.dim() >= 2 && x.is_contiguous(), "field_norm_dense: x must be contiguous (N, C, *spatial)");
        c10::SymInt positions = 1;
        for (int64_t d = 2; d < x.dim(); ++d) positions *= x.sym_size(d);
        const at::Tensor rows = x.view_symint({x.sym_size(0), x.sym_size(1), positions});
        auto [y, mean, m2] = eqnorm::call_field_norm(rows, weight, bias, index, std::nullopt, false, batch, eps);
        return std::make_tuple(y.view_symint(x.sym_sizes()), mean, m2);
      },
      "eqnorm::field_norm of a contiguous (N, C, *spatial) tensor");
}

TORCH_LIBRARY(eqnorm, m) {
  // The whole layer, as torch's native_group_norm: statistics, the small (N, C) coefficient map and the affine pass in
  // one call. x is (N, C, P), (N, P, C) when channels_last, or ragged (rows, C) with offsets ptr; batch pools the
  // statistics over the samples (batch norm). weight (F,) and bias (T,) are optional: None is a weight of 1, a bias
  // of 0. index is the FieldLayout's index tensors (index_args.h). Returns y and the per-sample mean
  // and M2 (N, C) that the backward reads; (N, 0) for point rows (checks.h), whose backward reads x instead.
  m.def(
      "field_norm(Tensor x, Tensor? weight, Tensor? bias, Tensor[] index, Tensor? ptr, bool channels_last, "
      "bool batch, float eps) -> (Tensor, Tensor, Tensor)");
  // The fused backward: (dx, dweight, dbias), each computed only where output_mask says (else None; dweight and dbias
  // also None without weight or bias), as native_group_norm_backward. Not differentiable itself: double backward
  // differentiates field_norm through its composite form (autograd.cpp).
  m.def(
      "field_norm_backward(Tensor dy, Tensor x, Tensor mean, Tensor m2, Tensor? weight, Tensor? bias, "
      "Tensor[] index, Tensor? ptr, bool channels_last, bool batch, float eps, bool[3] output_mask) "
      "-> (Tensor?, Tensor?, Tensor?)");
}
