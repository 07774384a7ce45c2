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

template <typename V> CompiledView<V> compiled_view(const IndexArgs& l, const V* values) {
  const int64_t C = l.field_of_channel.numel(), G = l.groups(), L = l.classes(), K = l.center_channel.numel();
  const int64_t B = l.bias_channel.numel(), F = l.fields(), NB = l.trivial();
  auto take = [&](const int64_t*& p, int64_t outputs, int64_t entries) {
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
  const int64_t* p = l.compiled_index.data_ptr<int64_t>();
  m.class_sum = take(p, L, K);
  m.center = take(p, C, K);
  m.group_mean = take(p, G, C);
  m.channel_bias = take(p, C, B);
  m.center.runs = p;
  v.cuts = p + C;
  v.num_cuts = compiled_sizes(C, G, L, K, B, l.compiled_index.numel()).cuts;
  const int64_t* bias_grad = l.compiled_bias_grad.data_ptr<int64_t>();
  const int64_t* field_sum = l.compiled_field_sum.data_ptr<int64_t>();
  m.bias_grad = take(bias_grad, NB, B);  // values in the order of eqnorm.compiled.OPERATORS
  m.field_sum = take(field_sum, F, C);
  return v;
}

}  // namespace eqnorm
