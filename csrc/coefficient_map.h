// The coefficient map of one row (a sample's (C,) statistics), written once as phases over the compiled layout, and
// free of torch headers so that the CPU (cpu_field_norm.cpp: a loop, or at::parallel_for over rows) and the GPU
// (cuda/coefficients.cu: a block per row, threads across each phase's outputs) run the same source.
//
// Every sum of the map is one sparse operator of the compiled layout (eqnorm.layout.CompiledLayout): its entries
// sorted by the output they feed, with offsets, so a phase computing outputs [begin, end) visits only their entries,
// O(K) per row in all. A phase is run as run(begin, end, body), body(o) for every output o in the range; as
// run.gather(op, begin, end, f, out), out[o] = op.apply(o, f); or as run.by_group(map, part, body), body(c, g) for
// every channel c of the part and its group g; spread over threads however the executor likes. Each
// output is written once, from a sum in stored order, so the result depends on neither the threads nor their
// scheduling (no atomics). Between two phases the executor synchronizes (__syncthreads() on the GPU).
//
// With m the mean and M2 the summed squared deviations of each channel over P values:
//   z = Z m (Z = S V^T, one row per centering class)   cen = V z   (so cen = K m with the symmetric K = V S V^T)
//   var_g = sum_{c in g} (M2_c + P (m_c - cen_c)^2) / (P D_g)   a_c = w_field(c) / sqrt(var_group(c) + eps)
//   beta_c = b_c - a_c cen_c, with b = B bias.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define EQNORM_HOST_DEVICE __host__ __device__
#else
#define EQNORM_HOST_DEVICE
#endif

