// eqnorm::field_norm on the CPU. The coefficient map (the formulas of coefficients_aten, without a dozen (N, C)
// temporaries) walks the layout's runs one sample at a time. Around it: for channels-first samples with statistics of
// their own, one task per sample that runs the sample's passes part by part (samples_forward); for point features,
// one pass each way (points_forward); otherwise the passes of cpu_passes.cpp over all rows.
#include <ATen/Parallel.h>

#include <array>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <utility>
#include <vector>

#include "cpu_rows.h"
#include "field_norm.h"
#include "layout_view.h"

namespace eqnorm {
namespace {

// Copies the entries of a small 1D floating tensor to out in type A (read in place for float and double).
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

const int64_t* indices(const at::Tensor& t) { return t.data_ptr<int64_t>(); }

// Entries [entry, entry + length) that share an index (a group, a centering class) and sit on the consecutive channels
// [channel, channel + length). Layouts are made of a few long runs (a group is a range of channels; a class is the
// trivial copies of a group, or one field's trivial component), so the loops of the coefficient map walk runs with no
// gathers inside, and the compiler vectorises them; any layout decomposes into runs, at worst of length 1.
struct Run {
  int64_t index, entry, channel, length;
};

// Appends the runs of entries 0 .. n-1 with the given index, on channel[i] (or channel i when channel is null).
void add_runs(std::vector<Run>& out, int64_t n, const int64_t* index, const int64_t* channel) {
  const size_t first = out.size();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = channel ? channel[i] : i;
    if (out.size() > first && out.back().index == index[i] && out.back().channel + out.back().length == c)
      ++out.back().length;
    else
      out.push_back({index[i], i, c, 1});
  }
}

template <typename T> struct Span {
  const T *first, *last;
  const T* begin() const { return first; }
  const T* end() const { return last; }
};

// Whole groups on the channels [begin, end), with the centering runs that lie on them: all that the coefficient map of
// those channels reads, so a sample can be normalized part by part while each part's values stay in cache. A layout
// whose groups are ranges of channels and whose classes each lie in one group splits into parts of whole groups; any
// other layout is one part. Parts give the same bits as the whole row: each group and class sums the same runs in the
// same order.
struct Part {
  int64_t begin, end;
  Span<Run> groups, classes;
  Span<int64_t> group_ids, class_ids;  // the groups and classes to reset and finish
};

// The layout as raw arrays in the accumulation type A, its parts, and the channel-expanded weight and bias.
template <typename A> struct Layout {
  int64_t C, G, L, K, B;
  const int64_t *field, *bias_channel, *bias_index;
  std::vector<A> store;
  const A *group_size, *center_value, *class_scale, *bias_value, *w, *b;
  std::vector<Run> runs;       // per part: its group runs, then its class runs
  std::vector<int64_t> ids;    // per part: its group ids, then its class ids
  std::vector<Part> parts;

  // part_channels: the most channels a part may hold (a single group may hold more)
  Layout(const LayoutArgs& l, const at::Tensor& weight, const at::Tensor& bias,
         int64_t part_channels = std::numeric_limits<int64_t>::max())
      : C(l.field_of_channel.numel()), G(l.groups()), L(l.classes()), K(l.center_channel.numel()),
        B(l.bias_channel.numel()), field(indices(l.field_of_channel)), bias_channel(indices(l.bias_channel)),
        bias_index(indices(l.bias_index)) {
    const int64_t F = weight.numel(), NB = bias.numel();
    store.assign(G + K + L + B + 2 * C + F + NB, A(0));
    A* p = store.data();
    const std::pair<const at::Tensor*, const A**> arrays[] = {{&l.group_size, &group_size},
                                                              {&l.center_value, &center_value},
                                                              {&l.class_scale, &class_scale},
                                                              {&l.bias_value, &bias_value}};
    for (const auto& [tensor, pointer] : arrays) {
      read_values<A>(*tensor, p);
      *pointer = p;
      p += tensor->numel();
    }
    A *wc = p, *bc = p + C, *weights = p + 2 * C, *biases = p + 2 * C + F;
    read_values<A>(weight, weights);
    read_values<A>(bias, biases);
    for (int64_t c = 0; c < C; ++c) wc[c] = weights[field[c]];
    for (int64_t j = 0; j < B; ++j) bc[bias_channel[j]] += bias_value[j] * biases[bias_index[j]];
    w = wc;
    b = bc;
    split(l, part_channels);
  }
  Layout(const Layout&) = delete;  // the parts point into runs and ids

  void split(const LayoutArgs& l, int64_t part_channels) {
    if (part_channels < C && split_by_groups(l, part_channels)) return;
    // one part, built in place: a small call is made of little else
    runs.reserve(C + K);
    add_runs(runs, C, indices(l.group_of_channel), nullptr);
    const size_t middle = runs.size();
    add_runs(runs, K, indices(l.center_class), indices(l.center_channel));
    ids.resize(G + L);
    for (int64_t g = 0; g < G; ++g) ids[g] = g;
    for (int64_t c = 0; c < L; ++c) ids[G + c] = c;
    parts.push_back({0, C, {runs.data(), runs.data() + middle}, {runs.data() + middle, runs.data() + runs.size()},
                     {ids.data(), ids.data() + G}, {ids.data() + G, ids.data() + G + L}});
  }

  // Parts of whole groups of at most part_channels channels (or one group), if every group is one range of channels
  // and every class lies in one group; false, with nothing built, otherwise.
  bool split_by_groups(const LayoutArgs& l, int64_t part_channels) {
    const int64_t* group = indices(l.group_of_channel);
    std::vector<Run> group_runs, class_runs;
    add_runs(group_runs, C, group, nullptr);
    add_runs(class_runs, K, indices(l.center_class), indices(l.center_channel));
    std::vector<int64_t> part_of_group(G, 0), group_of_class(L, -1);
    std::vector<char> seen(G, 0);
    for (const Run& r : group_runs)
      if (std::exchange(seen[r.index], 1)) return false;
    for (const Run& r : class_runs)
      for (int64_t c = r.channel; c < r.channel + r.length; ++c) {
        if (group_of_class[r.index] < 0) group_of_class[r.index] = group[c];
        if (group_of_class[r.index] != group[c]) return false;
      }
    int64_t count = 1, held = 0;
    for (const Run& r : group_runs) {  // in channel order
      if (held > 0 && held + r.length > part_channels) {
        ++count;
        held = 0;
      }
      part_of_group[r.index] = count - 1;
      held += r.length;
    }
    runs.reserve(group_runs.size() + class_runs.size());
    ids.reserve(G + L);
    std::vector<std::array<size_t, 4>> offsets(count + 1);  // per part: runs and ids of its groups, then its classes
    std::vector<char> listed(L, 0);
    for (int64_t q = 0; q <= count; ++q) {
      offsets[q] = {runs.size(), ids.size(), 0, 0};
      if (q == count) break;
      for (const Run& r : group_runs)
        if (part_of_group[r.index] == q) {
          runs.push_back(r);
          ids.push_back(r.index);
        }
      offsets[q][2] = runs.size();
      offsets[q][3] = ids.size();
      for (const Run& r : class_runs)
        if (part_of_group[group_of_class[r.index]] == q) {
          runs.push_back(r);
          if (!std::exchange(listed[r.index], 1)) ids.push_back(r.index);
        }
    }
    parts.reserve(count);
    for (int64_t q = 0; q < count; ++q) {
      const auto &o = offsets[q], &next = offsets[q + 1];
      const Run &first = runs[o[0]], &last = runs[o[2] - 1];
      parts.push_back({first.channel, last.channel + last.length, {runs.data() + o[0], runs.data() + o[2]},
                       {runs.data() + o[2], runs.data() + next[0]}, {ids.data() + o[1], ids.data() + o[3]},
                       {ids.data() + o[3], ids.data() + next[1]}});
    }
    return true;
  }

  // out = K m on the part's channels (z of length L is scratch owned by the caller)
  void center(const Part& q, const A* m, A* z, A* out) const {
    for (int64_t c : q.class_ids) z[c] = A(0);
    for (const Run& r : q.classes) {
      const A *v = center_value + r.entry, *mr = m + r.channel;
      A sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < r.length; ++i) sum += v[i] * mr[i];
      z[r.index] += sum;
    }
    for (int64_t c : q.class_ids) z[c] *= class_scale[c];
    std::fill(out + q.begin, out + q.end, A(0));
    for (const Run& r : q.classes) {
      const A *v = center_value + r.entry, zl = z[r.index];
      A* o = out + r.channel;
#pragma omp simd
      for (int64_t i = 0; i < r.length; ++i) o[i] += v[i] * zl;
    }
  }
};

