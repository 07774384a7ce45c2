// eqnorm::segment_offsets: the offsets ptr of a graph index `batch` (nodes sorted by graph, as PyTorch Geometric
// makes it), on any device: ptr_n = |{i : batch_i < n}| for n = 0 .. num_graphs. An op of its own, so that compiled,
// exported and scripted code checks the index when it runs (a traced Python check would be skipped) and the size of
// ptr is known from num_graphs.
#include <torch/library.h>

#include <ATen/ATen.h>

namespace eqnorm {
namespace {

at::Tensor segment_offsets(const at::Tensor& batch, int64_t num_graphs) {
  const char* op = "eqnorm::segment_offsets";
  TORCH_CHECK(batch.dim() == 1 && batch.scalar_type() == at::kLong, op,
              ": batch must be 1D int64 graph indices, got ", batch.scalar_type(), " of shape ", batch.sizes());
  TORCH_CHECK(num_graphs >= 0, op, ": num_graphs must be non-negative, got ", num_graphs);
  const at::Tensor b = batch.contiguous();  // an expanded single-graph index is not contiguous
  if (b.numel() > 0) {
    // on a GPU these assert asynchronously, without a host synchronization
    at::_assert_async(b.diff().ge(0).all(), "eqnorm::segment_offsets: batch must be sorted (nodes grouped by graph); "
                                            "sort the nodes first");
    at::_assert_async(b.min().ge(0).logical_and(b.max().lt(num_graphs)),
                      "eqnorm::segment_offsets: batch holds a graph id outside 0 .. num_graphs - 1");
  }
  return at::searchsorted(b, at::arange(num_graphs + 1, b.options()));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(eqnorm, m) {
  m.def("segment_offsets(Tensor batch, SymInt num_graphs) -> Tensor");
}

// Real kernels on every device (ATen operations only), opaque to tracers, which see the fake kernel of _ops.py.
TORCH_LIBRARY_IMPL(eqnorm, CPU, m) { m.impl("segment_offsets", &segment_offsets); }
TORCH_LIBRARY_IMPL(eqnorm, CUDA, m) { m.impl("segment_offsets", &segment_offsets); }

}  // namespace eqnorm
