// The fused coefficient map and its vector-Jacobian product on the CPU: one sample at a time, in parallel over samples,
// the same steps as csrc/cuda/coefficients.cu (the formulas are in eqnorm/coefficients.py). One op instead of a dozen
// small tensor ops, and no (N, C) temporaries.
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "checks.h"

namespace eqnorm {
namespace {

using eqnorm_layout::Centering;
using eqnorm_layout::Positions;

// The nonzeros of a dense (rows, cols) matrix, row by row: the centering operators are very sparse (a channel meets
// only the classes of its own field's irreps), so a sample costs O(nonzeros) instead of O(C L).
template <typename A> struct SparseRows {
  std::vector<int64_t> start, column;
  std::vector<A> value;
  SparseRows(const A* dense, int64_t rows, int64_t cols) : start{0} {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t k = 0; k < cols; ++k)
        if (dense[r * cols + k] != A(0)) {
          column.push_back(k);
          value.push_back(dense[r * cols + k]);
        }
      start.push_back(static_cast<int64_t>(column.size()));
    }
  }
  // out[column] += x[row] * value over all nonzeros (out must be zeroed by the caller)
  void scatter(const A* x, A* out) const {
    for (size_t r = 0; r + 1 < start.size(); ++r)
      for (int64_t k = start[r]; k < start[r + 1]; ++k) out[column[k]] += x[r] * value[k];
  }
  // out[row] += sum over the row's nonzeros of x[column] * value
  void gather(const A* x, A* out) const {
    for (size_t r = 0; r + 1 < start.size(); ++r) {
      A acc = 0;
      for (int64_t k = start[r]; k < start[r + 1]; ++k) acc += x[column[k]] * value[k];
      out[r] += acc;
    }
  }
};

// center_in (C, L) and center_out (L, C) by rows.
template <typename A> struct SparseCentering {
  SparseRows<A> in, out;
  explicit SparseCentering(const Centering<A>& op)
      : in(op.center_in, op.channels, op.classes), out(op.center_out, op.classes, op.channels) {}
};

// Scratch space of one thread: centered coordinates z (L), cen (C), a per-channel work vector (C), rstd and the
// cotangent of the variance per group (G).
template <typename A> struct Scratch {
  std::vector<A> z, cen, work, rstd, gvar;
  explicit Scratch(const Centering<A>& op)
      : z(op.classes), cen(op.channels), work(op.channels), rstd(op.groups), gvar(op.groups) {}
};

// out[g] = sum of values[c] over the channels of group g, in channel order.
template <typename A> void group_sums(const Centering<A>& op, const A* values, A* out) {
  for (int64_t g = 0; g < op.groups; ++g) {
    A acc = 0;
    for (int64_t k = op.group_start[g]; k < op.group_start[g + 1]; ++k) acc += values[op.channels_by_group[k]];
    out[g] = acc;
  }
}

// cen and rstd of one sample: cen = (m Ain) Aout through z.
template <typename A>
void statistics(const Centering<A>& op, const SparseCentering<A>& k, const A* m, const A* m2, A P, A eps,
                Scratch<A>& s) {
  std::fill(s.z.begin(), s.z.end(), A(0));
  k.in.scatter(m, s.z.data());
  std::fill(s.cen.begin(), s.cen.end(), A(0));
  k.out.scatter(s.z.data(), s.cen.data());
  for (int64_t c = 0; c < op.channels; ++c) {
    const A d = m[c] - s.cen[c];
    s.work[c] = m2[c] + P * d * d;
  }
  group_sums(op, s.work.data(), s.rstd.data());
  for (int64_t g = 0; g < op.groups; ++g) s.rstd[g] = A(1) / std::sqrt(s.rstd[g] / (P * op.group_size[g]) + eps);
}

template <typename A>
void forward(const A* mean, const A* m2, const A* w, const A* b, const Centering<A>& op, Positions<A> pos, A eps,
             int64_t samples, A* a, A* beta) {
  const int64_t C = op.channels;
  const SparseCentering<A> k(op);
  at::parallel_for(0, samples, 1, [&](int64_t begin, int64_t end) {
    Scratch<A> s(op);
    for (int64_t n = begin; n < end; ++n) {
      statistics(op, k, mean + n * C, m2 + n * C, pos.counts ? pos.counts[n] : pos.positions, eps, s);
      for (int64_t c = 0; c < C; ++c) {
        const A ac = w[c] * s.rstd[op.group_of_channel[c]];
        a[n * C + c] = ac;
        beta[n * C + c] = b[c] - ac * s.cen[c];
      }
    }
  });
}

