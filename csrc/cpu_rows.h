// Loops over contiguous rows on the CPU, shared by the passes (cpu_passes.cpp) and the per-sample layer
// (cpu_field_norm.cpp): a row's mean and M2, its sums of dy and dy x, and the affine maps of the forward and backward.
//
// Every row's result is computed by the same sequence of operations wherever it sits in a call, so the passes and the
// per-sample layer agree bit for bit and no result depends on the number of threads. Float and double rows are
// compiled for AVX2 and for the baseline (cpu_rows.cpp; the loader picks one at run time); other dtypes use the
// portable templates below.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace eqnorm::cpu_rows {

#define EQNORM_INLINE inline __attribute__((always_inline))

// Rows up to this length are one two-pass block, reduced kWidth rows at a time; longer rows are cut into blocks of
// this length that stay in L1, merged with Chan's formula.
constexpr int64_t kRowBlock = 2048;

// Chan's merge of (count, mean, m2) with a block of nb values, block mean bm and block squared deviations bm2.
template <typename A> EQNORM_INLINE void chan_merge(A count, A& mean, A& m2, A nb, A bm, A bm2) {
  const A total = count + nb, d = bm - mean, f = nb / total;
  mean += d * f;
  m2 += bm2 + d * d * count * f;
}

// 32-byte vectors of A.
template <typename A> struct Lanes {
  typedef A V __attribute__((vector_size(32)));
  static constexpr int64_t kWidth = 32 / sizeof(A);
  static EQNORM_INLINE V load(const A* p) {
    V v;
    __builtin_memcpy(&v, p, sizeof(V));
    return v;
  }
  // lane k of the result is the sum of the lanes of s[k], k < kWidth, by the same addition tree for every k: the
  // horizontal sums of kWidth rows for the price of about one.
  static EQNORM_INLINE V transpose_sum(const V* s) {
    if constexpr (kWidth == 8) {
      V t[4];
      for (int j = 0; j < 4; ++j)
        t[j] = __builtin_shufflevector(s[2 * j], s[2 * j + 1], 0, 2, 8, 10, 4, 6, 12, 14) +
               __builtin_shufflevector(s[2 * j], s[2 * j + 1], 1, 3, 9, 11, 5, 7, 13, 15);
      const V u0 = __builtin_shufflevector(t[0], t[1], 0, 2, 8, 10, 4, 6, 12, 14) +
                   __builtin_shufflevector(t[0], t[1], 1, 3, 9, 11, 5, 7, 13, 15);
      const V u1 = __builtin_shufflevector(t[2], t[3], 0, 2, 8, 10, 4, 6, 12, 14) +
                   __builtin_shufflevector(t[2], t[3], 1, 3, 9, 11, 5, 7, 13, 15);
      return __builtin_shufflevector(u0, u1, 0, 1, 2, 3, 8, 9, 10, 11) +
             __builtin_shufflevector(u0, u1, 4, 5, 6, 7, 12, 13, 14, 15);
    } else {
      static_assert(kWidth == 4);
      const V t0 = __builtin_shufflevector(s[0], s[1], 0, 4, 2, 6) + __builtin_shufflevector(s[0], s[1], 1, 5, 3, 7);
      const V t1 = __builtin_shufflevector(s[2], s[3], 0, 4, 2, 6) + __builtin_shufflevector(s[2], s[3], 1, 5, 3, 7);
      return __builtin_shufflevector(t0, t1, 0, 1, 4, 5) + __builtin_shufflevector(t0, t1, 2, 3, 6, 7);
    }
  }
};

// kWidth rows of length P starting at x, the last one repeated past `rows` (its results are not stored).
template <typename A> struct RowBatch {
  const A* row[Lanes<A>::kWidth];
  EQNORM_INLINE RowBatch(const A* x, int64_t r0, int64_t rows, int64_t P) {
    for (int64_t k = 0; k < Lanes<A>::kWidth; ++k) row[k] = x + std::min(r0 + k, rows - 1) * P;
  }
};