// One thread's working memory for one sample, and `arrays` more arrays of C values for the caller (array(i)). The
// maps below fill the part's channels of their outputs.
template <typename A> struct Sample {
  std::vector<A> memory;
  A *z, *cen, *work, *rstd, *gvar, *arrays;
  int64_t C;
  explicit Sample(const Layout<A>& l, int64_t count = 0)
      : memory(l.L + (2 + count) * l.C + 2 * l.G), z(memory.data()), cen(z + l.L), work(cen + l.C), rstd(work + l.C),
        gvar(rstd + l.G), arrays(gvar + l.G), C(l.C) {}
  Sample(const Sample&) = delete;  // the pointers point into memory
  A* array(int64_t i) { return arrays + i * C; }

  // cen = K m and rstd per group for statistics m, m2 over P values per channel
  void statistics(const Layout<A>& l, const Part& q, const A* m, const A* m2, A P, A eps) {
    l.center(q, m, z, cen);
    for (int64_t g : q.group_ids) rstd[g] = A(0);
    const A* cn = cen;
    for (const Run& r : q.groups) {
      A sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t c = r.channel; c < r.channel + r.length; ++c) {
        const A d = m[c] - cn[c];
        sum += m2[c] + P * d * d;
      }
      rstd[r.index] += sum;
    }
    for (int64_t g : q.group_ids) rstd[g] = A(1) / std::sqrt(rstd[g] / (P * l.group_size[g]) + eps);
  }

  // a and beta of one row
  void coefficients(const Layout<A>& l, const Part& q, const A* m, const A* m2, A P, A eps, A* a, A* beta) {
    statistics(l, q, m, m2, P, eps);
    const A *w = l.w, *b = l.b, *cn = cen;
    for (const Run& r : q.groups) {
      const A rs = rstd[r.index];
#pragma omp simd
      for (int64_t c = r.channel; c < r.channel + r.length; ++c) {
        a[c] = w[c] * rs;
        beta[c] = b[c] - a[c] * cn[c];
      }
    }
  }

  // a, u, v of one row (dx = a dy + u x + v) and the weight cotangent per channel gw, from g_a = sum dy x and
  // g_beta = sum dy
  void coefficients_backward(const Layout<A>& l, const Part& q, const A* m, const A* m2, A P, A eps, const A* g_a,
                             const A* g_beta, A* a, A* u, A* v, A* gw) {
    statistics(l, q, m, m2, P, eps);
    for (int64_t g : q.group_ids) gvar[g] = A(0);
    const A *w = l.w, *cn = cen;
    for (const Run& r : q.groups) {
      const A rs = rstd[r.index];
      A sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t c = r.channel; c < r.channel + r.length; ++c) {
        const A ga = g_a[c] - g_beta[c] * cn[c];  // the cotangent of a, through beta = b - a cen too
        gw[c] = ga * rs;
        sum += ga * w[c];
      }
      gvar[r.index] += sum;
    }
    for (int64_t g : q.group_ids) {  // gvar becomes the cotangent of each channel's M2
      const A rs = rstd[g];
      gvar[g] *= A(-0.5) * rs * rs * rs / (P * l.group_size[g]);
    }
    A* wk = work;
    for (const Run& r : q.groups) {
      const A rs = rstd[r.index], uc = 2 * gvar[r.index];
#pragma omp simd
      for (int64_t c = r.channel; c < r.channel + r.length; ++c) {
        const A ac = w[c] * rs, gdev = uc * P * (m[c] - cn[c]);
        a[c] = ac;
        u[c] = uc;
        v[c] = gdev;
        wk[c] = -ac * g_beta[c] - gdev;  // the cotangent of cen
      }
    }
    l.center(q, wk, z, cen);  // K is symmetric: K^T g = K g
