// Autograd of eqnorm::field_norm, in C++ so that an eager call never enters Python.
//
// Backward with grad mode off (the usual backward) calls the fused eqnorm::field_norm_backward. With grad mode on
// (create_graph=True: forces from energies, Hessians, gradient penalties) it differentiates the composite ATen form of
// the layer instead, so the gradient is itself differentiable, to any order. Inputs that carry forward-mode tangents
// take the composite form in the forward itself.
#include <torch/autograd.h>

#include "field_norm.h"

namespace eqnorm {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using Optional = std::optional<at::Tensor>;

Gradients call_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& m2,
                        const Optional& weight, const Optional& bias, at::TensorList index, const Optional& ptr,
                        bool last, bool batch, double eps, OutputMask mask) {
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("eqnorm::field_norm_backward", "").typed<decltype(call_backward)>();
  return op.call(dy, x, mean, m2, weight, bias, index, ptr, last, batch, eps, mask);
}

class FieldNormFunction : public torch::autograd::Function<FieldNormFunction> {
 public:
  // index is a std::vector, not a TensorList, so that autograd sees it as one non-differentiable argument: its
  // small tensors get no edges and no saved-variable bookkeeping. weight and bias are optional, as in the schema
  // (autograd's records of the inputs need defined tensors); saved undefined when absent.
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const Optional& weight, const Optional& bias,
                               const std::vector<at::Tensor>& index, const Optional& ptr, bool last, bool batch,
                               double eps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, mean, m2] = call_field_norm(x, weight, bias, index, ptr, last, batch, eps);
    ctx->save_for_backward({x, given(weight), given(bias), mean, m2});
    ctx->saved_data["index"] = index;
    ctx->saved_data["ptr"] = ptr;
    ctx->saved_data["last"] = last;
    ctx->saved_data["batch"] = batch;
    ctx->saved_data["eps"] = eps;
    ctx->mark_non_differentiable({mean, m2});
    return {y, mean, m2};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &bias = saved[2], &mean = saved[3], &m2 = saved[4];
    const std::vector<at::Tensor> index = ctx->saved_data["index"].toTensorVector();
    const std::optional<at::Tensor> ptr = ctx->saved_data["ptr"].toOptional<at::Tensor>();
    const bool last = ctx->saved_data["last"].toBool(), batch = ctx->saved_data["batch"].toBool();
    const double eps = ctx->saved_data["eps"].toDouble();
    variable_list out(8);  // one per forward argument
    at::Tensor dy = grads[0];
    if (!dy.defined()) return out;
    if (!torch::autograd::GradMode::is_enabled()) {
      // autograd numbers only the tensors given: bias is input 1 when there is no weight
      const size_t bias_edge = weight.defined() ? 2 : 1;
      const OutputMask mask{ctx->needs_input_grad(0), weight.defined() && ctx->needs_input_grad(1),
                            bias.defined() && ctx->needs_input_grad(bias_edge)};
      const auto [dx, dweight, dbias] = call_backward(dy.contiguous(), x, mean, m2, optional(weight), optional(bias),
                                                      index, ptr, last, batch, eps, mask);
      out[0] = given(dx);
      out[1] = given(dweight);
      out[2] = given(dbias);
      return out;
    }
    // Differentiable gradient: autograd through the composite form, connected to x, weight, bias and dy.
    variable_list inputs;
    std::vector<size_t> slots;
    for (size_t i = 0; i < 3; ++i)
      if (saved[i].defined() && saved[i].requires_grad()) {
        inputs.push_back(saved[i]);
        slots.push_back(i);
      }
    if (inputs.empty()) return out;
    const at::Tensor y = field_norm_composite(x, weight, bias, index, ptr, last, batch, eps);
    const variable_list g = torch::autograd::grad({y}, inputs, {dy}, /*retain_graph=*/true, /*create_graph=*/true,
                                                  /*allow_unused=*/true);
    for (size_t k = 0; k < slots.size(); ++k) out[slots[k]] = g[k];
    return out;
  }
};

bool has_tangent(const at::Tensor& t) { return t.defined() && t._fw_grad(/*level=*/0).defined(); }
bool requires_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }

Outputs field_norm_autograd(const at::Tensor& x, const Optional& weight_in, const Optional& bias_in,
                            at::TensorList index, const Optional& ptr, bool last, bool batch, double eps) {
  const at::Tensor weight = given(weight_in), bias = given(bias_in);
  if (has_tangent(x) || has_tangent(weight) || has_tangent(bias)) {
    // Forward mode (torch.autograd.forward_ad, torch.func.jvp): y from the composite ATen form, whose operations
    // carry tangents (and stay differentiable backward, to any order); the statistics from the kernels.
    Outputs out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = call_field_norm(x, weight_in, bias_in, index, ptr, last, batch, eps);
    }
    std::get<0>(out) = field_norm_composite(x, weight, bias, index, ptr, last, batch, eps);
    return out;
  }
  const bool record = torch::autograd::GradMode::is_enabled() &&
                      (x.requires_grad() || requires_grad(weight) || requires_grad(bias));
  if (!record) {  // no graph to build: skip the autograd node, its context and the saved tensors
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_field_norm(x, weight_in, bias_in, index, ptr, last, batch, eps);
  }
  const variable_list out = FieldNormFunction::apply(x, weight_in, bias_in, index.vec(), ptr, last, batch, eps);
  return {out[0], out[1], out[2]};
}

// The fused backward has no derivative of its own: refuse to be differentiated rather than return wrong gradients.
Gradients field_norm_backward_autograd(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                                       const at::Tensor& m2, const Optional& weight, const Optional& bias,
                                       at::TensorList index, const Optional& ptr, bool last, bool batch, double eps,
                                       OutputMask mask) {
  const bool differentiated = torch::autograd::GradMode::is_enabled() &&
                              (dy.requires_grad() || x.requires_grad() || requires_grad(given(weight)) ||
                               requires_grad(given(bias)) || mean.requires_grad() || m2.requires_grad());
  TORCH_CHECK(!differentiated,
              "eqnorm::field_norm_backward is not differentiable; for higher derivatives differentiate "
              "eqnorm::field_norm with create_graph=True, which takes a differentiable path");
  at::AutoDispatchBelowADInplaceOrView guard;
  return call_backward(dy, x, mean, m2, weight, bias, index, ptr, last, batch, eps, mask);
}

}  // namespace

Outputs call_field_norm(const at::Tensor& x, const Optional& weight, const Optional& bias, at::TensorList index,
                        const Optional& ptr, bool last, bool batch, double eps) {
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("eqnorm::field_norm", "").typed<decltype(call_field_norm)>();
  return op.call(x, weight, bias, index, ptr, last, batch, eps);
}

TORCH_LIBRARY_IMPL(eqnorm, Autograd, m) {
  m.impl("field_norm", &field_norm_autograd);
  m.impl("field_norm_backward", &field_norm_backward_autograd);
}

}  // namespace eqnorm
