// eqnorm::field_norm on the CPU. The coefficient map is coefficient_map.h's phases run by a loop on one thread per
// row (a row, or a part of one, at a time). Around it: for channels-first samples with statistics of their own, one
// task per sample that runs the sample's passes part by part (samples_forward); for point features, one pass each way
// (points_forward); otherwise the passes of cpu_passes.cpp over all rows, with the map's rows under at::parallel_for.
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "cpu_rows.h"
#include "field_norm.h"
#include "compiled_view.h"

namespace eqnorm {
namespace {

// Copies the entries of a small 1D floating tensor to out in type A.
template <typename A> void read_values(const at::Tensor& t, A* out) {
  const at::Tensor c = t.contiguous();
  if (c.scalar_type() == at::kDouble) {
    std::copy(c.data_ptr<double>(), c.data_ptr<double>() + c.numel(), out);
  } else if (c.scalar_type() == at::kFloat) {
    std::copy(c.data_ptr<float>(), c.data_ptr<float>() + c.numel(), out);
  } else {
    const at::Tensor d = c.to(at::kDouble);
    std::copy(d.data_ptr<double>(), d.data_ptr<double>() + d.numel(), out);
  }
}

// The executor of a phase on one thread: every output in turn.
struct Serial {
  template <typename F> void operator()(int64_t begin, int64_t end, F&& body) const {
    for (int64_t o = begin; o < end; ++o) body(o);
  }
  template <typename V, typename F, typename A>
  void gather(const eqnorm_map::Sparse<V>& op, int64_t begin, int64_t end, F&& f, A* out) const {
    op.gather(begin, end, f, out);
  }
  // group by group, a group of consecutive channels as one loop that the compiler vectorizes
  template <typename V, typename F>
  void by_group(const eqnorm_map::Map<V>& l, const eqnorm_map::Part& q, F&& body) const {
    const int64_t *ptr = l.group_mean.ptr, *source = l.group_mean.source;
    for (int64_t g = q.g0; g < q.g1; ++g) {
      const int64_t begin = ptr[g], n = ptr[g + 1] - begin, first = source[begin];
      if (n > 0 && source[begin + n - 1] - first == n - 1) {
#pragma omp simd
        for (int64_t c = first; c < first + n; ++c) body(c, g);
      } else {
        for (int64_t k = begin; k < begin + n; ++k) body(source[k], g);
      }
    }
  }
};

// The compiled layout with its values in the accumulation type A, the weight and bias of each channel (phase 0 of the
// map), and the parts a row is split into.
template <typename A> struct HostMap {
  std::vector<A> store;
  CompiledView<A> view;
  const eqnorm_map::Map<A>& map;
  const A *weight, *bias, *wc, *bc;
  std::vector<eqnorm_map::Part> parts;

  // part_channels: the most channels a part may hold (a part holds at least the channels between two cuts); w and b
  // undefined when absent (weight and bias then nullptr)
  HostMap(const IndexArgs& l, const at::Tensor& w, const at::Tensor& b,
             int64_t part_channels = std::numeric_limits<int64_t>::max())
      : store(l.compiled_value.numel() + l.fields() + l.trivial() + 2 * l.field_of_channel.numel()),
        view(compiled_view<A>(l, values(l.compiled_value, store.data()))), map(view.map) {
    A* p = store.data() + l.compiled_value.numel();
    A *weights = p, *biases = p + map.F, *channel = biases + map.NB;
    if (w.defined()) read_values<A>(w, weights);
    if (b.defined()) read_values<A>(b, biases);
    weight = w.defined() ? weights : nullptr;
    bias = b.defined() ? biases : nullptr;
    Serial run;
    eqnorm_map::channel_parameters(map, weight, bias, channel, channel + map.C, run);
    wc = channel;
    bc = channel + map.C;
    split(part_channels);
  }
  HostMap(const HostMap&) = delete;  // map refers to view

  static const A* values(const at::Tensor& compiled, A* out) {
    read_values<A>(compiled, out);
    return out;
  }

  // Parts from the cuts, each as many channels as part_channels allows, at least from one cut to the next.
  void split(int64_t part_channels) {
    const int64_t last = view.num_cuts - 1;
    if (part_channels >= map.C) {
      parts.push_back(view.part(0, last));
      return;
    }
    for (int64_t first = 0; first < last;) {
      int64_t end = first + 1;
      while (end < last && view.cuts[3 * (end + 1)] - view.cuts[3 * first] <= part_channels) ++end;
      parts.push_back(view.part(first, end));
      first = end;
    }
  }
};

// One thread's working memory for one sample: the map's scratch, and `count` more arrays of C values (array(i)).
template <typename A> struct Sample {
  std::vector<A> memory;
  eqnorm_map::Scratch<A> scratch;
  A* arrays;
  int64_t C;
  Serial run;
  explicit Sample(const HostMap<A>& l, int64_t count = 0)
      : memory(eqnorm_map::Scratch<A>::size(l.map.C, l.map.G, l.map.L) + count * l.map.C),
        scratch(l.map.C, l.map.G, l.map.L, memory.data()),
        arrays(memory.data() + eqnorm_map::Scratch<A>::size(l.map.C, l.map.G, l.map.L)), C(l.map.C) {}
  Sample(const Sample&) = delete;  // scratch and arrays point into memory
  A* array(int64_t i) { return arrays + i * C; }

  void coefficients(const HostMap<A>& l, const eqnorm_map::Part& q, const A* m, const A* m2, A P, A eps, A* a,
                    A* beta) {
    eqnorm_map::forward(l.map, q, eqnorm_map::Row<A>{m, m2, P, eps}, l.wc, l.bc, scratch, a, beta, run);
  }
  void coefficients_backward(const HostMap<A>& l, const eqnorm_map::Part& q, const A* m, const A* m2, A P, A eps,
                             const A* g_a, const A* g_beta, A* a, A* u, A* v, A* gw) {
    eqnorm_map::backward(l.map, q, eqnorm_map::Row<A>{m, m2, P, eps}, l.wc, g_a, g_beta, scratch, a, u, v, gw, run);
  }
  // the whole row, part by part
  void coefficients(const HostMap<A>& l, const A* m, const A* m2, A P, A eps, A* a, A* beta) {
    for (const eqnorm_map::Part& q : l.parts) coefficients(l, q, m, m2, P, eps, a, beta);
  }
  void coefficients_backward(const HostMap<A>& l, const A* m, const A* m2, A P, A eps, const A* g_a,
                             const A* g_beta, A* a, A* u, A* v, A* gw) {
    for (const eqnorm_map::Part& q : l.parts) coefficients_backward(l, q, m, m2, P, eps, g_a, g_beta, a, u, v, gw);
  }
};

// Sums of per-row parameter cotangents, kept per chunk of rows and added up in chunk order: the same result for any
// number of threads. With one row per chunk the sums run in row order, so the passes and the per-sample layer agree.
template <typename A> struct ChunkSums {
  int64_t C, rows_per_chunk;
  std::vector<A> weight, sum_dy;  // (chunks, C) each
  ChunkSums(int64_t rows, int64_t channels, int64_t chunk_rows)
      : C(channels), rows_per_chunk(chunk_rows), weight(chunks(rows) * channels, A(0)),
        sum_dy(chunks(rows) * channels, A(0)) {}
  int64_t chunks(int64_t rows) const { return (rows + rows_per_chunk - 1) / rows_per_chunk; }
  void add(int64_t row, const A* gw, const A* dy) {
    A* w = &weight[row / rows_per_chunk * C];
    A* d = &sum_dy[row / rows_per_chunk * C];
    for (int64_t c = 0; c < C; ++c) {
      w[c] += gw[c];
      d[c] += dy[c];
    }
  }
  // dweight per field and dbias per trivial copy (each nullptr when not asked for)
  void finish(const HostMap<A>& l, A* dweight, A* dbias) const {
    std::vector<A> total(2 * C, A(0));
    for (size_t k = 0; k < weight.size() / C; ++k)
      for (int64_t c = 0; c < C; ++c) {
        total[c] += weight[k * C + c];
        total[C + c] += sum_dy[k * C + c];
      }
    Serial run;
    eqnorm_map::parameter_gradients(l.map, total.data(), total.data() + C, dweight, dbias, run);
  }
};

// The statistics of a call as rows: mean, M2 and the values per row.
template <typename A> struct Rows {
  const A *mean, *m2, *counts;
  A positions;
  int64_t C;
  eqnorm_map::Row<A> row(int64_t n, A eps) const {
    return {mean + n * C, m2 + n * C, counts ? counts[n] : positions, eps};
  }
};

template <typename A> Rows<A> rows_of(const Pooled& s, const at::Tensor& mean, const at::Tensor& m2, at::Tensor& held) {
  if (s.counts.defined()) held = s.counts.contiguous();
  return {mean.data_ptr<A>(), m2.data_ptr<A>(), s.counts.defined() ? held.data_ptr<A>() : nullptr,
          static_cast<A>(s.positions), mean.size(1)};
}

// The map over the rows of a call: rows under at::parallel_for (grain `grain`), each row as the layout's parts.
Stats coefficients_cpu(const Pooled& s, const at::Tensor& weight, const at::Tensor& bias, const IndexArgs& args,
                       double eps, int64_t grain, int64_t part_channels) {
  const at::Tensor mean = s.mean.contiguous(), m2 = s.m2.contiguous();
  at::Tensor a = at::empty_like(mean), beta = at::empty_like(mean), counts;
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "eqnorm::field_norm coefficients", [&] {
    using A = scalar_t;
    const HostMap<A> l(args, weight, bias, part_channels);
    const Rows<A> rows = rows_of<A>(s, mean, m2, counts);
    A *ap = a.data_ptr<A>(), *bp = beta.data_ptr<A>();
    at::parallel_for(0, mean.size(0), grain, [&](int64_t begin, int64_t end) {
      Sample<A> w(l);
      for (int64_t n = begin; n < end; ++n) {
        const eqnorm_map::Row<A> r = rows.row(n, static_cast<A>(eps));
        w.coefficients(l, r.m, r.m2, r.P, r.eps, ap + n * rows.C, bp + n * rows.C);
      }
    });
  });
  return {a, beta};
}

// The parameter gradients the mask asks for, in the accumulation type (undefined: not asked for, or no parameter),
// written by finish() and returned in the parameters' dtypes by cast().
struct ParameterGradients {
  at::Tensor dweight, dbias;
  const at::Tensor &weight, &bias;
  ParameterGradients(const at::Tensor& w, const at::Tensor& b, OutputMask mask, const at::TensorOptions& options)
      : weight(w), bias(b) {
    if (mask[1] && w.defined()) dweight = at::zeros(w.sizes(), options);
    if (mask[2] && b.defined()) dbias = at::zeros(b.sizes(), options);
  }
  template <typename A, typename Sums> void finish(const Sums& sums, const HostMap<A>& l) const {
    sums.finish(l, data_or_null<A>(dweight), data_or_null<A>(dbias));
  }
  std::tuple<at::Tensor, at::Tensor> cast() const { return {in_dtype_of(dweight, weight), in_dtype_of(dbias, bias)}; }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> coefficients_backward_cpu(
    const at::Tensor& sum_dy_x, const at::Tensor& sum_dy, const Pooled& s, const at::Tensor& weight,
    const at::Tensor& bias, const IndexArgs& args, double eps, OutputMask mask, int64_t grain,
    int64_t part_channels) {
  const at::Tensor mean = s.mean.contiguous(), m2 = s.m2.contiguous();
  const at::Tensor gax = sum_dy_x.contiguous(), gb = sum_dy.contiguous();
  at::Tensor a = at::empty_like(mean), u = at::empty_like(mean), v = at::empty_like(mean);
  const ParameterGradients grads(weight, bias, mask, mean.options());
  at::Tensor counts;
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "eqnorm::field_norm_backward coefficients", [&] {
    using A = scalar_t;
    const HostMap<A> l(args, weight, bias, part_channels);
    const Rows<A> rows = rows_of<A>(s, mean, m2, counts);
    const int64_t S = mean.size(0), C = rows.C;
    const A *gaxp = gax.data_ptr<A>(), *gbp = gb.data_ptr<A>();
    A *ap = a.data_ptr<A>(), *up = u.data_ptr<A>(), *vp = v.data_ptr<A>();
    ChunkSums<A> sums(S, C, 1);
    at::parallel_for(0, S, grain, [&](int64_t begin, int64_t end) {
      Sample<A> w(l, 1);
      A* gw = w.array(0);
      for (int64_t n = begin; n < end; ++n) {
        const int64_t r = n * C;
        const eqnorm_map::Row<A> row = rows.row(n, static_cast<A>(eps));
        w.coefficients_backward(l, row.m, row.m2, row.P, row.eps, gaxp + r, gbp + r, ap + r, up + r, vp + r, gw);
        sums.add(n, gw, gbp + r);
      }
    });
    grads.finish(sums, l);
  });
  const auto [dweight, dbias] = grads.cast();
  return {a, u, v, dweight, dbias};
}

constexpr int64_t kWholeRows = std::numeric_limits<int64_t>::max();

Stats coefficients_rows(const Pooled& s, const at::Tensor& weight, const at::Tensor& bias, const IndexArgs& args,
                        double eps) {
  return coefficients_cpu(s, weight, bias, args, eps, 16, kWholeRows);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> coefficients_backward_rows(
    const at::Tensor& sum_dy_x, const at::Tensor& sum_dy, const Pooled& s, const at::Tensor& weight,
    const at::Tensor& bias, const IndexArgs& args, double eps, OutputMask mask) {
  return coefficients_backward_cpu(sum_dy_x, sum_dy, s, weight, bias, args, eps, mask, 16, kWholeRows);
}

// Point rows (checks.h: one position per sample, as e3nn's node features): a row's statistics are the row itself
// (m = x, M2 = 0), so one pass reads x and writes y, and one reads dy and x and writes dx, with no (N, C) coefficient
// or statistics arrays in between. (N, C, 1) and (N, 1, C) rows lie alike in memory: rows of C values.
bool point_features(const at::Tensor& x, const std::optional<at::Tensor>& ptr, bool last, bool batch) {
  return !ptr.has_value() && !batch && x.dim() == 3 && x.size(last ? 1 : 2) == 1 && x.numel() > 0 &&
         (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble);
}

Outputs points_forward(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& bias, const Checked& checked,
                       double eps) {
  const at::Tensor x = x_in.contiguous();
  const int64_t N = checked.shape.samples;
  at::Tensor y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "eqnorm::field_norm points", [&] {
    using A = scalar_t;
    const HostMap<A> l(checked.index, weight, bias);
    const A* xp = x.data_ptr<A>();
    A* yp = y.data_ptr<A>();
    at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
      Sample<A> w(l, 3);
      A *zeros = w.array(0), *a = w.array(1), *beta = w.array(2);
      std::fill(zeros, zeros + l.map.C, A(0));
      for (int64_t n = begin; n < end; ++n) {
        const int64_t r = n * l.map.C;
        const A* xr = xp + r;
        w.coefficients(l, xr, zeros, A(1), static_cast<A>(eps), a, beta);
        for (int64_t c = 0; c < l.map.C; ++c) yp[r + c] = a[c] * xr[c] + beta[c];
      }
    });
  });
  const at::Tensor none = at::empty({N, 0}, x.options());  // point rows keep no statistics (checks.h)
  return {y, none, none.clone()};
}

