// The FieldLayout as the ops take it, their argument `index`: fourteen small tensors, in the order of
// eqnorm.layout.IndexTensors.
//
//   field_of_channel (C,) int64    group_of_channel (C,) int64    group_size (G,) float: the divisor per group
//   center_channel, center_class (K,) int64 and center_value (K,) float: the entries of the orthonormal basis
//       vectors of the centering classes, so that with class_scale (L,) = 1 / copies per class
//       z_l = class_scale_l * sum_{k: class k = l} value_k m[channel_k],  cen[channel_k] += value_k z[class_k]
//   bias_channel, bias_index and bias_value (B,): b[bias_channel_j] += value_j bias[bias_index_j]
//   compiled_index, compiled_field_sum (F + 1 + C), compiled_bias_grad (T + 1 + B) int64 and compiled_value float64:
//       the same operators compiled for the kernels (eqnorm/compiled.py, coefficient_map.h), their values checked
//       once when the layout was built; here only their sizes, which give F fields and T trivial copies.
#pragma once

#include <vector>

#include "checks.h"

namespace eqnorm {

struct IndexArgs {
  at::Tensor field_of_channel, group_of_channel, group_size;
  at::Tensor center_channel, center_class, center_value, class_scale;
  at::Tensor bias_channel, bias_index, bias_value;
  at::Tensor compiled_index, compiled_field_sum, compiled_bias_grad, compiled_value;
  int64_t groups() const { return group_size.size(0); }
  int64_t classes() const { return class_scale.size(0); }
  int64_t fields() const { return compiled_field_sum.size(0) - field_of_channel.size(0) - 1; }
  int64_t trivial() const { return compiled_bias_grad.size(0) - bias_channel.size(0) - 1; }
};

// The sizes of compiled_index (eqnorm/compiled.py): per operator of the map its offsets and sources, the center
// operator's broadcast runs, then `cuts` triples.
struct CompiledSizes {
  int64_t index, cuts;
};
inline CompiledSizes compiled_sizes(int64_t C, int64_t G, int64_t L, int64_t K, int64_t B, int64_t index_numel) {
  const int64_t fixed = (L + 1 + K) + (C + 1 + K) + (G + 1 + C) + (C + 1 + B) + C;
  return {fixed, (index_numel - fixed) / 3};
}

constexpr size_t kIndexTensors = 14;

// The layout's tensors as named fields, unchecked (each made contiguous, so that kernels may walk them as arrays).
inline IndexArgs index_fields(at::TensorList t) {
  TORCH_CHECK(t.size() == kIndexTensors, "eqnorm: index must hold the ", kIndexTensors,
              " tensors of eqnorm.layout.IndexTensors, got ", t.size());
  return {t[0].contiguous(),  t[1].contiguous(),  t[2].contiguous(),  t[3].contiguous(), t[4].contiguous(),
          t[5].contiguous(),  t[6].contiguous(),  t[7].contiguous(),  t[8].contiguous(), t[9].contiguous(),
          t[10].contiguous(), t[11].contiguous(), t[12].contiguous(), t[13].contiguous()};
}

// A parameter (weight or bias), unless absent (undefined): 1D of `size` entries, floating, on x's device.
inline void check_parameter(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x, int64_t size,
                            const char* per) {
  if (!t.defined()) return;
  TORCH_CHECK(t.dim() == 1 && t.size(0) == size, op, ": ", name, " must have shape (", size, ",), one entry ", per,
              " of the layout, got shape ", t.sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be floating point, got ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
}

// Checks shapes, dtypes and devices of the layout against x (C channels), weight and bias (either undefined when
// absent): O(1), no value is read.
inline IndexArgs index_args(const char* op, at::TensorList t, const at::Tensor& x, int64_t channels,
                              const at::Tensor& weight, const at::Tensor& bias) {
  constexpr size_t n = kIndexTensors;
  TORCH_CHECK(t.size() == n, op, ": index must hold the ", n, " tensors of eqnorm.layout.IndexTensors, got ",
              t.size());
  static const char* names[n] = {
      "field_of_channel", "group_of_channel", "group_size",         "center_channel",
      "center_class",     "center_value",     "class_scale",        "bias_channel",
      "bias_index",       "bias_value",       "compiled_index",     "compiled_field_sum",
      "compiled_bias_grad", "compiled_value"};
  static const bool is_index[n] = {true, true, false, true, true, false, false,
                                   true, true, false, true, true,  true,  false};
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK(t[i].dim() == 1, op, ": index ", names[i], " must be 1D, got shape ", t[i].sizes());
    TORCH_CHECK(t[i].device() == x.device(), op, ": index ", names[i], " is on ", t[i].device(), " but x is on ",
                x.device());
    TORCH_CHECK(is_index[i] ? t[i].scalar_type() == at::kLong : at::isFloatingType(t[i].scalar_type()), op,
                ": index ", names[i], " must be ", is_index[i] ? "int64" : "floating point", ", got ",
                t[i].scalar_type());
  }
  TORCH_CHECK(t[13].scalar_type() == at::kDouble, op, ": index compiled_value must be float64, got ",
              t[13].scalar_type());
  IndexArgs l = index_fields(t);
  TORCH_CHECK(l.field_of_channel.size(0) == channels && l.group_of_channel.size(0) == channels, op,
              ": the index describes ", l.field_of_channel.size(0), " channels but x has ", channels);
  TORCH_CHECK(l.center_class.size(0) == l.center_channel.size(0) && l.center_value.size(0) == l.center_channel.size(0),
              op, ": center_channel, center_class and center_value must have one length");
  TORCH_CHECK(l.bias_index.size(0) == l.bias_channel.size(0) && l.bias_value.size(0) == l.bias_channel.size(0), op,
              ": bias_channel, bias_index and bias_value must have one length");
  const int64_t K = l.center_channel.numel(), B = l.bias_channel.numel(), index = l.compiled_index.numel();
  const CompiledSizes s = compiled_sizes(channels, l.groups(), l.classes(), K, B, index);
  TORCH_CHECK(index >= s.index + 6 && (index - s.index) % 3 == 0 && l.fields() >= 0 && l.trivial() >= 0 &&
                  l.compiled_value.numel() == 2 * K + 2 * B + 2 * channels,
              op, ": the compiled index (", index, " entries, ", l.compiled_value.numel(), " values) does not match ",
              channels, " channels, ", K, " centering entries and ", B, " bias entries");
  check_parameter(op, "weight", weight, x, l.fields(), "per field");
  check_parameter(op, "bias", bias, x, l.trivial(), "per trivial irrep copy");
  return l;
}

}  // namespace eqnorm