// Mean and M2 of rows of length P <= kRowBlock, kWidth at a time: two passes (the mean, then the squared deviations
// from it), one vector accumulator per row.
template <typename A> EQNORM_INLINE void short_rows_moments(const A* x, int64_t rows, int64_t P, A* mean, A* m2) {
  using L = Lanes<A>;
  using V = typename L::V;
  constexpr int64_t W = L::kWidth;
  const int64_t body = P - P % W;
  for (int64_t r0 = 0; r0 < rows; r0 += W) {
    const RowBatch<A> b(x, r0, rows, P);
    V s[W], tail = {};
    for (int64_t k = 0; k < W; ++k) s[k] = V{};
    for (int64_t i = 0; i < body; i += W)
      for (int64_t k = 0; k < W; ++k) s[k] += L::load(b.row[k] + i);
    for (int64_t k = 0; k < W; ++k)
      for (int64_t i = body; i < P; ++i) tail[k] += b.row[k][i];
    const V mu = (L::transpose_sum(s) + tail) / static_cast<A>(P);
    tail = V{};
    for (int64_t k = 0; k < W; ++k) s[k] = V{};
    // the second pass reads the rows from L1: meanwhile, fetch the next kWidth rows, one 64-byte line per step
    const int64_t ahead = W * P;
    for (int64_t i = 0; i < body; i += W)
      for (int64_t k = 0; k < W; ++k) {
        if (i % (64 / sizeof(A)) == 0) __builtin_prefetch(b.row[k] + ahead + i);
        const V d = L::load(b.row[k] + i) - mu[k];
        s[k] += d * d;
      }
    for (int64_t k = 0; k < W; ++k)
      for (int64_t i = body; i < P; ++i) {
        const A d = b.row[k][i] - mu[k];
        tail[k] += d * d;
      }
    const V ss = L::transpose_sum(s) + tail;
    for (int64_t k = 0; k < std::min(W, rows - r0); ++k) {
      mean[r0 + k] = mu[k];
      m2[r0 + k] = ss[k];
    }
  }
}

// sum dy and sum dy x of rows of length P <= kRowBlock, kWidth at a time.
template <typename A>
EQNORM_INLINE void short_rows_sums(const A* dy, const A* x, int64_t rows, int64_t P, A* sdy, A* sdyx) {
  using L = Lanes<A>;
  using V = typename L::V;
  constexpr int64_t W = L::kWidth;
  const int64_t body = P - P % W;
  for (int64_t r0 = 0; r0 < rows; r0 += W) {
    const RowBatch<A> g(dy, r0, rows, P), v(x, r0, rows, P);
    V s[W], d[W], s_tail = {}, d_tail = {};
    for (int64_t k = 0; k < W; ++k) s[k] = d[k] = V{};
    for (int64_t i = 0; i < body; i += W)
      for (int64_t k = 0; k < W; ++k) {
        const V gk = L::load(g.row[k] + i);
        s[k] += gk;
        d[k] += gk * L::load(v.row[k] + i);
      }
    for (int64_t k = 0; k < W; ++k)
      for (int64_t i = body; i < P; ++i) {
        s_tail[k] += g.row[k][i];
        d_tail[k] += g.row[k][i] * v.row[k][i];
      }
    const V ts = L::transpose_sum(s) + s_tail, td = L::transpose_sum(d) + d_tail;
    for (int64_t k = 0; k < std::min(W, rows - r0); ++k) {
      sdy[r0 + k] = ts[k];
      sdyx[r0 + k] = td[k];
    }
  }
}

// sum_i f(x_i) over one row: four vector accumulators when T is A (one would wait on the latency of the vector add),
// one value at a time otherwise (half, bfloat16). With `ahead`, the n values from there are prefetched on the way.
template <typename T, typename A, typename F>
EQNORM_INLINE A row_sum(const T* x, int64_t n, F f, const T* ahead = nullptr) {
  A tail = 0;
  int64_t i = 0;
  if constexpr (std::is_same_v<T, A>) {
    using L = Lanes<A>;
    constexpr int64_t W = L::kWidth;
    typename L::V a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (; i + 4 * W <= n; i += 4 * W) {
      if (ahead != nullptr) {  // 4 W values are two 64-byte lines
        __builtin_prefetch(ahead + i);
        __builtin_prefetch(ahead + i + 2 * W);
      }
      a0 += f(L::load(x + i));
      a1 += f(L::load(x + i + W));
      a2 += f(L::load(x + i + 2 * W));
      a3 += f(L::load(x + i + 3 * W));
    }
    const typename L::V v = (a0 + a1) + (a2 + a3);
    for (int64_t k = 0; k < W; ++k) tail += v[k];
  }
  for (; i < n; ++i) tail += f(static_cast<A>(x[i]));
  return tail;
}

