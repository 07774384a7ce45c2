// The compiled layout and the parameters as the raw arrays of coefficient_map.h.
#pragma once

#include "coefficient_map.h"
#include "field_norm.h"

namespace eqnorm {

// The map's arrays, with its values read from `values` (compiled_value, or a copy of it in another type), and the
// cuts: `cuts` (channel, class, group) triples, the first (0, 0, 0) and the last (C, L, G).
template <typename V> struct CompiledView {
  eqnorm_map::Map<V> map;
  const int64_t* cuts;
  int64_t num_cuts;
  eqnorm_map::Part part(int64_t first, int64_t last) const {
    const int64_t *a = cuts + 3 * first, *b = cuts + 3 * last;
    return {a[0], b[0], a[1], b[1], a[2], b[2]};
  }
};

template <typename V>
CompiledView<V> compiled_view(const LayoutArgs& l, int64_t F, int64_t NB, const V* values) {
  const int64_t C = l.field_of_channel.numel(), G = l.groups(), L = l.classes(), K = l.center_channel.numel();
  const int64_t B = l.bias_channel.numel();
  const int64_t* p = l.compiled_index.data_ptr<int64_t>();
  auto take = [&](int64_t outputs, int64_t entries) {
    const eqnorm_map::Sparse<V> s{p, p + outputs + 1, values};
    p += outputs + 1 + entries;
    values += entries;
    return s;
  };
  CompiledView<V> v;
  eqnorm_map::Map<V>& m = v.map;
  m.C = C;
  m.G = G;
  m.L = L;
  m.F = F;
  m.NB = NB;
  m.field = l.field_of_channel.data_ptr<int64_t>();
  m.group = l.group_of_channel.data_ptr<int64_t>();
  m.class_sum = take(L, K);
  m.center = take(C, K);
  m.group_mean = take(G, C);
  m.channel_bias = take(C, B);
  m.bias_grad = take(NB, B);
  m.field_sum = take(F, C);
  m.center.runs = p;
  v.cuts = p + C;
  v.num_cuts = compiled_sizes(C, G, L, K, B, F, NB, l.compiled_index.numel()).cuts;
  return v;
}

}  // namespace eqnorm
