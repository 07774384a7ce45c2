// Argument checks shared by every implementation. Every message names the op, the argument and the offending value.
#pragma once

#include <torch/library.h>

#include <ATen/ATen.h>

#include <optional>

namespace eqnorm {

// Where the rows of x are: samples N, channels C and positions P (per sample, or in total when ragged).
struct RowShape {
  int64_t samples;
  int64_t channels;
  int64_t positions;
};

inline at::ScalarType accumulation_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

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

// The values of ptr (on the CPU): 0 first, the number of rows last, never decreasing.
inline void check_ptr_values(const char* op, const at::Tensor& ptr, int64_t rows) {
  const at::Tensor p = ptr.contiguous();
  const int64_t* v = p.data_ptr<int64_t>();
  const int64_t n = p.numel();
  TORCH_CHECK(v[0] == 0 && v[n - 1] == rows, op, ": ptr must run from 0 to the number of rows ", rows,
              ", got ptr[0] = ", v[0], " and ptr[-1] = ", v[n - 1]);
  for (int64_t i = 1; i < n; ++i)
    TORCH_CHECK(v[i] >= v[i - 1], op, ": ptr must be non-decreasing, but ptr[", i, "] = ", v[i], " < ptr[", i - 1,
                "] = ", v[i - 1]);
}

inline void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.sizes() == x.sizes(), op, ": ", name, " must have the shape of x ", x.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have x's dtype ", x.scalar_type(), ", got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
}

// Point rows: one position per sample of its own (no ptr, no batch pooling), as e3nn's node features. A row's
// statistics there are the row itself (mean x, M2 0), so field_norm keeps none: its mean and m2 are (N, 0), and the
// backward reads x instead. Statistics as large as x would cost two more writes of x per call, and the memory autograd
// holds for the backward.
inline bool point_rows(const RowShape& s, const std::optional<at::Tensor>& ptr, bool batch) {
  return !ptr.has_value() && !batch && s.positions == 1;
}

// The columns of field_norm's mean and m2: C, or none for point rows.
inline int64_t statistics_columns(const RowShape& s, const std::optional<at::Tensor>& ptr, bool batch) {
  return point_rows(s, ptr, batch) ? 0 : s.channels;
}

// t is (N, columns) in x's accumulation dtype, on x's device (columns: C unless said).
inline void check_stat(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x, RowShape s,
                       int64_t columns = -1) {
  columns = columns < 0 ? s.channels : columns;
  TORCH_CHECK(t.dim() == 2 && t.size(0) == s.samples && t.size(1) == columns, op, ": ", name,
              " must have shape (", s.samples, ", ", columns, "), got ", t.sizes());
  const auto acc = accumulation_type(x.scalar_type());
  TORCH_CHECK(t.scalar_type() == acc, op, ": ", name, " must be ", acc, " for ", x.scalar_type(), " x, got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
}

// The arguments of eqnorm::affine_backward, checked alike on every device: dy like x, a, u and v per-row statistics.
inline void check_affine_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& a, const at::Tensor& u,
                                  const at::Tensor& v, RowShape s) {
  const char* op = "eqnorm::affine_backward";
  check_like(op, "dy", dy, x);
  check_stat(op, "a", a, x, s);
  check_stat(op, "u", u, x, s);
  check_stat(op, "v", v, x, s);
}

}  // namespace eqnorm