template <typename A>
void backward(const A* grad_a, const A* grad_beta, const A* mean, const A* m2, const A* w, const Centering<A>& op,
              Positions<A> pos, A eps, int64_t samples, A* a, A* u, A* v, A* grad_w) {
  const int64_t C = op.channels;
  const SparseCentering<A> k(op);
  at::parallel_for(0, samples, 1, [&](int64_t begin, int64_t end) {
    Scratch<A> s(op);
    for (int64_t n = begin; n < end; ++n) {
      const A P = pos.counts ? pos.counts[n] : pos.positions;
      const A* m = mean + n * C;
      const A* gb = grad_beta + n * C;
      statistics(op, k, m, m2 + n * C, P, eps, s);
      for (int64_t c = 0; c < C; ++c) {
        const A ga = grad_a[n * C + c] - gb[c] * s.cen[c];
        grad_w[n * C + c] = ga * s.rstd[op.group_of_channel[c]];
        s.work[c] = ga * w[c];
      }
      group_sums(op, s.work.data(), s.gvar.data());
      for (int64_t g = 0; g < op.groups; ++g) {
        const A r = s.rstd[g];
        s.gvar[g] *= A(-0.5) * r * r * r / (P * op.group_size[g]);  // the cotangent of m2
      }
      for (int64_t c = 0; c < C; ++c) {
        const int64_t g = op.group_of_channel[c];
        const A ac = w[c] * s.rstd[g];
        const A gdev = 2 * P * s.gvar[g] * (m[c] - s.cen[c]);
        a[n * C + c] = ac;
        u[n * C + c] = 2 * s.gvar[g];
        v[n * C + c] = gdev;
        s.work[c] = -ac * gb[c] - gdev;  // the cotangent of cen
      }
      // the cotangent of the mean picks up (cotangent of cen) K^T = ((. Aout^T) Ain^T)
      std::fill(s.z.begin(), s.z.end(), A(0));
      k.out.gather(s.work.data(), s.z.data());
      A* vn = v + n * C;
      k.in.gather(s.z.data(), vn);
      for (int64_t c = 0; c < C; ++c) vn[c] = vn[c] / P - u[n * C + c] * m[c];
    }
  });
}

std::tuple<at::Tensor, at::Tensor> coefficients_cpu(const at::Tensor& mean_in, const at::Tensor& m2_in,
                                                    const at::Tensor& weight, const at::Tensor& bias,
                                                    const at::Tensor& center_in, const at::Tensor& center_out,
                                                    const at::Tensor& group_of_channel, const at::Tensor& group_size,
                                                    const at::Tensor& channels_by_group, const at::Tensor& group_start,
                                                    double positions, const std::optional<at::Tensor>& counts,
                                                    double eps) {
  const char* op = "eqnorm::coefficients";
  const at::Tensor mean = mean_in.contiguous(), m2 = m2_in.contiguous();
  const at::Tensor w = weight.contiguous(), b = bias.contiguous();
  TORCH_CHECK(b.sizes() == w.sizes(), op, ": bias must have the shape of weight ", w.sizes(), ", got ", b.sizes());
  at::Tensor a = at::empty_like(mean), beta = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "eqnorm_coefficients", [&] {
    auto [cen, pos] = check_centering<scalar_t>(op, mean, {m2}, w, center_in, center_out, group_of_channel,
                                                group_size, channels_by_group, group_start, positions, counts);
    forward<scalar_t>(mean.data_ptr<scalar_t>(), m2.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                      b.data_ptr<scalar_t>(), cen, pos, static_cast<scalar_t>(eps), mean.size(0),
                      a.data_ptr<scalar_t>(), beta.data_ptr<scalar_t>());
  });
  return {a, beta};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> coefficients_backward_cpu(
    const at::Tensor& grad_a_in, const at::Tensor& grad_beta_in, const at::Tensor& mean_in, const at::Tensor& m2_in,
    const at::Tensor& weight, const at::Tensor& center_in, const at::Tensor& center_out,
    const at::Tensor& group_of_channel, const at::Tensor& group_size, const at::Tensor& channels_by_group,
    const at::Tensor& group_start, double positions, const std::optional<at::Tensor>& counts, double eps) {
  const char* op = "eqnorm::coefficients_backward";
  const at::Tensor mean = mean_in.contiguous(), m2 = m2_in.contiguous();
  const at::Tensor ga = grad_a_in.contiguous(), gb = grad_beta_in.contiguous(), w = weight.contiguous();
  at::Tensor a = at::empty_like(mean), u = at::empty_like(mean), v = at::empty_like(mean);
  at::Tensor gw = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "eqnorm_coefficients_backward", [&] {
    auto [cen, pos] = check_centering<scalar_t>(op, mean, {m2, ga, gb}, w, center_in, center_out, group_of_channel,
                                                group_size, channels_by_group, group_start, positions, counts);
    backward<scalar_t>(ga.data_ptr<scalar_t>(), gb.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(),
                       m2.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), cen, pos, static_cast<scalar_t>(eps),
                       mean.size(0), a.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                       gw.data_ptr<scalar_t>());
  });
  return {a, u, v, gw};
}

}  // namespace

TORCH_LIBRARY_IMPL(eqnorm, CPU, m) {
  m.impl("coefficients", &coefficients_cpu);
  m.impl("coefficients_backward", &coefficients_backward_cpu);
}

}  // namespace eqnorm