// Mean and M2 of one row longer than kRowBlock (or of any length for half and bfloat16): blocks of kRowBlock values,
// two passes each, merged with Chan's formula.
template <typename T, typename A> EQNORM_INLINE void long_row_moments(const T* x, int64_t P, A& mean, A& m2) {
  A count = 0, mu = 0, ss = 0;
  for (int64_t p = 0; p < P; p += kRowBlock) {
    const int64_t nb = std::min(kRowBlock, P - p);
    const A bm = row_sum<T, A>(x + p, nb, [](auto v) { return v; }) / static_cast<A>(nb);
    // the second pass reads the block from L1: meanwhile, fetch the next one (the rest of the row or the next row)
    const A bm2 = row_sum<T, A>(x + p, nb, [bm](auto v) { return (v - bm) * (v - bm); }, x + p + nb);
    chan_merge<A>(count, mu, ss, static_cast<A>(nb), bm, bm2);
    count += static_cast<A>(nb);
  }
  mean = mu;
  m2 = ss;
}

// sum dy and sum dy x over one row longer than kRowBlock (or of any length for half and bfloat16): one pass, two
// vector accumulators per sum.
template <typename T, typename A> EQNORM_INLINE void long_row_sums(const T* g, const T* v, int64_t P, A& t1, A& t2) {
  t1 = 0;
  t2 = 0;
  int64_t i = 0;
  if constexpr (std::is_same_v<T, A>) {
    using L = Lanes<A>;
    constexpr int64_t W = L::kWidth;
    typename L::V s0 = {}, s1 = {}, d0 = {}, d1 = {};
    for (; i + 2 * W <= P; i += 2 * W) {
      const typename L::V g0 = L::load(g + i), g1 = L::load(g + i + W);
      s0 += g0;
      s1 += g1;
      d0 += g0 * L::load(v + i);
      d1 += g1 * L::load(v + i + W);
    }
    const typename L::V s = s0 + s1, d = d0 + d1;
    for (int64_t k = 0; k < W; ++k) {
      t1 += s[k];
      t2 += d[k];
    }
  }
  for (; i < P; ++i) {
    t1 += static_cast<A>(g[i]);
    t2 += static_cast<A>(g[i]) * static_cast<A>(v[i]);
  }
}

template <typename T, typename A>
EQNORM_INLINE void rows_moments_generic(const T* x, int64_t rows, int64_t P, A* mean, A* m2) {
  if constexpr (std::is_same_v<T, A>) {
    if (P > 0 && P <= kRowBlock) return short_rows_moments<A>(x, rows, P, mean, m2);
  }
  for (int64_t r = 0; r < rows; ++r) long_row_moments<T, A>(x + r * P, P, mean[r], m2[r]);
}

template <typename T, typename A>
EQNORM_INLINE void rows_sums_generic(const T* dy, const T* x, int64_t rows, int64_t P, A* sdy, A* sdyx) {
  if constexpr (std::is_same_v<T, A>) {
    if (P > 0 && P <= kRowBlock) return short_rows_sums<A>(dy, x, rows, P, sdy, sdyx);
  }
  for (int64_t r = 0; r < rows; ++r) long_row_sums<T, A>(dy + r * P, x + r * P, P, sdy[r], sdyx[r]);
}

// Channels-last blocks (cpu_passes.cpp): n positions of `width` <= kChannelChunk consecutive channels, `stride` values
// apart. Every channel is summed over the positions in order, whatever the width, so a channel's result does not
// depend on the chunk it sits in.
constexpr int64_t kChannelChunk = 64;

