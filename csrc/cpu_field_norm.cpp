// eqnorm::field_norm on the CPU: the passes of cpu_passes.cpp around a fused coefficient map that walks the layout's
// sparse entries one sample at a time (the same formulas as coefficients_aten, without a dozen (N, C) temporaries).
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdlib>
#include <vector>

#include "field_norm.h"

#define EQNORM_ALWAYS_INLINE inline __attribute__((always_inline))

namespace eqnorm {
namespace {

// The entries of a small 1D floating tensor in type A (read in place for float and double: no dispatch per call).
template <typename A> std::vector<A> values(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  if (c.scalar_type() == at::kDouble) return std::vector<A>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
  if (c.scalar_type() == at::kFloat) return std::vector<A>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
  const at::Tensor d = c.to(at::kDouble);
  return std::vector<A>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

const int64_t* indices(const at::Tensor& t) { return t.data_ptr<int64_t>(); }

// out[index[i]] += value(i) for i < n, adding runs of equal indices in a register first: consecutive channels mostly
// share a group (or a centering class), and adding each straight into memory would wait on the previous store.
template <typename A, typename F> EQNORM_ALWAYS_INLINE void add_runs(int64_t n, const int64_t* index, A* out, F value) {
  if (n == 0) return;
  int64_t current = index[0];
  A run = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (index[i] != current) {
      out[current] += run;
      run = 0;
      current = index[i];
    }
    run += value(i);
  }
  out[current] += run;
}

// The layout as raw arrays in the accumulation type A, and the channel-expanded weight and bias.
template <typename A> struct Layout {
  int64_t C, G, L, K, B;
  const int64_t *field, *group, *center_channel, *center_class, *bias_channel, *bias_index;
  std::vector<A> group_size, center_value, class_scale, bias_value, w, b;

  Layout(const LayoutArgs& l, const at::Tensor& weight, const at::Tensor& bias)
      : C(l.field_of_channel.numel()), G(l.groups()), L(l.classes()), K(l.center_channel.numel()),
        B(l.bias_channel.numel()), field(indices(l.field_of_channel)), group(indices(l.group_of_channel)),
        center_channel(indices(l.center_channel)), center_class(indices(l.center_class)),
        bias_channel(indices(l.bias_channel)), bias_index(indices(l.bias_index)), group_size(values<A>(l.group_size)),
        center_value(values<A>(l.center_value)), class_scale(values<A>(l.class_scale)),
        bias_value(values<A>(l.bias_value)), w(C), b(C, A(0)) {
    const std::vector<A> weights = values<A>(weight), biases = values<A>(bias);
    for (int64_t c = 0; c < C; ++c) w[c] = weights[field[c]];
    for (int64_t j = 0; j < B; ++j) b[bias_channel[j]] += bias_value[j] * biases[bias_index[j]];
  }

  // out = K m (out of length C, z of length L are scratch owned by the caller)
  void center(const A* m, A* z, A* out) const {
    std::fill(z, z + L, A(0));
    add_runs<A>(K, center_class, z, [&](int64_t k) { return center_value[k] * m[center_channel[k]]; });
    for (int64_t l = 0; l < L; ++l) z[l] *= class_scale[l];
    std::fill(out, out + C, A(0));
    for (int64_t k = 0; k < K; ++k) out[center_channel[k]] += center_value[k] * z[center_class[k]];
  }
};

// One thread's working memory for one sample.
template <typename A> struct Sample {
  std::vector<A> z, cen, work, rstd, gvar;
  explicit Sample(const Layout<A>& l) : z(l.L), cen(l.C), work(l.C), rstd(l.G), gvar(l.G) {}

  // cen = K m and rstd per group for statistics m, m2 over P values per channel
  void statistics(const Layout<A>& l, const A* m, const A* m2, A P, A eps) {
    l.center(m, z.data(), cen.data());
    std::fill(rstd.begin(), rstd.end(), A(0));
    add_runs<A>(l.C, l.group, rstd.data(), [&](int64_t c) {
      const A d = m[c] - cen[c];
      return m2[c] + P * d * d;
    });
    for (int64_t g = 0; g < l.G; ++g) rstd[g] = A(1) / std::sqrt(rstd[g] / (P * l.group_size[g]) + eps);
  }
};

// Per-row positions: one for all rows, or counts[n] for row n (ragged).
template <typename A> struct Positions {
  A all;
  const A* counts;
  explicit Positions(const Pooled& s)
      : all(static_cast<A>(s.positions)), counts(s.counts.defined() ? s.counts.data_ptr<A>() : nullptr) {}
  A operator[](int64_t n) const { return counts ? counts[n] : all; }
};

Stats coefficients_cpu(const Pooled& s, const at::Tensor& weight, const at::Tensor& bias, const LayoutArgs& args,
                       double eps) {
  const at::Tensor mean = s.mean.contiguous(), m2 = s.m2.contiguous();
  at::Tensor a = at::empty_like(mean), beta = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "eqnorm::field_norm coefficients", [&] {
    using A = scalar_t;
    const Layout<A> l(args, weight, bias);
    const Positions<A> P(s);
    const A *mp = mean.data_ptr<A>(), *m2p = m2.data_ptr<A>();
    A *ap = a.data_ptr<A>(), *bp = beta.data_ptr<A>();
    at::parallel_for(0, mean.size(0), 16, [&](int64_t begin, int64_t end) {
      Sample<A> w(l);
      for (int64_t n = begin; n < end; ++n) {
        const int64_t r = n * l.C;
        w.statistics(l, mp + r, m2p + r, P[n], static_cast<A>(eps));
        for (int64_t c = 0; c < l.C; ++c) {
          const A ac = l.w[c] * w.rstd[l.group[c]];
          ap[r + c] = ac;
          bp[r + c] = l.b[c] - ac * w.cen[c];
        }
      }
    });
  });
  return {a, beta};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> coefficients_backward_cpu(
    const at::Tensor& sum_dy_x, const at::Tensor& sum_dy, const Pooled& s, const at::Tensor& weight,
    const at::Tensor& bias, const LayoutArgs& args, double eps) {
  const at::Tensor mean = s.mean.contiguous(), m2 = s.m2.contiguous();
  const at::Tensor gax = sum_dy_x.contiguous(), gb = sum_dy.contiguous();
  at::Tensor a = at::empty_like(mean), u = at::empty_like(mean), v = at::empty_like(mean);
  at::Tensor gw = at::empty_like(mean);  // (S, C) weight cotangent per channel, summed in a fixed order below
  at::Tensor dweight = at::zeros(weight.sizes(), mean.options()), dbias = at::zeros(bias.sizes(), mean.options());
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "eqnorm::field_norm_backward coefficients", [&] {
    using A = scalar_t;
    const Layout<A> l(args, weight, bias);
    const Positions<A> P(s);
    const int64_t S = mean.size(0), C = l.C;
    const A *mp = mean.data_ptr<A>(), *m2p = m2.data_ptr<A>(), *gaxp = gax.data_ptr<A>(), *gbp = gb.data_ptr<A>();
    A *ap = a.data_ptr<A>(), *up = u.data_ptr<A>(), *vp = v.data_ptr<A>(), *gwp = gw.data_ptr<A>();
    at::parallel_for(0, S, 16, [&](int64_t begin, int64_t end) {
      Sample<A> w(l);
      for (int64_t n = begin; n < end; ++n) {
        const int64_t r = n * C;
        const A p = P[n];
        const A *m = mp + r, *g_beta = gbp + r;
        w.statistics(l, m, m2p + r, p, static_cast<A>(eps));
        std::fill(w.gvar.begin(), w.gvar.end(), A(0));
        add_runs<A>(C, l.group, w.gvar.data(), [&](int64_t c) {
          const A ga = gaxp[r + c] - g_beta[c] * w.cen[c];  // the cotangent of a, through beta = b - a cen too
          gwp[r + c] = ga * w.rstd[l.group[c]];
          return ga * l.w[c];
        });
        for (int64_t g = 0; g < l.G; ++g) {  // gvar becomes the cotangent of each channel's M2
          const A rs = w.rstd[g];
          w.gvar[g] *= A(-0.5) * rs * rs * rs / (p * l.group_size[g]);
        }
        for (int64_t c = 0; c < C; ++c) {
          const A ac = l.w[c] * w.rstd[l.group[c]], uc = 2 * w.gvar[l.group[c]];
          const A gdev = uc * p * (m[c] - w.cen[c]);
          ap[r + c] = ac;
          up[r + c] = uc;
          vp[r + c] = gdev;
          w.work[c] = -ac * g_beta[c] - gdev;  // the cotangent of cen
        }
        l.center(w.work.data(), w.z.data(), w.cen.data());  // K is symmetric: K^T g = K g
        for (int64_t c = 0; c < C; ++c) vp[r + c] = (vp[r + c] + w.cen[c]) / p - up[r + c] * m[c];
      }
    });
    A *dw = dweight.data_ptr<A>(), *db = dbias.data_ptr<A>();
    for (int64_t n = 0; n < S; ++n)
      for (int64_t c = 0; c < C; ++c) dw[l.field[c]] += gwp[n * C + c];
    for (int64_t j = 0; j < l.B; ++j) {
      A total = 0;
      for (int64_t n = 0; n < S; ++n) total += gbp[n * C + l.bias_channel[j]];
      db[l.bias_index[j]] += l.bias_value[j] * total;
    }
  });
  return {a, u, v, dweight.to(weight.scalar_type()), dbias.to(bias.scalar_type())};
}

// EQNORM_GENERIC_COEFFICIENTS=1 runs the ATen coefficient map (the one CUDA uses) on the CPU, so that machines
// without a GPU test it.
bool generic_coefficients() {
  static const bool generic = [] {
    const char* v = std::getenv("EQNORM_GENERIC_COEFFICIENTS");
    return v != nullptr && std::string(v) == "1";
  }();
  return generic;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> field_norm_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                             const at::Tensor& bias, at::TensorList layout,
                                                             const std::optional<at::Tensor>& ptr, bool last,
                                                             bool batch, double eps) {
  return field_norm_forward(cpu_passes(), generic_coefficients() ? &coefficients_aten : &coefficients_cpu, x, weight,
                            bias, layout, ptr, last, batch, eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> field_norm_backward_cpu(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& m2, const at::Tensor& weight,
    const at::Tensor& bias, at::TensorList layout, const std::optional<at::Tensor>& ptr, bool last, bool batch,
    double eps) {
  return field_norm_backward(cpu_passes(), generic_coefficients() ? &coefficients_backward_aten : &coefficients_backward_cpu,
                             dy, x, mean, m2, weight, bias, layout, ptr, last, batch, eps);
}

}  // namespace

TORCH_LIBRARY_IMPL(eqnorm, CPU, m) {
  m.impl("field_norm", &field_norm_cpu);
  m.impl("field_norm_backward", &field_norm_backward_cpu);
}

}  // namespace eqnorm
