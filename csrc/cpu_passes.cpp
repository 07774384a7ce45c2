// The four normalization passes on the CPU (the building blocks of eqnorm::field_norm).
//
// Channels-first rows are contiguous: each is cut into blocks that stay in L1, a block's mean and squared deviations
// are taken in two passes over it, and blocks are merged with Chan's formula. Channels-last and ragged rows are walked
// a position at a time over a chunk of contiguous channels, with the same blocked two-pass scheme per channel.
// Sums use four 16-byte vector accumulators in a fixed order: vectorised, and deterministic.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>

#include "field_norm.h"

namespace eqnorm {
namespace {

constexpr int64_t kRowBlock = 2048;     // positions per two-pass block of a contiguous row
constexpr int64_t kPositionBlock = 64;  // positions per two-pass block of a channels-last chunk
constexpr int64_t kChannelChunk = 64;   // channels per channels-last task
constexpr int64_t kGrainElements = 32768;

// Chan's merge of (count, mean, m2) with a block of nb values, block mean bm and block squared deviations bm2.
template <typename A> void chan_merge(A count, A& mean, A& m2, A nb, A bm, A bm2) {
  const A total = count + nb, d = bm - mean, f = nb / total;
  mean += d * f;
  m2 += bm2 + d * d * count * f;
}

// Hot loops are compiled twice on x86-64, for AVX2 and for the baseline, and the loader picks one at run time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EQNORM_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define EQNORM_CLONES
#endif
#define EQNORM_INLINE inline __attribute__((always_inline))

// Four independent 32-byte vector accumulators: a single one would be bound by the latency of the vector add.
template <typename A> struct Lanes {
  typedef A V __attribute__((vector_size(32)));
  static constexpr int64_t kWidth = 32 / sizeof(A), kStep = 4 * kWidth;
  static EQNORM_INLINE V load(const A* p) {
    V v;
    __builtin_memcpy(&v, p, sizeof(V));
    return v;
  }
  static EQNORM_INLINE A total(V a0, V a1, V a2, V a3) {
    const V v = (a0 + a1) + (a2 + a3);
    A out = 0;
    for (int64_t k = 0; k < kWidth; ++k) out += v[k];
    return out;
  }
};

// sum_i f(x_i) (one input) or sum_i f(x_i, y_i): vectorised when the input is already the accumulation type.
template <typename T, typename A, typename F> EQNORM_INLINE A reduce_sum(const T* x, int64_t n, F f) {
  A tail = 0;
  int64_t i = 0;
  if constexpr (std::is_same_v<T, A>) {
    using L = Lanes<A>;
    typename L::V a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (; i + L::kStep <= n; i += L::kStep) {
      a0 += f(L::load(x + i));
      a1 += f(L::load(x + i + L::kWidth));
      a2 += f(L::load(x + i + 2 * L::kWidth));
      a3 += f(L::load(x + i + 3 * L::kWidth));
    }
    tail = L::total(a0, a1, a2, a3);
  }
  for (; i < n; ++i) tail += f(static_cast<A>(x[i]));
  return tail;
}

template <typename T, typename A> EQNORM_INLINE void block_moments(const T* x, int64_t n, A& mean, A& m2) {
  mean = reduce_sum<T, A>(x, n, [](auto v) { return v; }) / static_cast<A>(n);
  const A mu = mean;
  m2 = reduce_sum<T, A>(x, n, [mu](auto v) { return (v - mu) * (v - mu); });
}

// Positions [start, start + length) of sample n.
struct Segment {
  int64_t start, length;
};

Segment segment(const RowShape& s, const int64_t* ptr, int64_t n) {
  return ptr ? Segment{ptr[n], ptr[n + 1] - ptr[n]} : Segment{n * s.positions, s.positions};
}

int64_t grain_rows(int64_t row_length) { return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(row_length, 1)); }

// Mean and M2 of one contiguous row: blocks that stay in L1, two passes each, merged with Chan's formula.
template <typename T, typename A> EQNORM_INLINE void row_moments(const T* x, int64_t P, A& mean, A& m2) {
  A count = 0, mu = 0, ss = 0;
  for (int64_t p = 0; p < P; p += kRowBlock) {
    const int64_t nb = std::min(kRowBlock, P - p);
    A bm, bm2;
    block_moments<T, A>(x + p, nb, bm, bm2);
    chan_merge<A>(count, mu, ss, static_cast<A>(nb), bm, bm2);
    count += static_cast<A>(nb);
  }
  mean = mu;
  m2 = ss;
}

// sum dy and sum dy * x over one contiguous row.
template <typename T, typename A> EQNORM_INLINE void row_sums(const T* g, const T* v, int64_t P, A& t1, A& t2) {
  if constexpr (std::is_same_v<T, A>) {  // one vectorised pass, two independent accumulators per sum
    using L = Lanes<A>;
    typename L::V s0 = {}, s1 = {}, d0 = {}, d1 = {};
    int64_t i = 0;
    for (; i + 2 * L::kWidth <= P; i += 2 * L::kWidth) {
      const typename L::V g0 = L::load(g + i), g1 = L::load(g + i + L::kWidth);
      s0 += g0;
      s1 += g1;
      d0 += g0 * L::load(v + i);
      d1 += g1 * L::load(v + i + L::kWidth);
    }
    const typename L::V zero = {};
    t1 += L::total(s0, s1, zero, zero);
    t2 += L::total(d0, d1, zero, zero);
    for (; i < P; ++i) {
      t1 += g[i];
      t2 += g[i] * v[i];
    }
  } else {
    for (int64_t i = 0; i < P; ++i) {
      t1 += static_cast<A>(g[i]);
      t2 += static_cast<A>(g[i]) * static_cast<A>(v[i]);
    }
  }
}

// The float and double rows, compiled for AVX2 and the baseline (EQNORM_CLONES); other dtypes use the template.
EQNORM_CLONES void row_moments_float(const float* x, int64_t P, float& mean, float& m2) { row_moments(x, P, mean, m2); }
EQNORM_CLONES void row_moments_double(const double* x, int64_t P, double& mean, double& m2) {
  row_moments(x, P, mean, m2);
}
EQNORM_CLONES void row_sums_float(const float* g, const float* v, int64_t P, float& t1, float& t2) {
  row_sums(g, v, P, t1, t2);
}
EQNORM_CLONES void row_sums_double(const double* g, const double* v, int64_t P, double& t1, double& t2) {
  row_sums(g, v, P, t1, t2);
}

template <typename T, typename A> void row_moments_any(const T* x, int64_t P, A& mean, A& m2) {
  if constexpr (std::is_same_v<T, float>) row_moments_float(x, P, mean, m2);
  else if constexpr (std::is_same_v<T, double>) row_moments_double(x, P, mean, m2);
  else row_moments<T, A>(x, P, mean, m2);
}

template <typename T, typename A> void row_sums_any(const T* g, const T* v, int64_t P, A& t1, A& t2) {
  if constexpr (std::is_same_v<T, float>) row_sums_float(g, v, P, t1, t2);
  else if constexpr (std::is_same_v<T, double>) row_sums_double(g, v, P, t1, t2);
  else row_sums<T, A>(g, v, P, t1, t2);
}

template <typename T, typename A> void moments_first(const T* x, A* mean, A* m2, const RowShape& s) {
  const int64_t P = s.positions;
  at::parallel_for(0, s.samples * s.channels, grain_rows(P), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) row_moments_any<T, A>(x + r * P, P, mean[r], m2[r]);
  });
}