Outputs points_backward(const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& weight,
                        const at::Tensor& bias, const IndexArgs& args, double eps, OutputMask mask) {
  const at::Tensor x = x_in.contiguous(), dy = dy_in.contiguous();
  const int64_t N = x.size(0);
  at::Tensor dx = at::empty_like(x);
  const ParameterGradients grads(weight, bias, mask, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "eqnorm::field_norm_backward points", [&] {
    using A = scalar_t;
    const HostMap<A> l(args, weight, bias);
    const int64_t C = l.map.C;
    const A *xp = x.data_ptr<A>(), *dyp = dy.data_ptr<A>();
    A* dxp = dx.data_ptr<A>();
    constexpr int64_t kChunk = 64;  // rows per chunk of parameter sums: one sum per row would double the traffic
    ChunkSums<A> sums(N, C, kChunk);
    at::parallel_for(0, sums.chunks(N), 1, [&](int64_t begin, int64_t end) {
      Sample<A> w(l, 6);
      A *zeros = w.array(0), *g_a = w.array(1), *a = w.array(2), *u = w.array(3), *v = w.array(4), *gw = w.array(5);
      std::fill(zeros, zeros + C, A(0));
      for (int64_t n = begin * kChunk; n < std::min(N, end * kChunk); ++n) {
        const A *xr = xp + n * C, *g = dyp + n * C;
        for (int64_t c = 0; c < C; ++c) g_a[c] = g[c] * xr[c];
        w.coefficients_backward(l, xr, zeros, A(1), static_cast<A>(eps), g_a, g, a, u, v, gw);
        cpu_rows::affine_backward_any<A, A>(g, xr, a, u, v, 1, dxp + n * C, C);
        sums.add(n, gw, g);
      }
    });
    grads.finish(sums, l);
  });
  const auto [dweight, dbias] = grads.cast();
  return {mask[0] ? dx : at::Tensor(), dweight, dbias};
}

