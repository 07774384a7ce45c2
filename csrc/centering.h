// The layout operators the fused coefficient kernels read, as raw pointers (no torch header: the CUDA sources use it).
#pragma once

#include <cstdint>

namespace eqnorm_layout {

// center_in (C, L), center_out (L, C), group_of_channel (C,), group_size (G,), and the channels of group g,
// channels_by_group[group_start[g] : group_start[g + 1]], in channel order.
template <typename A> struct Centering {
  const A* center_in;
  const A* center_out;
  const int64_t* group_of_channel;
  const A* group_size;
  const int64_t* channels_by_group;
  const int64_t* group_start;
  int64_t channels, classes, groups;
};

// Per-sample positions: counts[n] when counts is set (ragged), else positions for every sample.
template <typename A> struct Positions {
  A positions;
  const A* counts;
};

}  // namespace eqnorm_layout
