// The four normalization passes on the CPU (the building blocks of eqnorm::field_norm).
//
// Channels-first rows are contiguous: each thread takes a range of rows to the row loops of cpu_rows.h. Channels-last
// and ragged rows are walked a position at a time over a chunk of contiguous channels, with a blocked two-pass scheme
// per channel (blocks of positions merged with Chan's formula).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "cpu_rows.h"
#include "field_norm.h"

namespace eqnorm {
namespace {

constexpr int64_t kPositionBlock = 64;  // positions per two-pass block of a channels-last chunk
constexpr int64_t kChannelChunk = cpu_rows::kChannelChunk;  // channels per channels-last task
constexpr int64_t kGrainElements = 32768;

// Positions [start, start + length) of sample n.
struct Segment {
  int64_t start, length;
};

Segment segment(const RowShape& s, const int64_t* ptr, int64_t n) {
  return ptr ? Segment{ptr[n], ptr[n + 1] - ptr[n]} : Segment{n * s.positions, s.positions};
}

int64_t grain_rows(int64_t row_length) { return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(row_length, 1)); }

template <typename T, typename A> void moments_first(const T* x, A* mean, A* m2, const RowShape& s) {
  const int64_t P = s.positions;
  at::parallel_for(0, s.samples * s.channels, grain_rows(P), [&](int64_t begin, int64_t end) {
    cpu_rows::moments<T, A>(x + begin * P, end - begin, P, mean + begin, m2 + begin);
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
        cpu_rows::column_moments<T, A>(x + (seg.start + p0) * C + c0, nb, C, width, bm, bm2);
        for (int64_t k = 0; k < width; ++k)
          cpu_rows::chan_merge<A>(count, mu[k], ss[k], static_cast<A>(nb), bm[k], bm2[k]);
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
    cpu_rows::sums<T, A>(dy + begin * P, x + begin * P, end - begin, P, sdy + begin, sdyx + begin);
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
      const int64_t off = seg.start * C + c0;
      cpu_rows::column_sums<T, A>(dy + off, x + off, seg.length, C, width, a1, a2);
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
  auto row = [&](int64_t off, int64_t count, int64_t r, int64_t stride) {
    if (dy) cpu_rows::affine_backward_any<T, A>(dy + off, x + off, a + r, u + r, v + r, stride, out + off, count);
    else cpu_rows::affine_any<T, A>(x + off, a + r, u + r, stride, out + off, count);
  };
  if (!last) {
    const int64_t P = s.positions;
    at::parallel_for(0, s.samples * C, grain_rows(P), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) row(r * P, P, r, 0);
    });
    return;
  }
  // channels-last: walk positions, tracking the sample each belongs to
  const int64_t total = ptr ? s.positions : s.samples * s.positions;
  at::parallel_for(0, total, grain_rows(C), [&](int64_t begin, int64_t end) {
    int64_t n = ptr ? std::upper_bound(ptr, ptr + s.samples + 1, begin) - ptr - 1 : begin / s.positions;
    for (int64_t q = begin; q < end; ++q) {
      while (ptr ? q >= ptr[n + 1] : q >= (n + 1) * s.positions) ++n;
      row(q * C, C, n * C, 1);
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
  check_affine_backward(dy_in, x_in, a_in, u_in, v_in, pr.shape);
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