// Channels-first samples with statistics of their own (group, layer and instance norms): one task per sample takes
// its moments, its coefficient map and its affine pass in turn, part by part (Part: a few whole groups, about 256 KB of
// values), so the second read of the values comes from cache, no (N, C) coefficient arrays are written, and the
// three steps share one parallel region. Every row goes through the same arithmetic as in the passes (cpu_rows.h,
// Sample, ChunkSums with one row per chunk), so the two give the same bits. The passes stay where samples would share
// the threads unevenly (fewer samples than threads, or 3 samples on 2 threads), as they spread every sample's rows
// over all threads.
constexpr int64_t kSerialElements = 32768;  // below this a call runs on one thread either way

// The most channels of P values a part may hold so that its values stay in a core's L2 cache between its passes.
int64_t part_channels(int64_t P, size_t size) {
  constexpr int64_t kPartBytes = 256 * 1024;
  return std::max<int64_t>(1, kPartBytes / std::max<int64_t>(1, P * static_cast<int64_t>(size)));
}

bool per_sample(const at::Tensor& x, const std::optional<at::Tensor>& ptr, bool last, bool batch) {
  if (ptr.has_value() || last || batch || x.numel() == 0 ||
      !(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble))
    return false;
  const int64_t N = x.size(0), T = at::get_num_threads(), busiest = (N + T - 1) / T;
  return x.numel() <= kSerialElements || 4 * busiest * T <= 5 * N;  // the busiest thread at most 25% over the mean
}