template <typename T, typename A>
void moments_last(const T* x, A* mean, A* m2, const RowShape& s, const int64_t* ptr) {
  const int64_t C = s.channels, chunks = (C + kChannelChunk - 1) / kChannelChunk;
  at::parallel_for(0, s.samples * chunks, 1, [&](int64_t begin, int64_t end) {
    A mu[kChannelChunk], ss[kChannelChunk], bm[kChannelChunk], bm2[kChannelChunk];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / chunks, c0 = (task % chunks) * kChannelChunk, width = std::min(kChannelChunk, C - c0);
      const Segment seg = segment(s, ptr, n);
      std::fill(mu, mu + width, A(0));
      std::fill(ss, ss + width, A(0));
      A count = 0;
      for (int64_t p0 = 0; p0 < seg.length; p0 += kPositionBlock) {
        const int64_t nb = std::min(kPositionBlock, seg.length - p0);
        const T* block = x + (seg.start + p0) * C + c0;
        std::fill(bm, bm + width, A(0));
        for (int64_t p = 0; p < nb; ++p)
          for (int64_t k = 0; k < width; ++k) bm[k] += static_cast<A>(block[p * C + k]);
        for (int64_t k = 0; k < width; ++k) bm[k] /= static_cast<A>(nb);
        std::fill(bm2, bm2 + width, A(0));
        for (int64_t p = 0; p < nb; ++p)
          for (int64_t k = 0; k < width; ++k) {
            const A d = static_cast<A>(block[p * C + k]) - bm[k];
            bm2[k] += d * d;
          }
        for (int64_t k = 0; k < width; ++k) chan_merge<A>(count, mu[k], ss[k], static_cast<A>(nb), bm[k], bm2[k]);
        count += static_cast<A>(nb);
      }
      std::copy(mu, mu + width, mean + n * C + c0);
      std::copy(ss, ss + width, m2 + n * C + c0);
    }
  });
}