#pragma omp simd
    for (int64_t c = q.begin; c < q.end; ++c) v[c] = (v[c] + cn[c]) / P - u[c] * m[c];
  }

  // the whole row, part by part
  void coefficients(const Layout<A>& l, const A* m, const A* m2, A P, A eps, A* a, A* beta) {
    for (const Part& q : l.parts) coefficients(l, q, m, m2, P, eps, a, beta);
  }
  void coefficients_backward(const Layout<A>& l, const A* m, const A* m2, A P, A eps, const A* g_a, const A* g_beta,
                             A* a, A* u, A* v, A* gw) {
    for (const Part& q : l.parts) coefficients_backward(l, q, m, m2, P, eps, g_a, g_beta, a, u, v, gw);
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
  // dweight per field and dbias per trivial copy
  void finish(const Layout<A>& l, A* dweight, A* dbias) const {
    std::vector<A> total(C, A(0));
    for (size_t k = 0; k < weight.size() / C; ++k)
      for (int64_t c = 0; c < C; ++c) {
        dweight[l.field[c]] += weight[k * C + c];
        total[c] += sum_dy[k * C + c];
      }
    for (int64_t j = 0; j < l.B; ++j) dbias[l.bias_index[j]] += l.bias_value[j] * total[l.bias_channel[j]];
  }
};