// The mean bm and squared deviations bm2 of each channel over the block (two passes; the block stays in L1).
template <typename T, typename A>
EQNORM_INLINE void column_moments_generic(const T* block, int64_t n, int64_t stride, int64_t width, A* bm, A* bm2) {
  std::fill(bm, bm + width, A(0));
  for (int64_t p = 0; p < n; ++p)
    for (int64_t k = 0; k < width; ++k) bm[k] += static_cast<A>(block[p * stride + k]);
  for (int64_t k = 0; k < width; ++k) bm[k] /= static_cast<A>(n);
  std::fill(bm2, bm2 + width, A(0));
  for (int64_t p = 0; p < n; ++p)
    for (int64_t k = 0; k < width; ++k) {
      const A d = static_cast<A>(block[p * stride + k]) - bm[k];
      bm2[k] += d * d;
    }
}

// sum dy (a1) and sum dy x (a2) of each channel over the n positions.
template <typename T, typename A>
EQNORM_INLINE void column_sums_generic(const T* dy, const T* x, int64_t n, int64_t stride, int64_t width, A* a1,
                                       A* a2) {
  std::fill(a1, a1 + width, A(0));
  std::fill(a2, a2 + width, A(0));
  for (int64_t p = 0; p < n; ++p)
    for (int64_t k = 0; k < width; ++k) {
      const A g = static_cast<A>(dy[p * stride + k]);
      a1[k] += g;
      a2[k] += g * static_cast<A>(x[p * stride + k]);
    }
}

// The same for a float chunk of kChannelChunk channels, with one vector accumulator per 8 channels held in registers
// (the loops above store and reload every running sum at each position): the same operations per channel, so the
// same bits.
template <typename F> EQNORM_INLINE void column_moments_chunk_of(const F* block, int64_t n, int64_t stride, F* bm,
                                                               F* bm2) {
  using L = Lanes<F>;
  using V = typename L::V;
  constexpr int64_t W = L::kWidth, NV = kChannelChunk / W;
  V s[NV], mu[NV];
  for (int64_t j = 0; j < NV; ++j) s[j] = V{};
  for (int64_t p = 0; p < n; ++p)
    for (int64_t j = 0; j < NV; ++j) s[j] += L::load(block + p * stride + j * W);
  for (int64_t j = 0; j < NV; ++j) {
    mu[j] = s[j] / static_cast<F>(n);
    s[j] = V{};
  }
  for (int64_t p = 0; p < n; ++p)
    for (int64_t j = 0; j < NV; ++j) {
      const V d = L::load(block + p * stride + j * W) - mu[j];
      s[j] += d * d;
    }
  for (int64_t j = 0; j < NV; ++j) {
    __builtin_memcpy(bm + j * W, &mu[j], sizeof(V));
    __builtin_memcpy(bm2 + j * W, &s[j], sizeof(V));
  }
}

template <typename F>
EQNORM_INLINE void column_sums_chunk_of(const F* dy, const F* x, int64_t n, int64_t stride, F* a1, F* a2) {
  using L = Lanes<F>;
  using V = typename L::V;
  constexpr int64_t W = L::kWidth, NV = kChannelChunk / W;
  V s[NV], d[NV];
  for (int64_t j = 0; j < NV; ++j) s[j] = d[j] = V{};
  for (int64_t p = 0; p < n; ++p)
    for (int64_t j = 0; j < NV; ++j) {
      const V g = L::load(dy + p * stride + j * W);
      s[j] += g;
      d[j] += g * L::load(x + p * stride + j * W);
    }
  for (int64_t j = 0; j < NV; ++j) {
    __builtin_memcpy(a1 + j * W, &s[j], sizeof(V));
    __builtin_memcpy(a2 + j * W, &d[j], sizeof(V));
  }
}

void column_moments_chunk(const float* block, int64_t n, int64_t stride, float* bm, float* bm2);
void column_sums_chunk(const float* dy, const float* x, int64_t n, int64_t stride, float* a1, float* a2);