template <typename T, typename A> void sums_first(const T* dy, const T* x, A* sdy, A* sdyx, const RowShape& s) {
  const int64_t P = s.positions;
  at::parallel_for(0, s.samples * s.channels, grain_rows(P), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      A t1 = 0, t2 = 0;
      row_sums_any<T, A>(dy + r * P, x + r * P, P, t1, t2);
      sdy[r] = t1;
      sdyx[r] = t2;
    }
  });
}

template <typename T, typename A>
void sums_last(const T* dy, const T* x, A* sdy, A* sdyx, const RowShape& s, const int64_t* ptr) {
  const int64_t C = s.channels, chunks = (C + kChannelChunk - 1) / kChannelChunk;
  at::parallel_for(0, s.samples * chunks, 1, [&](int64_t begin, int64_t end) {
    A a1[kChannelChunk], a2[kChannelChunk];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / chunks, c0 = (task % chunks) * kChannelChunk, width = std::min(kChannelChunk, C - c0);
      const Segment seg = segment(s, ptr, n);
      std::fill(a1, a1 + width, A(0));
      std::fill(a2, a2 + width, A(0));
      for (int64_t p = 0; p < seg.length; ++p) {
        const int64_t off = (seg.start + p) * C + c0;
        for (int64_t k = 0; k < width; ++k) {
          const A g = static_cast<A>(dy[off + k]);
          a1[k] += g;
          a2[k] += g * static_cast<A>(x[off + k]);
        }
      }
      std::copy(a1, a1 + width, sdy + n * C + c0);
      std::copy(a2, a2 + width, sdyx + n * C + c0);
    }
  });
}

// out = a * dy + u * x + v per row (dy == nullptr: out = a * x + u).
template <typename T, typename A>
void elementwise(const T* dy, const T* x, const A* a, const A* u, const A* v, T* out, const RowShape& s, bool last,
                 const int64_t* ptr) {
  const int64_t C = s.channels;
  auto row_op = [&](int64_t off, int64_t count, const A* ar, const A* ur, const A* vr, bool per_element) {
    for (int64_t i = 0; i < count; ++i) {
      const int64_t k = per_element ? i : 0;
      const A xa = static_cast<A>(x[off + i]);
      out[off + i] = static_cast<T>(dy ? ar[k] * static_cast<A>(dy[off + i]) + ur[k] * xa + vr[k] : ar[k] * xa + ur[k]);
    }
  };
  if (!last) {
    const int64_t P = s.positions;
    at::parallel_for(0, s.samples * C, grain_rows(P), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) row_op(r * P, P, a + r, u + r, dy ? v + r : nullptr, false);
    });
    return;
  }
  // channels-last: walk positions, tracking the sample each belongs to
  const int64_t total = ptr ? s.positions : s.samples * s.positions;
  at::parallel_for(0, total, grain_rows(C), [&](int64_t begin, int64_t end) {
    int64_t n = ptr ? std::upper_bound(ptr, ptr + s.samples + 1, begin) - ptr - 1 : begin / s.positions;
    for (int64_t q = begin; q < end; ++q) {
      while (ptr ? q >= ptr[n + 1] : q >= (n + 1) * s.positions) ++n;
      const int64_t r = n * C;
      row_op(q * C, C, a + r, u + r, dy ? v + r : nullptr, true);
    }
  });
}

struct Prepared {
  RowShape shape;
  std::optional<at::Tensor> ptr;
  const int64_t* ptr_data;
};

Prepared prepare(const char* op, const at::Tensor& x, bool last, const std::optional<at::Tensor>& ptr) {
  const RowShape s = check_rows(op, x, last, ptr);
  std::optional<at::Tensor> p;
  if (ptr.has_value()) p = ptr->contiguous();
  return {s, p, p ? p->data_ptr<int64_t>() : nullptr};
}