Stats coefficients_cpu(const Pooled& s, const at::Tensor& weight, const at::Tensor& bias, const LayoutArgs& args,
                       double eps) {
  const at::Tensor mean = s.mean.contiguous(), m2 = s.m2.contiguous();
  at::Tensor a = at::empty_like(mean), beta = at::empty_like(mean), counts;
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "eqnorm::field_norm coefficients", [&] {
    using A = scalar_t;
    const Layout<A> l(args, weight, bias);
    const eqnorm_rows::Statistics<A> st = row_statistics<A>(s, mean, m2, counts, eps);
    A *ap = a.data_ptr<A>(), *bp = beta.data_ptr<A>();
    at::parallel_for(0, st.rows, 16, [&](int64_t begin, int64_t end) {
      Sample<A> w(l);
      for (int64_t n = begin; n < end; ++n) {
        const int64_t r = n * l.C;
        w.coefficients(l, st.mean + r, st.m2 + r, st.count(n), st.eps, ap + r, bp + r);
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
  at::Tensor dweight = at::zeros(weight.sizes(), mean.options()), dbias = at::zeros(bias.sizes(), mean.options());
  at::Tensor counts;
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "eqnorm::field_norm_backward coefficients", [&] {
    using A = scalar_t;
    const Layout<A> l(args, weight, bias);
    const eqnorm_rows::Statistics<A> st = row_statistics<A>(s, mean, m2, counts, eps);
    const int64_t S = st.rows, C = l.C;
    const A *gaxp = gax.data_ptr<A>(), *gbp = gb.data_ptr<A>();
    A *ap = a.data_ptr<A>(), *up = u.data_ptr<A>(), *vp = v.data_ptr<A>();
    ChunkSums<A> sums(S, C, 1);
    at::parallel_for(0, S, 16, [&](int64_t begin, int64_t end) {
      Sample<A> w(l, 1);
      A* gw = w.array(0);
      for (int64_t n = begin; n < end; ++n) {
        const int64_t r = n * C;
        w.coefficients_backward(l, st.mean + r, st.m2 + r, st.count(n), st.eps, gaxp + r, gbp + r, ap + r, up + r,
                                vp + r, gw);
        sums.add(n, gw, gbp + r);
      }
    });
    sums.finish(l, dweight.data_ptr<A>(), dbias.data_ptr<A>());
  });
  return {a, u, v, dweight.to(weight.scalar_type()), dbias.to(bias.scalar_type())};
}

// Point features (one position per sample, channels-last: e3nn node features): a row's statistics are the row itself
// (m = x, M2 = 0), so one pass reads x and writes y, and one reads dy and x and writes dx, with no (N, C) coefficient
// arrays in between. mean and m2 are still returned, as the schema says.
bool point_features(const at::Tensor& x, const std::optional<at::Tensor>& ptr, bool last, bool batch) {
  return !ptr.has_value() && last && !batch && x.size(1) == 1 && x.numel() > 0 &&
         (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> points_forward(const at::Tensor& x_in, const at::Tensor& weight,
                                                             const at::Tensor& bias, const LayoutArgs& args,
                                                             double eps) {
  const at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0);
  at::Tensor y = at::empty_like(x), mean = at::empty({N, x.size(2)}, x.options()), m2 = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "eqnorm::field_norm points", [&] {
    using A = scalar_t;
    const Layout<A> l(args, weight, bias);
    const A* xp = x.data_ptr<A>();
    A *yp = y.data_ptr<A>(), *mp = mean.data_ptr<A>(), *m2p = m2.data_ptr<A>();
    at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
      Sample<A> w(l, 3);
      A *zeros = w.array(0), *a = w.array(1), *beta = w.array(2);
      std::fill(zeros, zeros + l.C, A(0));
      for (int64_t n = begin; n < end; ++n) {
        const int64_t r = n * l.C;
        const A* xr = xp + r;
        w.coefficients(l, xr, zeros, A(1), static_cast<A>(eps), a, beta);
        for (int64_t c = 0; c < l.C; ++c) {  // the statistics written here, while the row is in L1
          yp[r + c] = a[c] * xr[c] + beta[c];
          mp[r + c] = xr[c];
          m2p[r + c] = A(0);
        }
      }
    });
  });
  return {y, mean, m2};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> points_backward(const at::Tensor& dy_in, const at::Tensor& x_in,
                                                              const at::Tensor& weight, const at::Tensor& bias,
                                                              const LayoutArgs& args, double eps) {
  const at::Tensor x = x_in.contiguous(), dy = dy_in.contiguous();
  const int64_t N = x.size(0);
  at::Tensor dx = at::empty_like(x);
  at::Tensor dweight = at::zeros(weight.sizes(), x.options()), dbias = at::zeros(bias.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "eqnorm::field_norm_backward points", [&] {
    using A = scalar_t;
    const Layout<A> l(args, weight, bias);
    const int64_t C = l.C;
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
    sums.finish(l, dweight.data_ptr<A>(), dbias.data_ptr<A>());
  });
  return {dx, dweight.to(weight.scalar_type()), dbias.to(bias.scalar_type())};
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

std::tuple<at::Tensor, at::Tensor, at::Tensor> samples_forward(const at::Tensor& x_in, const at::Tensor& weight,
                                                              const at::Tensor& bias, const Checked& checked,
                                                              double eps) {
  const at::Tensor x = x_in.contiguous();
  const int64_t N = checked.shape.samples, C = checked.shape.channels, P = checked.shape.positions;
  at::Tensor y = at::empty_like(x), mean = at::empty({N, C}, x.options()), m2 = at::empty({N, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "eqnorm::field_norm per sample", [&] {
    using A = scalar_t;
    const Layout<A> l(checked.layout, weight, bias, part_channels(P, sizeof(A)));
    const A* xp = x.data_ptr<A>();
    A *yp = y.data_ptr<A>(), *mp = mean.data_ptr<A>(), *m2p = m2.data_ptr<A>();
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      Sample<A> w(l, 2);
      A *a = w.array(0), *beta = w.array(1);
      for (int64_t n = begin; n < end; ++n) {
        const A* xs = xp + n * C * P;
        A *ys = yp + n * C * P, *ms = mp + n * C, *m2s = m2p + n * C;
        for (const Part& q : l.parts) {
          cpu_rows::moments<A, A>(xs + q.begin * P, q.end - q.begin, P, ms + q.begin, m2s + q.begin);
          w.coefficients(l, q, ms, m2s, static_cast<A>(P), static_cast<A>(eps), a, beta);
          for (int64_t c = q.begin; c < q.end; ++c)
            cpu_rows::affine_any<A, A>(xs + c * P, &a[c], &beta[c], 0, ys + c * P, P);
        }
      }
    });
  });
  return {y, mean, m2};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> samples_backward(const at::Tensor& dy_in, const at::Tensor& x_in,
                                                               const at::Tensor& mean_in, const at::Tensor& m2_in,
                                                               const at::Tensor& weight, const at::Tensor& bias,
                                                               const Checked& checked, double eps) {
  const at::Tensor x = x_in.contiguous(), dy = dy_in.contiguous(), mean = mean_in.contiguous(), m2 = m2_in.contiguous();
  const int64_t N = checked.shape.samples, C = checked.shape.channels, P = checked.shape.positions;
  at::Tensor dx = at::empty_like(x);
  at::Tensor dweight = at::zeros(weight.sizes(), x.options()), dbias = at::zeros(bias.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "eqnorm::field_norm_backward per sample", [&] {
    using A = scalar_t;
    const Layout<A> l(checked.layout, weight, bias, part_channels(2 * P, sizeof(A)));  // dy and x
    const A *xp = x.data_ptr<A>(), *dyp = dy.data_ptr<A>(), *mp = mean.data_ptr<A>(), *m2p = m2.data_ptr<A>();
    A* dxp = dx.data_ptr<A>();
    ChunkSums<A> sums(N, C, 1);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      Sample<A> w(l, 6);
      A *sdy = w.array(0), *sdyx = w.array(1), *a = w.array(2), *u = w.array(3), *v = w.array(4), *gw = w.array(5);
      for (int64_t n = begin; n < end; ++n) {
        const A *xs = xp + n * C * P, *gs = dyp + n * C * P;
        A* dxs = dxp + n * C * P;
        for (const Part& q : l.parts) {
          const int64_t o = q.begin * P;
          cpu_rows::sums<A, A>(gs + o, xs + o, q.end - q.begin, P, sdy + q.begin, sdyx + q.begin);
          w.coefficients_backward(l, q, mp + n * C, m2p + n * C, static_cast<A>(P), static_cast<A>(eps), sdyx, sdy,
                                  a, u, v, gw);
          for (int64_t c = q.begin; c < q.end; ++c)
            cpu_rows::affine_backward_any<A, A>(gs + c * P, xs + c * P, &a[c], &u[c], &v[c], 0, dxs + c * P, P);
        }
        sums.add(n, gw, sdy);
      }
    });
    sums.finish(l, dweight.data_ptr<A>(), dbias.data_ptr<A>());
  });
  return {dx, dweight.to(weight.scalar_type()), dbias.to(bias.scalar_type())};
}

// The GPU's block of threads, played on one CPU thread: each phase runs for t = 0 .. T-1 in turn. T = 3 divides no
// size in the tests, so every strided loop of coefficient_rows.h meets a ragged last stride.
struct SerialRun {
  int64_t threads = 3;
  template <typename F> void operator()(F&& phase) const {
    for (int64_t t = 0; t < threads; ++t) phase(t, threads);
  }
};

// The CUDA kernels' coefficient map (coefficient_rows.h) on the CPU, row after row, with one row's scratch.
template <typename A> struct SerialRows {
  const eqnorm_rows::LayoutView<A>& view;
  std::vector<A> memory;
  eqnorm_rows::Scratch<A> scratch;
  SerialRun run;
  explicit SerialRows(const eqnorm_rows::LayoutView<A>& v)
      : view(v), memory(eqnorm_rows::Scratch<A>::size(v)), scratch(v, memory.data()) {}
};

Stats coefficients_rows(const Pooled& s, const at::Tensor& weight, const at::Tensor& bias, const LayoutArgs& args,
                        double eps) {
  return coefficients_by_rows(s, weight, bias, args, eps, [](const auto& view, const auto& st, auto* a, auto* beta) {
    SerialRows r(view);
    for (int64_t n = 0; n < st.rows; ++n) eqnorm_rows::forward_row(view, st, a, beta, n, r.scratch, r.run);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> coefficients_backward_rows(
    const at::Tensor& sum_dy_x, const at::Tensor& sum_dy, const Pooled& s, const at::Tensor& weight,
    const at::Tensor& bias, const LayoutArgs& args, double eps) {
  return coefficients_backward_by_rows(
      sum_dy_x, sum_dy, s, weight, bias, args, eps,
      [](const auto& view, const auto& st, const auto& ct) {
        SerialRows r(view);
        for (int64_t n = 0; n < st.rows; ++n) eqnorm_rows::backward_row(view, st, ct, n, r.scratch, r.run);
      },
      [](const auto& view, const auto* gw, const auto* g_beta, auto* dweight, auto* dbias) {
        SerialRun run;
        eqnorm_rows::parameter_gradients(view, gw, g_beta, dweight, dbias, run);
      });
}

// EQNORM_GENERIC_COEFFICIENTS picks another coefficient map for the CPU, so that machines without a GPU test the ones
// CUDA runs: "aten" (the differentiable ATen form, which double backward differentiates) or "rows" (the CUDA kernels'
// row phases). Unset, the CPU runs its fused loops.
enum class Map { Fused, Aten, Rows };
Map coefficient_map() {
  static const Map map = [] {
    const char* v = std::getenv("EQNORM_GENERIC_COEFFICIENTS");
    const std::string name = v == nullptr ? "" : v;
    return name == "aten" ? Map::Aten : name == "rows" ? Map::Rows : Map::Fused;
  }();
  return map;
}
bool generic_coefficients() { return coefficient_map() != Map::Fused; }
CoefficientsForward forward_map() {
  const Map m = coefficient_map();
  return m == Map::Aten ? &coefficients_aten : m == Map::Rows ? &coefficients_rows : &coefficients_cpu;
}
CoefficientsBackward backward_map() {
  const Map m = coefficient_map();
  return m == Map::Aten ? &coefficients_backward_aten
                        : m == Map::Rows ? &coefficients_backward_rows : &coefficients_backward_cpu;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> field_norm_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                             const at::Tensor& bias, at::TensorList layout,
                                                             const std::optional<at::Tensor>& ptr, bool last,
                                                             bool batch, double eps) {
  if (!generic_coefficients() && point_features(x, ptr, last, batch))
    return points_forward(x, weight, bias, check("eqnorm::field_norm", x, weight, bias, layout, ptr, last, batch).layout,
                          eps);
  if (!generic_coefficients() && per_sample(x, ptr, last, batch))
    return samples_forward(x, weight, bias, check("eqnorm::field_norm", x, weight, bias, layout, ptr, last, batch), eps);
  return field_norm_forward(cpu_passes(), forward_map(), x, weight, bias, layout, ptr, last, batch, eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> field_norm_backward_cpu(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& m2, const at::Tensor& weight,
    const at::Tensor& bias, at::TensorList layout, const std::optional<at::Tensor>& ptr, bool last, bool batch,
    double eps) {
  if (!generic_coefficients() && point_features(x, ptr, last, batch))
    return points_backward(dy, x, weight, bias,
                           check_backward(dy, x, mean, m2, weight, bias, layout, ptr, last, batch).layout, eps);
  if (!generic_coefficients() && per_sample(x, ptr, last, batch))
    return samples_backward(dy, x, mean, m2, weight, bias,
                            check_backward(dy, x, mean, m2, weight, bias, layout, ptr, last, batch), eps);
  return field_norm_backward(cpu_passes(), backward_map(), dy, x, mean, m2, weight, bias, layout, ptr, last, batch,
                             eps);
}

}  // namespace

TORCH_LIBRARY_IMPL(eqnorm, CPU, m) {
  m.impl("field_norm", &field_norm_cpu);
  m.impl("field_norm_backward", &field_norm_backward_cpu);
}

}  // namespace eqnorm