Outputs samples_forward(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& bias,
                        const Checked& checked, double eps) {
  const at::Tensor x = x_in.contiguous();
  const int64_t N = checked.shape.samples, C = checked.shape.channels, P = checked.shape.positions;
  at::Tensor y = at::empty_like(x), mean = at::empty({N, C}, x.options()), m2 = at::empty({N, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "eqnorm::field_norm per sample", [&] {
    using A = scalar_t;
    const HostMap<A> l(checked.index, weight, bias, part_channels(P, sizeof(A)));
    const A* xp = x.data_ptr<A>();
    A *yp = y.data_ptr<A>(), *mp = mean.data_ptr<A>(), *m2p = m2.data_ptr<A>();
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      Sample<A> w(l, 2);
      A *a = w.array(0), *beta = w.array(1);
      for (int64_t n = begin; n < end; ++n) {
        const A* xs = xp + n * C * P;
        A *ys = yp + n * C * P, *ms = mp + n * C, *m2s = m2p + n * C;
        for (const eqnorm_map::Part& q : l.parts) {
          cpu_rows::moments<A, A>(xs + q.c0 * P, q.c1 - q.c0, P, ms + q.c0, m2s + q.c0);
          w.coefficients(l, q, ms, m2s, static_cast<A>(P), static_cast<A>(eps), a, beta);
          for (int64_t c = q.c0; c < q.c1; ++c)
            cpu_rows::affine_any<A, A>(xs + c * P, &a[c], &beta[c], 0, ys + c * P, P);
        }
      }
    });
  });
  return {y, mean, m2};
}