namespace eqnorm_map {

EQNORM_HOST_DEVICE inline float root(float v) { return sqrtf(v); }
EQNORM_HOST_DEVICE inline double root(double v) { return sqrt(v); }

// 1 / sqrt(var + eps), NaN where the variance overflowed to infinity: an infinite variance would otherwise give a
// coefficient of 0 and outputs equal to the bias, finite and wrong (float32 squares overflow from |x| ~ 1e19 on).
template <typename A> EQNORM_HOST_DEVICE inline A inverse_root(A var, A eps) {
  return var - var == A(0) ? A(1) / root(var + eps) : var - var;
}

// out_o = sum_{e in [ptr[o], ptr[o+1])} value[e] f(source[e]); sources ascend within an output, so an output whose
// entries span exactly their count of sources is a run of consecutive sources, summed by one loop with no gather.
template <typename V> struct Sparse {
  const int64_t *ptr, *source;
  const V* value;
  // For each output, how many consecutive outputs from it on read no entry (an empty run, out = 0) or exactly one
  // entry each, all of one source (a broadcast run, out_{o+i} = value_{o+i} f(source)): runs the CPU computes as one
  // loop each (nullptr: none compiled).
  const int64_t* runs = nullptr;
  int64_t* visits = nullptr;  // counts the entries each apply reads (the test entry's serial executor only)

  template <typename A, typename F> EQNORM_HOST_DEVICE A apply(int64_t o, F&& f) const {
    const int64_t begin = ptr[o], end = ptr[o + 1], n = end - begin;
    if (visits)
      for (int64_t e = begin; e < end; ++e) ++visits[e];
    A sum = 0;
    if (n == 0) return sum;
    const int64_t first = source[begin];
    const V* v = value + begin;
    if (n < 8) {  // most outputs of a layout read one or a few entries: no vector set-up for those
      for (int64_t i = 0; i < n; ++i) sum += A(v[i]) * f(source[begin + i]);
    } else if (source[end - 1] - first == n - 1) {
#ifndef __CUDACC__
#pragma omp simd reduction(+ : sum)
#endif
      for (int64_t i = 0; i < n; ++i) sum += A(v[i]) * f(first + i);
    } else {
      for (int64_t i = 0; i < n; ++i) sum += A(v[i]) * f(source[begin + i]);
    }
    return sum;
  }

  // out[o] = apply(o, f) for the outputs [begin, end) on one thread, broadcast runs as one loop each.
  template <typename A, typename F> void gather(int64_t begin, int64_t end, F&& f, A* out) const {
    for (int64_t o = begin; o < end;) {
      const int64_t n = runs ? (runs[o] < end - o ? runs[o] : end - o) : 0;
      if (n < 2 || visits) {
        out[o] = apply<A>(o, f);
        ++o;
        continue;
      }
      if (ptr[o] == ptr[o + 1]) {
        for (int64_t i = 0; i < n; ++i) out[o + i] = A(0);
        o += n;
        continue;
      }
      const A shared = f(source[ptr[o]]);
      const V* v = value + ptr[o];
      A* w = out + o;
#ifndef __CUDACC__
#pragma omp simd
#endif
      for (int64_t i = 0; i < n; ++i) w[i] = A(v[i]) * shared;
      o += n;
    }
  }
};

// The compiled layout as raw arrays. Values (V) are in the accumulation type, or double on the GPU.
template <typename V> struct Map {
  int64_t C, G, L, F, NB;              // channels, groups, centering classes, weights (fields), biases (trivial copies)
  const int64_t *field, *group;        // (C,): the field and the group of each channel
  Sparse<V> class_sum;                 // L <- C: z = S V^T m
  Sparse<V> center;                    // C <- L: cen = V z (with broadcast runs)
  Sparse<V> group_mean;                // G <- C: value 1 / D_g
  Sparse<V> channel_bias;              // C <- NB: b = B bias
  Sparse<V> bias_grad;                 // NB <- C: B^T
  Sparse<V> field_sum;                 // F <- C: value 1
};

// Output ranges of one part of a row: classes [l0, l1), channels [c0, c1), groups [g0, g1), closed under the map
// (every entry a part's outputs read lies in the part). The whole row is one part; the CPU splits large samples.
struct Part {
  int64_t c0, c1, l0, l1, g0, g1;
};

// A row's scratch: z (L), cen (C), rstd (G), gvar (G) and work (C).
template <typename A> struct Scratch {
  A *z, *cen, *rstd, *gvar, *work;
  EQNORM_HOST_DEVICE static int64_t size(int64_t C, int64_t G, int64_t L) { return L + 2 * C + 2 * G; }
  EQNORM_HOST_DEVICE Scratch(int64_t C, int64_t G, int64_t L, A* base)
      : z(base), cen(base + L), rstd(base + L + C), gvar(base + L + C + G), work(base + L + C + 2 * G) {}
};

// One row's statistics: mean and M2 over P values per channel.
template <typename A> struct Row {
  const A *m, *m2;
  A P, eps;
};

// Phase 0, once per call (the parameters are the same for every row): each channel's weight w_field(c) and bias b_c;
// no weight (nullptr) is a weight of 1, no bias a bias of 0.
template <typename V, typename A, typename Run>
EQNORM_HOST_DEVICE void channel_parameters(const Map<V>& l, const A* weight, const A* bias, A* wc, A* bc, Run& run) {
  run(int64_t(0), l.C, [&](int64_t c) { wc[c] = weight ? weight[l.field[c]] : A(1); });
  if (bias)
    run.gather(l.channel_bias, int64_t(0), l.C, [&](int64_t i) { return bias[i]; }, bc);
  else
    run(int64_t(0), l.C, [&](int64_t c) { bc[c] = A(0); });
}

// Phases 1-3: cen = K m and rstd_g = 1 / sqrt(var_g + eps).
template <typename V, typename A, typename Run>
EQNORM_HOST_DEVICE void statistics(const Map<V>& l, const Part& q, const Row<A>& r, Scratch<A>& s, Run& run) {
  const A *m = r.m, *m2 = r.m2;
  run.gather(l.class_sum, q.l0, q.l1, [&](int64_t c) { return m[c]; }, s.z);
  run.gather(l.center, q.c0, q.c1, [&](int64_t k) { return s.z[k]; }, s.cen);
  run(q.g0, q.g1, [&](int64_t g) {
    const A total = l.group_mean.template apply<A>(g, [&](int64_t c) {
      const A d = m[c] - s.cen[c];
      return m2[c] + r.P * d * d;
    });
    s.rstd[g] = inverse_root(total / r.P, r.eps);
  });
}

// a = w rstd, beta = b - a cen on the part's channels, from the channel weights wc and biases bc of phase 0.
template <typename V, typename A, typename Run>
EQNORM_HOST_DEVICE void forward(const Map<V>& l, const Part& q, const Row<A>& r, const A* wc, const A* bc,
                                Scratch<A>& s, A* a, A* beta, Run& run) {
  statistics(l, q, r, s, run);
  run.by_group(l, q, [&](int64_t c, int64_t g) {
    const A ac = wc[c] * s.rstd[g];
    a[c] = ac;
    beta[c] = bc[c] - ac * s.cen[c];
  });
}

// The closed-form vector-Jacobian product of forward, from g_a = sum_p dy x and g_beta = sum_p dy of one row: a, u, v
// with dx = a dy + u x + v, and gw_c, the weight cotangent of channel c (summed over rows and over the channels of a
// field by parameter_gradients).
template <typename V, typename A, typename Run>
EQNORM_HOST_DEVICE void backward(const Map<V>& l, const Part& q, const Row<A>& r, const A* wc, const A* g_a,
                                 const A* g_beta, Scratch<A>& s, A* a, A* u, A* v, A* gw, Run& run) {
  statistics(l, q, r, s, run);
  const A *m = r.m, P = r.P;
  run(q.g0, q.g1, [&](int64_t g) {  // the cotangent of each channel's M2, per group
    const A total = l.group_mean.template apply<A>(g, [&](int64_t c) {
      return (g_a[c] - g_beta[c] * s.cen[c]) * wc[c];  // g_a - g_beta cen: the cotangent of a, through beta too
    });
    const A rs = s.rstd[g];
    s.gvar[g] = total * A(-0.5) * rs * rs * rs / P;
  });
  run.by_group(l, q, [&](int64_t c, int64_t g) {
    const A rs = s.rstd[g], ac = wc[c] * rs, uc = 2 * s.gvar[g];
    const A gdev = uc * P * (m[c] - s.cen[c]);
    gw[c] = (g_a[c] - g_beta[c] * s.cen[c]) * rs;
    a[c] = ac;
    u[c] = uc;
    v[c] = gdev;
    s.work[c] = -ac * g_beta[c] - gdev;  // the cotangent of cen
  });
  // K is symmetric: K^T work = V (S V^T work), into cen (no longer needed)
  run.gather(l.class_sum, q.l0, q.l1, [&](int64_t c) { return s.work[c]; }, s.z);
  run.gather(l.center, q.c0, q.c1, [&](int64_t k) { return s.z[k]; }, s.cen);
  run.by_group(l, q, [&](int64_t c, int64_t) { v[c] = (v[c] + s.cen[c]) / P - u[c] * m[c]; });
}

// dweight_f = sum_{c in field f} gw_c and dbias = B^T g_beta, from gw and g_beta already summed over rows; an output
// not asked for is nullptr.
template <typename V, typename A, typename Run>
EQNORM_HOST_DEVICE void parameter_gradients(const Map<V>& l, const A* gw, const A* g_beta, A* dweight, A* dbias,
                                            Run& run) {
  if (dweight) run.gather(l.field_sum, int64_t(0), l.F, [&](int64_t c) { return gw[c]; }, dweight);
  if (dbias) run.gather(l.bias_grad, int64_t(0), l.NB, [&](int64_t c) { return g_beta[c]; }, dbias);
}

template <typename V> EQNORM_HOST_DEVICE Part whole_row(const Map<V>& l) { return {0, l.C, 0, l.L, 0, l.G}; }

}  // namespace eqnorm_map
