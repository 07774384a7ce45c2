// The FieldLayout as the ops take it: ten small tensors, in the order of eqnorm.layout.LayoutTensors.
//
//   field_of_channel (C,) int64    group_of_channel (C,) int64    group_size (G,) float: channels per group
//   center_channel, center_class (K,) int64 and center_value (K,) float: the entries of the orthonormal basis
//       vectors of the centering classes, so that with class_scale (L,) = 1 / copies per class
//       z_l = class_scale_l * sum_{k: class k = l} value_k m[channel_k],  cen[channel_k] += value_k z[class_k]
//   bias_channel, bias_index (B,) int64 and bias_value (B,) float: b[bias_channel_j] += value_j bias[bias_index_j]
#pragma once

#include <vector>

#include "checks.h"

namespace eqnorm {

struct LayoutArgs {
  at::Tensor field_of_channel, group_of_channel, group_size;
  at::Tensor center_channel, center_class, center_value, class_scale;
  at::Tensor bias_channel, bias_index, bias_value;
  int64_t groups() const { return group_size.size(0); }
  int64_t classes() const { return class_scale.size(0); }
};

// Checks shapes, dtypes and devices of the layout against x (C channels), weight and bias; on the CPU also every index
// against the size it indexes, so that no kernel can read out of bounds.
inline LayoutArgs layout_args(const char* op, at::TensorList t, const at::Tensor& x, int64_t channels,
                              const at::Tensor& weight, const at::Tensor& bias) {
  TORCH_CHECK(t.size() == 10, op, ": layout must hold the 10 tensors of eqnorm.layout.LayoutTensors, got ", t.size());
  static const char* names[10] = {"field_of_channel", "group_of_channel", "group_size",  "center_channel",
                                  "center_class",     "center_value",     "class_scale", "bias_channel",
                                  "bias_index",       "bias_value"};
  static const bool is_index[10] = {true, true, false, true, true, false, false, true, true, false};
  for (size_t i = 0; i < 10; ++i) {
    TORCH_CHECK(t[i].dim() == 1, op, ": layout ", names[i], " must be 1D, got shape ", t[i].sizes());
    TORCH_CHECK(t[i].device() == x.device(), op, ": layout ", names[i], " is on ", t[i].device(), " but x is on ",
                x.device());
    TORCH_CHECK(is_index[i] ? t[i].scalar_type() == at::kLong : at::isFloatingType(t[i].scalar_type()), op,
                ": layout ", names[i], " must be ", is_index[i] ? "int64" : "floating point", ", got ",
                t[i].scalar_type());
  }
  // contiguous, so that kernels may walk them as arrays
  LayoutArgs l{t[0].contiguous(), t[1].contiguous(), t[2].contiguous(), t[3].contiguous(), t[4].contiguous(),
               t[5].contiguous(), t[6].contiguous(), t[7].contiguous(), t[8].contiguous(), t[9].contiguous()};
  TORCH_CHECK(l.field_of_channel.size(0) == channels && l.group_of_channel.size(0) == channels, op,
              ": the layout describes ", l.field_of_channel.size(0), " channels but x has ", channels);
  TORCH_CHECK(l.center_class.size(0) == l.center_channel.size(0) && l.center_value.size(0) == l.center_channel.size(0),
              op, ": center_channel, center_class and center_value must have one length");
  TORCH_CHECK(l.bias_index.size(0) == l.bias_channel.size(0) && l.bias_value.size(0) == l.bias_channel.size(0), op,
              ": bias_channel, bias_index and bias_value must have one length");
  check_parameter(op, "weight", weight, x);
  check_parameter(op, "bias", bias, x);
  if (x.device().is_cpu()) {
    auto in_range = [&](const at::Tensor& index, int64_t size, const char* name, const char* what) {
      const int64_t* v = index.data_ptr<int64_t>();
      for (int64_t i = 0; i < index.numel(); ++i)
        TORCH_CHECK(v[i] >= 0 && v[i] < size, op, ": layout ", name, "[", i, "] = ", v[i], " is not a valid index of ",
                    what, " (size ", size, ")");
    };
    in_range(l.field_of_channel, weight.size(0), "field_of_channel", "weight");
    in_range(l.group_of_channel, l.groups(), "group_of_channel", "group_size");
    in_range(l.center_channel, channels, "center_channel", "the channels");
    in_range(l.center_class, l.classes(), "center_class", "class_scale");
    in_range(l.bias_channel, channels, "bias_channel", "the channels");
    in_range(l.bias_index, bias.size(0), "bias_index", "bias");
  }
  return l;
}

}  // namespace eqnorm