Outputs samples_backward(const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& mean_in,
                         const at::Tensor& m2_in, const at::Tensor& weight, const at::Tensor& bias,
                         const Checked& checked, double eps, OutputMask mask) {
  const at::Tensor x = x_in.contiguous(), dy = dy_in.contiguous(), mean = mean_in.contiguous(), m2 = m2_in.contiguous();
  const int64_t N = checked.shape.samples, C = checked.shape.channels, P = checked.shape.positions;
  at::Tensor dx = at::empty_like(x);
  const ParameterGradients grads(weight, bias, mask, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "eqnorm::field_norm_backward per sample", [&] {
    using A = scalar_t;
    const HostMap<A> l(checked.index, weight, bias, part_channels(2 * P, sizeof(A)));  // dy and x
    const A *xp = x.data_ptr<A>(), *dyp = dy.data_ptr<A>(), *mp = mean.data_ptr<A>(), *m2p = m2.data_ptr<A>();
    A* dxp = dx.data_ptr<A>();
    ChunkSums<A> sums(N, C, 1);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      Sample<A> w(l, 6);
      A *sdy = w.array(0), *sdyx = w.array(1), *a = w.array(2), *u = w.array(3), *v = w.array(4), *gw = w.array(5);
      for (int64_t n = begin; n < end; ++n) {
        const A *xs = xp + n * C * P, *gs = dyp + n * C * P;
        A* dxs = dxp + n * C * P;
        for (const eqnorm_map::Part& q : l.parts) {
          const int64_t o = q.c0 * P;
          cpu_rows::sums<A, A>(gs + o, xs + o, q.c1 - q.c0, P, sdy + q.c0, sdyx + q.c0);
          w.coefficients_backward(l, q, mp + n * C, m2p + n * C, static_cast<A>(P), static_cast<A>(eps), sdyx, sdy,
                                  a, u, v, gw);
          for (int64_t c = q.c0; c < q.c1; ++c)
            cpu_rows::affine_backward_any<A, A>(gs + c * P, xs + c * P, &a[c], &u[c], &v[c], 0, dxs + c * P, P);
        }
        sums.add(n, gw, sdy);
      }
    });
    grads.finish(sums, l);
  });
  const auto [dweight, dbias] = grads.cast();
  return {mask[0] ? dx : at::Tensor(), dweight, dbias};
}

