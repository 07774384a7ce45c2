// The float and double row loops of cpu_rows.h and its float channel chunks, compiled for AVX2 and for the baseline
// on x86-64 with GCC (the loader picks one at run time).
#include "cpu_rows.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EQNORM_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define EQNORM_CLONES
#endif

namespace eqnorm::cpu_rows {

#define EQNORM_ROWS_DEFINE(T)                                                                                        \
  EQNORM_CLONES void rows_moments(const T* x, int64_t rows, int64_t P, T* mean, T* m2) {                             \
    rows_moments_generic<T, T>(x, rows, P, mean, m2);                                                                \
  }                                                                                                                  \
  EQNORM_CLONES void rows_sums(const T* dy, const T* x, int64_t rows, int64_t P, T* sdy, T* sdyx) {                  \
    rows_sums_generic<T, T>(dy, x, rows, P, sdy, sdyx);                                                              \
  }                                                                                                                  \
  EQNORM_CLONES void affine(const T* x, const T* a, const T* b, int64_t stride, T* out, int64_t n) {                 \
    affine_generic<T, T>(x, a, b, stride, out, n);                                                                   \
  }                                                                                                                  \
  EQNORM_CLONES void affine_backward(const T* dy, const T* x, const T* a, const T* u, const T* v, int64_t stride,    \
                                     T* out, int64_t n) {                                                            \
    affine_backward_generic<T, T>(dy, x, a, u, v, stride, out, n);                                                   \
  }
EQNORM_ROWS_DEFINE(float)
EQNORM_ROWS_DEFINE(double)

EQNORM_CLONES void column_moments_chunk(const float* block, int64_t n, int64_t stride, float* bm, float* bm2) {
  column_moments_chunk_of(block, n, stride, bm, bm2);
}
EQNORM_CLONES void column_sums_chunk(const float* dy, const float* x, int64_t n, int64_t stride, float* a1, float* a2) {
  column_sums_chunk_of(dy, x, n, stride, a1, a2);
}

}  // namespace eqnorm::cpu_rows
