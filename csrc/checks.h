// Argument checks shared by the CPU and CUDA implementations of the four passes. Every message names the op, the
// argument and the offending value.
#pragma once

#include <torch/library.h>

#include <ATen/ATen.h>

#include <optional>
#include <utility>
#include <vector>

#include "centering.h"

namespace eqnorm {

// Where the rows of x are: samples N, channels C and positions P (per sample, or in total when ragged).
struct RowShape {
  int64_t samples;
  int64_t channels;
  int64_t positions;
};

inline at::ScalarType accumulation_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline RowShape check_rows(const char* op, const at::Tensor& x, bool channels_last,
                           const std::optional<at::Tensor>& ptr) {
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16, op,
              ": x must be float16, bfloat16, float32 or float64, got ", t);
  if (!ptr.has_value()) {
    TORCH_CHECK(x.dim() == 3, op, ": x must be 3D, (N, C, P) or (N, P, C) when channels_last, got shape ",
                x.sizes());
    return channels_last ? RowShape{x.size(0), x.size(2), x.size(1)} : RowShape{x.size(0), x.size(1), x.size(2)};
  }
  TORCH_CHECK(channels_last, op, ": ragged rows (ptr given) are channels-last; pass channels_last=True");
  TORCH_CHECK(x.dim() == 2, op, ": with ptr, x must be 2D (positions, C), got shape ", x.sizes());
  TORCH_CHECK(ptr->scalar_type() == at::kLong && ptr->dim() == 1 && ptr->numel() >= 1, op,
              ": ptr must be a 1D int64 tensor of N + 1 offsets, got ", ptr->scalar_type(), " of shape ", ptr->sizes());
  TORCH_CHECK(ptr->device() == x.device(), op, ": ptr is on ", ptr->device(), " but x is on ", x.device());
  return RowShape{ptr->numel() - 1, x.size(1), x.size(0)};
}

inline void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.sizes() == x.sizes(), op, ": ", name, " must have the shape of x ", x.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have x's dtype ", x.scalar_type(), ", got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
}

inline void check_stat(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x, RowShape s) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == s.samples && t.size(1) == s.channels, op, ": ", name,
              " must have shape (", s.samples, ", ", s.channels, "), got ", t.sizes());
  const auto acc = accumulation_type(x.scalar_type());
  TORCH_CHECK(t.scalar_type() == acc, op, ": ", name, " must be ", acc, " for ", x.scalar_type(), " x, got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
}

// The operators and positions of the coefficient kernels, checked against the (N, C) statistics.
template <typename A>
std::pair<eqnorm_layout::Centering<A>, eqnorm_layout::Positions<A>> check_centering(
    const char* op, const at::Tensor& mean, const std::vector<at::Tensor>& same, const at::Tensor& weight,
    const at::Tensor& center_in,
    const at::Tensor& center_out, const at::Tensor& group_of_channel, const at::Tensor& group_size,
    const at::Tensor& channels_by_group, const at::Tensor& group_start, double positions,
    const std::optional<at::Tensor>& counts) {
  TORCH_CHECK(mean.dim() == 2, op, ": mean must be 2D (N, C), got ", mean.sizes());
  const int64_t C = mean.size(1);
  TORCH_CHECK(weight.numel() == C && weight.scalar_type() == mean.scalar_type() && weight.device() == mean.device(),
              op, ": weight (and bias) must be ", C, " ", mean.scalar_type(), " values on ", mean.device());
  for (const auto& t : same)
    TORCH_CHECK(t.sizes() == mean.sizes() && t.scalar_type() == mean.scalar_type() && t.device() == mean.device(), op,
                ": every (N, C) statistic must match mean ", mean.sizes(), " ", mean.scalar_type());
  TORCH_CHECK(center_in.dim() == 2 && center_in.size(0) == C, op, ": center_in must be (", C, ", L), got ",
              center_in.sizes());
  const int64_t L = center_in.size(1);
  TORCH_CHECK(center_out.dim() == 2 && center_out.size(0) == L && center_out.size(1) == C, op,
              ": center_out must be (", L, ", ", C, "), got ", center_out.sizes());
  TORCH_CHECK(group_of_channel.scalar_type() == at::kLong && group_of_channel.numel() == C, op,
              ": group_of_channel must be ", C, " int64 values, got ", group_of_channel.sizes(), " ",
              group_of_channel.scalar_type());
  for (const at::Tensor* t : {&center_in, &center_out, &group_size})
    TORCH_CHECK(t->scalar_type() == mean.scalar_type() && t->device() == mean.device() && t->is_contiguous(), op,
                ": the layout operators must be contiguous ", mean.scalar_type(), " on ", mean.device());
  TORCH_CHECK(channels_by_group.scalar_type() == at::kLong && channels_by_group.numel() == C, op,
              ": channels_by_group must be ", C, " int64 values, got ", channels_by_group.sizes());
  TORCH_CHECK(group_start.scalar_type() == at::kLong && group_start.numel() == group_size.numel() + 1, op,
              ": group_start must be ", group_size.numel() + 1, " int64 offsets, got ", group_start.sizes());
  for (const at::Tensor* t : {&group_of_channel, &channels_by_group, &group_start})
    TORCH_CHECK(t->device() == mean.device() && t->is_contiguous(), op,
                ": the layout's index tensors must be contiguous on ", mean.device());
  const A* count_data = nullptr;
  if (counts.has_value()) {
    TORCH_CHECK(counts->numel() == mean.size(0) && counts->scalar_type() == mean.scalar_type() &&
                    counts->device() == mean.device() && counts->is_contiguous(),
                op, ": counts must be ", mean.size(0), " contiguous ", mean.scalar_type(), " values on ", mean.device());
    count_data = counts->data_ptr<A>();
  }
  return {{center_in.data_ptr<A>(), center_out.data_ptr<A>(), group_of_channel.data_ptr<int64_t>(),
           group_size.data_ptr<A>(), channels_by_group.data_ptr<int64_t>(), group_start.data_ptr<int64_t>(), C, L,
           group_size.numel()},
          {static_cast<A>(positions), count_data}};
}

}  // namespace eqnorm