Outputs field_norm_cpu(const at::Tensor& x, const std::optional<at::Tensor>& weight_in,
                       const std::optional<at::Tensor>& bias_in, at::TensorList index,
                       const std::optional<at::Tensor>& ptr, bool last, bool batch, double eps) {
  const at::Tensor weight = given(weight_in), bias = given(bias_in);
  if (point_features(x, ptr, last, batch))
    return points_forward(x, weight, bias, check("eqnorm::field_norm", x, weight, bias, index, ptr, last, batch), eps);
  if (per_sample(x, ptr, last, batch))
    return samples_forward(x, weight, bias, check("eqnorm::field_norm", x, weight, bias, index, ptr, last, batch), eps);
  return field_norm_forward(cpu_passes(), &coefficients_rows, x, weight, bias, index, ptr, last, batch, eps);
}

Outputs backward_cpu(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& m2,
                     const at::Tensor& weight, const at::Tensor& bias, at::TensorList index,
                     const std::optional<at::Tensor>& ptr, bool last, bool batch, double eps, OutputMask mask) {
  if (point_features(x, ptr, last, batch))
    return points_backward(dy, x, weight, bias,
                           check_backward(dy, x, mean, m2, weight, bias, index, ptr, last, batch).index, eps, mask);
  if (per_sample(x, ptr, last, batch))
    return samples_backward(dy, x, mean, m2, weight, bias,
                            check_backward(dy, x, mean, m2, weight, bias, index, ptr, last, batch), eps, mask);
  return field_norm_backward(cpu_passes(), &coefficients_backward_rows, dy, x, mean, m2, weight, bias, index, ptr,
                             last, batch, eps, mask);
}

Gradients field_norm_backward_cpu(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                                  const at::Tensor& m2, const std::optional<at::Tensor>& weight,
                                  const std::optional<at::Tensor>& bias, at::TensorList index,
                                  const std::optional<at::Tensor>& ptr, bool last, bool batch, double eps,
                                  OutputMask mask) {
  return gradients(backward_cpu(dy, x, mean, m2, given(weight), given(bias), index, ptr, last, batch, eps, mask));
}

// For the tests, torch.ops.eqnorm_testing.coefficient_map: the CPU's coefficient map by one executor, "rows" (the
// map's rows under at::parallel_for, each row whole), "parts" (each row split at every cut of the layout) or "aten"
// (the differentiable ATen form). Returns (a, beta), or with the cotangents (a, u, v, dweight, dbias).
std::vector<at::Tensor> coefficient_map_for_test(const std::string& executor, const at::Tensor& mean,
                                                 const at::Tensor& m2, const std::optional<at::Tensor>& counts,
                                                 double positions, const std::optional<at::Tensor>& weight_in,
                                                 const std::optional<at::Tensor>& bias_in,
                                                 const std::vector<at::Tensor>& index, double eps,
                                                 const std::optional<at::Tensor>& sum_dy_x,
                                                 const std::optional<at::Tensor>& sum_dy) {
  const at::Tensor weight = given(weight_in), bias = given(bias_in);
  const IndexArgs l = index_args("eqnorm_testing::coefficient_map", index, mean, mean.size(1), weight, bias);
  const Pooled s{mean, m2, positions, counts.value_or(at::Tensor())};
  TORCH_CHECK(executor == "rows" || executor == "parts" || executor == "aten",
              "eqnorm_testing::coefficient_map: executor must be 'rows', 'parts' or 'aten', got '", executor, "'");
  const int64_t part_channels = executor == "parts" ? 1 : kWholeRows;
  if (!sum_dy_x.has_value()) {
    auto [a, beta] = executor == "aten" ? coefficients_aten(s, weight, bias, l, eps)
                                        : coefficients_cpu(s, weight, bias, l, eps, 1, part_channels);
    return {a, beta};
  }
  const OutputMask mask{true, true, true};
  auto [a, u, v, dweight, dbias] =
      executor == "aten" ? coefficients_backward_aten(*sum_dy_x, *sum_dy, s, weight, bias, l, eps, mask)
                         : coefficients_backward_cpu(*sum_dy_x, *sum_dy, s, weight, bias, l, eps, mask, 1,
                                                     part_channels);
  return {a, u, v, dweight, dbias};
}

