// The coefficient map of one row (one sample's (C,) statistics) as a few phases, free of torch headers so that the CUDA
// kernel (cuda/coefficients.cu, one thread block per row) and the CPU (cpu_field_norm.cpp, under
// EQNORM_GENERIC_COEFFICIENTS=rows, so that machines without a GPU test this code) run the same source.
//
// Each phase computes a set of outputs; thread t of T computes outputs t, t + T, ..., and each output is a sum over
// the layout's entries in their stored order, so the result depends on neither T nor scheduling (no atomics). Between
// two phases the caller synchronizes (__syncthreads() on the GPU). The formulas are those of coefficients_aten
// (field_norm.cpp) and eqnorm/coefficients.py.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define EQNORM_HOST_DEVICE __host__ __device__
#else
#define EQNORM_HOST_DEVICE
#endif

namespace eqnorm_rows {

EQNORM_HOST_DEVICE inline float root(float v) { return sqrtf(v); }
EQNORM_HOST_DEVICE inline double root(double v) { return sqrt(v); }

// The layout's arrays (see layout_args.h) and the parameters, in the accumulation type A where they are values.
template <typename A> struct LayoutView {
  int64_t C, G, L, K, B, F, NB;  // channels, groups, classes, centering entries, bias entries, weights, biases
  const int64_t *field, *group, *center_channel, *center_class, *bias_channel, *bias_index;
  const double *group_size, *center_value, *class_scale, *bias_value;
  const A *weight, *bias;
};

// A row's scratch: z (L), cen (C), rstd (G), gvar (G) and work (C).
template <typename A> struct Scratch {
  A *z, *cen, *rstd, *gvar, *work;
  EQNORM_HOST_DEVICE static int64_t size(const LayoutView<A>& l) { return l.L + 2 * l.C + 2 * l.G; }
  EQNORM_HOST_DEVICE Scratch(const LayoutView<A>& l, A* base)
      : z(base), cen(base + l.L), rstd(base + l.L + l.C), gvar(base + l.L + l.C + l.G), work(base + l.L + l.C + 2 * l.G) {}
};

// The (rows, C) statistics of one call: each row's mean and M2 over count(n) values (counts[n] when ragged).
template <typename A> struct Statistics {
  int64_t rows;
  const A *mean, *m2;
  A positions;
  const A* counts;  // nullptr unless ragged
  A eps;
  EQNORM_HOST_DEVICE A count(int64_t n) const { return counts ? counts[n] : positions; }
};

// The (rows, C) inputs and outputs of the backward map: g_a = sum dy x, g_beta = sum dy in; a, u, v and the weight
// cotangent per channel gw out.
template <typename A> struct Cotangents {
  const A *g_a, *g_beta;
  A *a, *u, *v, *gw;
};

// out = K v: z_l = scale_l sum_{k: class_k = l} value_k v[channel_k], then out_c = sum_{k: channel_k = c} value_k z_l
template <typename A, typename Run>
EQNORM_HOST_DEVICE void center(const LayoutView<A>& l, const A* v, A* z, A* out, Run& run) {
  run([&](int64_t t, int64_t T) {
    for (int64_t c = t; c < l.L; c += T) {
      A s = 0;
      for (int64_t k = 0; k < l.K; ++k)
        if (l.center_class[k] == c) s += A(l.center_value[k]) * v[l.center_channel[k]];
      z[c] = s * A(l.class_scale[c]);
    }
  });
  run([&](int64_t t, int64_t T) {
    for (int64_t c = t; c < l.C; c += T) {
      A s = 0;
      for (int64_t k = 0; k < l.K; ++k)
        if (l.center_channel[k] == c) s += A(l.center_value[k]) * z[l.center_class[k]];
      out[c] = s;
    }
  });
}

// cen = K m, then rstd_g = 1 / sqrt(sum_{c in g} (M2_c + P (m_c - cen_c)^2) / (P size_g) + eps)
template <typename A, typename Run>
EQNORM_HOST_DEVICE void statistics(const LayoutView<A>& l, const A* m, const A* m2, A P, A eps, Scratch<A>& s,
                                   Run& run) {
  center(l, m, s.z, s.cen, run);
  run([&](int64_t t, int64_t T) {
    for (int64_t g = t; g < l.G; g += T) {
      A sum = 0;
      for (int64_t c = 0; c < l.C; ++c)
        if (l.group[c] == g) {
          const A d = m[c] - s.cen[c];
          sum += m2[c] + P * d * d;
        }
      s.rstd[g] = A(1) / root(sum / (P * A(l.group_size[g])) + eps);
    }
  });
}

// weight and bias of channel c
template <typename A> EQNORM_HOST_DEVICE A channel_weight(const LayoutView<A>& l, int64_t c) {
  return l.weight[l.field[c]];
}
template <typename A> EQNORM_HOST_DEVICE A channel_bias(const LayoutView<A>& l, int64_t c) {
  A b = 0;
  for (int64_t j = 0; j < l.B; ++j)
    if (l.bias_channel[j] == c) b += A(l.bias_value[j]) * l.bias[l.bias_index[j]];
  return b;
}

// a = w rstd, beta = b - a cen, for one row
template <typename A, typename Run>
EQNORM_HOST_DEVICE void forward(const LayoutView<A>& l, const A* m, const A* m2, A P, A eps, Scratch<A>& s, A* a,
                                A* beta, Run& run) {
  statistics(l, m, m2, P, eps, s, run);
  run([&](int64_t t, int64_t T) {
    for (int64_t c = t; c < l.C; c += T) {
      const A ac = channel_weight(l, c) * s.rstd[l.group[c]];
      a[c] = ac;
      beta[c] = channel_bias(l, c) - ac * s.cen[c];
    }
  });
}

// From g_a = sum_p dy x and g_beta = sum_p dy of one row: dx = a dy + u x + v, and gw_c, the weight cotangent of
// channel c (summed over rows and the channels of a field by the caller).
template <typename A, typename Run>
EQNORM_HOST_DEVICE void backward(const LayoutView<A>& l, const A* m, const A* m2, A P, A eps, const A* g_a,
                                 const A* g_beta, Scratch<A>& s, A* a, A* u, A* v, A* gw, Run& run) {
  statistics(l, m, m2, P, eps, s, run);
  run([&](int64_t t, int64_t T) {
    for (int64_t c = t; c < l.C; c += T) {
      const A ga = g_a[c] - g_beta[c] * s.cen[c];  // the cotangent of a, through beta = b - a cen too
      gw[c] = ga * s.rstd[l.group[c]];
      s.work[c] = ga * channel_weight(l, c);
    }
  });
  run([&](int64_t t, int64_t T) {  // the cotangent of each channel's M2, per group
    for (int64_t g = t; g < l.G; g += T) {
      A sum = 0;
      for (int64_t c = 0; c < l.C; ++c)
        if (l.group[c] == g) sum += s.work[c];
      const A rs = s.rstd[g];
      s.gvar[g] = sum * A(-0.5) * rs * rs * rs / (P * A(l.group_size[g]));
    }
  });
  run([&](int64_t t, int64_t T) {
    for (int64_t c = t; c < l.C; c += T) {
      const A ac = channel_weight(l, c) * s.rstd[l.group[c]], uc = 2 * s.gvar[l.group[c]];
      const A gdev = uc * P * (m[c] - s.cen[c]);
      a[c] = ac;
      u[c] = uc;
      v[c] = gdev;
      s.work[c] = -ac * g_beta[c] - gdev;  // the cotangent of cen
    }
  });
  center(l, s.work, s.z, s.cen, run);  // K is symmetric: K^T g = K g
  run([&](int64_t t, int64_t T) {
    for (int64_t c = t; c < l.C; c += T) v[c] = (v[c] + s.cen[c]) / P - u[c] * m[c];
  });
}

// Row n of a call, the same on the GPU (one block per row) and on the CPU.
template <typename A, typename Run>
EQNORM_HOST_DEVICE void forward_row(const LayoutView<A>& l, const Statistics<A>& st, A* a, A* beta, int64_t n,
                                    Scratch<A>& s, Run& run) {
  const int64_t r = n * l.C;
  forward(l, st.mean + r, st.m2 + r, st.count(n), st.eps, s, a + r, beta + r, run);
}

template <typename A, typename Run>
EQNORM_HOST_DEVICE void backward_row(const LayoutView<A>& l, const Statistics<A>& st, const Cotangents<A>& ct,
                                     int64_t n, Scratch<A>& s, Run& run) {
  const int64_t r = n * l.C;
  backward(l, st.mean + r, st.m2 + r, st.count(n), st.eps, ct.g_a + r, ct.g_beta + r, s, ct.a + r, ct.u + r,
           ct.v + r, ct.gw + r, run);
}

// dweight_f = sum_{c in field f} gw_c and dbias_i = sum_{j: index_j = i} value_j g_beta[channel_j], from gw and
// g_beta already summed over rows
template <typename A, typename Run>
EQNORM_HOST_DEVICE void parameter_gradients(const LayoutView<A>& l, const A* gw, const A* g_beta, A* dweight,
                                            A* dbias, Run& run) {
  run([&](int64_t t, int64_t T) {
    for (int64_t f = t; f < l.F; f += T) {
      A sum = 0;
      for (int64_t c = 0; c < l.C; ++c)
        if (l.field[c] == f) sum += gw[c];
      dweight[f] = sum;
    }
    for (int64_t i = t; i < l.NB; i += T) {
      A sum = 0;
      for (int64_t j = 0; j < l.B; ++j)
        if (l.bias_index[j] == i) sum += A(l.bias_value[j]) * g_beta[l.bias_channel[j]];
      dbias[i] = sum;
    }
  });
}

}  // namespace eqnorm_rows