at::Tensor stat_like(const at::Tensor& x, const RowShape& s) {
  return at::empty({s.samples, s.channels}, x.options().dtype(accumulation_type(x.scalar_type())));
}

std::tuple<at::Tensor, at::Tensor> moments_cpu(const at::Tensor& x_in, bool last, const std::optional<at::Tensor>& ptr) {
  const Prepared pr = prepare("eqnorm::moments", x_in, last, ptr);
  const at::Tensor x = x_in.contiguous();
  at::Tensor mean = stat_like(x, pr.shape), m2 = stat_like(x, pr.shape);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "eqnorm::moments", [&] {
    using A = at::opmath_type<scalar_t>;
    if (last) moments_last<scalar_t, A>(x.data_ptr<scalar_t>(), mean.data_ptr<A>(), m2.data_ptr<A>(), pr.shape, pr.ptr_data);
    else moments_first<scalar_t, A>(x.data_ptr<scalar_t>(), mean.data_ptr<A>(), m2.data_ptr<A>(), pr.shape);
  });
  return {mean, m2};
}

std::tuple<at::Tensor, at::Tensor> moments_backward_cpu(const at::Tensor& dy_in, const at::Tensor& x_in, bool last,
                                                        const std::optional<at::Tensor>& ptr) {
  const Prepared pr = prepare("eqnorm::moments_backward", x_in, last, ptr);
  check_like("eqnorm::moments_backward", "dy", dy_in, x_in);
  const at::Tensor x = x_in.contiguous(), dy = dy_in.contiguous();
  at::Tensor sdy = stat_like(x, pr.shape), sdyx = stat_like(x, pr.shape);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "eqnorm::moments_backward", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* g = dy.data_ptr<scalar_t>();
    const scalar_t* v = x.data_ptr<scalar_t>();
    if (last) sums_last<scalar_t, A>(g, v, sdy.data_ptr<A>(), sdyx.data_ptr<A>(), pr.shape, pr.ptr_data);
    else sums_first<scalar_t, A>(g, v, sdy.data_ptr<A>(), sdyx.data_ptr<A>(), pr.shape);
  });
  return {sdy, sdyx};
}

at::Tensor affine_cpu(const at::Tensor& x_in, const at::Tensor& a_in, const at::Tensor& beta_in, bool last,
                      const std::optional<at::Tensor>& ptr) {
  const char* op = "eqnorm::affine";
  const Prepared pr = prepare(op, x_in, last, ptr);
  check_stat(op, "a", a_in, x_in, pr.shape);
  check_stat(op, "beta", beta_in, x_in, pr.shape);
  const at::Tensor x = x_in.contiguous(), a = a_in.contiguous(), beta = beta_in.contiguous();
  at::Tensor y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "eqnorm_affine", [&] {
    using A = at::opmath_type<scalar_t>;
    elementwise<scalar_t, A>(nullptr, x.data_ptr<scalar_t>(), a.data_ptr<A>(), beta.data_ptr<A>(), nullptr,
                             y.data_ptr<scalar_t>(), pr.shape, last, pr.ptr_data);
  });
  return y;
}

at::Tensor affine_backward_cpu(const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& a_in,
                               const at::Tensor& u_in, const at::Tensor& v_in, bool last,
                               const std::optional<at::Tensor>& ptr) {
  const char* op = "eqnorm::affine_backward";
  const Prepared pr = prepare(op, x_in, last, ptr);
  check_like(op, "dy", dy_in, x_in);
  check_stat(op, "a", a_in, x_in, pr.shape);
  check_stat(op, "u", u_in, x_in, pr.shape);
  check_stat(op, "v", v_in, x_in, pr.shape);
  const at::Tensor x = x_in.contiguous(), dy = dy_in.contiguous();
  const at::Tensor a = a_in.contiguous(), u = u_in.contiguous(), v = v_in.contiguous();
  at::Tensor dx = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "eqnorm_affine_backward", [&] {
    using A = at::opmath_type<scalar_t>;
    elementwise<scalar_t, A>(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), a.data_ptr<A>(), u.data_ptr<A>(),
                             v.data_ptr<A>(), dx.data_ptr<scalar_t>(), pr.shape, last, pr.ptr_data);
  });
  return dx;
}

}  // namespace

const Passes& cpu_passes() {
  static const Passes passes{&moments_cpu, &affine_cpu, &moments_backward_cpu, &affine_backward_cpu};
  return passes;
}

}  // namespace eqnorm