// For the tests, torch.ops.eqnorm_testing.coefficient_visits: how often the map, run over every row of float64
// statistics (forward, or backward and the parameter gradients), reads each entry of each compiled operator, in the
// order of eqnorm.compiled.OPERATORS.
std::vector<at::Tensor> coefficient_visits_for_test(const at::Tensor& mean, const at::Tensor& m2, double positions,
                                                    const std::optional<at::Tensor>& weight_in,
                                                    const std::optional<at::Tensor>& bias_in,
                                                    const std::vector<at::Tensor>& index, double eps, bool backward) {
  const at::Tensor weight = given(weight_in), bias = given(bias_in);
  TORCH_CHECK(mean.scalar_type() == at::kDouble, "eqnorm_testing::coefficient_visits: mean must be float64");
  const IndexArgs args = index_args("eqnorm_testing::coefficient_visits", index, mean, mean.size(1), weight, bias);
  const HostMap<double> l(args, weight, bias);
  eqnorm_map::Map<double> map = l.map;
  eqnorm_map::Sparse<double>* operators[] = {&map.class_sum,    &map.center,    &map.group_mean,
                                             &map.channel_bias, &map.bias_grad, &map.field_sum};
  const int64_t outputs[] = {map.L, map.C, map.G, map.C, map.NB, map.F};
  std::vector<at::Tensor> visits;
  for (int i = 0; i < 6; ++i) {
    visits.push_back(at::zeros({operators[i]->ptr[outputs[i]]}, mean.options().dtype(at::kLong)));
    operators[i]->visits = visits.back().data_ptr<int64_t>();
  }
  const int64_t S = mean.size(0), C = mean.size(1);
  std::vector<double> memory(eqnorm_map::Scratch<double>::size(C, map.G, map.L) + 6 * C), total(2 * C, 0.0);
  eqnorm_map::Scratch<double> scratch(C, map.G, map.L, memory.data());
  double* out = memory.data() + eqnorm_map::Scratch<double>::size(C, map.G, map.L);
  double *wc = out + 4 * C, *bc = out + 5 * C;
  const at::Tensor mc = mean.contiguous(), m2c = m2.contiguous();
  const eqnorm_map::Part whole = eqnorm_map::whole_row(map);
  Serial run;
  eqnorm_map::channel_parameters(map, l.weight, l.bias, wc, bc, run);
  for (int64_t n = 0; n < S; ++n) {
    const eqnorm_map::Row<double> r{mc.data_ptr<double>() + n * C, m2c.data_ptr<double>() + n * C, positions, eps};
    if (!backward) {
      eqnorm_map::forward(map, whole, r, wc, bc, scratch, out, out + C, run);
      continue;
    }
    // cotangents: the row's statistics stand in for sum dy x and sum dy
    eqnorm_map::backward(map, whole, r, wc, r.m, r.m2, scratch, out, out + C, out + 2 * C, out + 3 * C, run);
  }
  if (backward) eqnorm_map::parameter_gradients(map, total.data(), total.data() + C, out, out + C, run);
  return visits;
}

}  // namespace

TORCH_LIBRARY(eqnorm_testing, m) {
  m.def("coefficient_map", &coefficient_map_for_test);
  m.def("coefficient_visits", &coefficient_visits_for_test);
}

TORCH_LIBRARY_IMPL(eqnorm, CPU, m) {
  m.impl("field_norm", &field_norm_cpu);
  m.impl("field_norm_backward", &field_norm_backward_cpu);
}

}  // namespace eqnorm