template <typename T, typename A>
void column_moments(const T* block, int64_t n, int64_t stride, int64_t width, A* bm, A* bm2) {
  if constexpr (std::is_same_v<T, float> && std::is_same_v<A, float>) {
    if (width == kChannelChunk) return column_moments_chunk(block, n, stride, bm, bm2);
  }
  column_moments_generic<T, A>(block, n, stride, width, bm, bm2);
}

template <typename T, typename A>
void column_sums(const T* dy, const T* x, int64_t n, int64_t stride, int64_t width, A* a1, A* a2) {
  if constexpr (std::is_same_v<T, float> && std::is_same_v<A, float>) {
    if (width == kChannelChunk) return column_sums_chunk(dy, x, n, stride, a1, a2);
  }
  column_sums_generic<T, A>(dy, x, n, stride, width, a1, a2);
}

// out = a x + b over n values, with coefficients per value (stride 1) or one pair for all (stride 0).
template <typename T, typename A>
EQNORM_INLINE void affine_generic(const T* x, const A* a, const A* b, int64_t stride, T* out, int64_t n) {
  if (stride == 0) {
    const A ak = a[0], bk = b[0];
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(ak * static_cast<A>(x[i]) + bk);
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(a[i] * static_cast<A>(x[i]) + b[i]);
  }
}

// out = a dy + u x + v over n values, likewise.
template <typename T, typename A>
EQNORM_INLINE void affine_backward_generic(const T* dy, const T* x, const A* a, const A* u, const A* v, int64_t stride,
                                           T* out, int64_t n) {
  if (stride == 0) {
    const A ak = a[0], uk = u[0], vk = v[0];
    for (int64_t i = 0; i < n; ++i)
      out[i] = static_cast<T>(ak * static_cast<A>(dy[i]) + uk * static_cast<A>(x[i]) + vk);
  } else {
    for (int64_t i = 0; i < n; ++i)
      out[i] = static_cast<T>(a[i] * static_cast<A>(dy[i]) + u[i] * static_cast<A>(x[i]) + v[i]);
  }
}

// The float and double instances, compiled twice (cpu_rows.cpp).
#define EQNORM_ROWS_DECLARE(T)                                                                                       \
  void rows_moments(const T* x, int64_t rows, int64_t P, T* mean, T* m2);                                            \
  void rows_sums(const T* dy, const T* x, int64_t rows, int64_t P, T* sdy, T* sdyx);                                 \
  void affine(const T* x, const T* a, const T* b, int64_t stride, T* out, int64_t n);                                \
  void affine_backward(const T* dy, const T* x, const T* a, const T* u, const T* v, int64_t stride, T* out, int64_t n);
EQNORM_ROWS_DECLARE(float)
EQNORM_ROWS_DECLARE(double)
#undef EQNORM_ROWS_DECLARE

// Any dtype T with accumulation type A: the compiled instances for float and double, the templates otherwise.
template <typename T, typename A> void moments(const T* x, int64_t rows, int64_t P, A* mean, A* m2) {
  if constexpr (std::is_same_v<T, A>) rows_moments(x, rows, P, mean, m2);
  else rows_moments_generic<T, A>(x, rows, P, mean, m2);
}
template <typename T, typename A> void sums(const T* dy, const T* x, int64_t rows, int64_t P, A* sdy, A* sdyx) {
  if constexpr (std::is_same_v<T, A>) rows_sums(dy, x, rows, P, sdy, sdyx);
  else rows_sums_generic<T, A>(dy, x, rows, P, sdy, sdyx);
}
template <typename T, typename A>
void affine_any(const T* x, const A* a, const A* b, int64_t stride, T* out, int64_t n) {
  if constexpr (std::is_same_v<T, A>) affine(x, a, b, stride, out, n);
  else affine_generic<T, A>(x, a, b, stride, out, n);
}
template <typename T, typename A>
void affine_backward_any(const T* dy, const T* x, const A* a, const A* u, const A* v, int64_t stride, T* out,
                         int64_t n) {
  if constexpr (std::is_same_v<T, A>) affine_backward(dy, x, a, u, v, stride, out, n);
  else affine_backward_generic<T, A>(dy, x, a, u, v, stride, out, n);
}

}  // namespace eqnorm::cpu_rows
