// The op schemas, and the Python module that loads them (import eqnorm._C).
#include <Python.h>
#include <torch/library.h>

extern "C" {
// An empty module: importing it runs the static registrations of this library.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
}

TORCH_LIBRARY(eqnorm, m) {
  // The whole layer, as torch's native_group_norm: statistics, the small (N, C) coefficient map and the affine pass in
  // one call. x is (N, C, P), (N, P, C) when channels_last, or ragged (rows, C) with offsets ptr; batch pools the
  // statistics over the samples (batch norm). layout is the FieldLayout's index and operator tensors (layout_args.h).
  // Returns y and the per-sample mean and M2 (N, C) that the backward reads.
  m.def(
      "field_norm(Tensor x, Tensor weight, Tensor bias, Tensor[] layout, Tensor? ptr, bool channels_last, "
      "bool batch, float eps) -> (Tensor, Tensor, Tensor)");
  // The fused backward: (dx, dweight, dbias). Not differentiable itself: double backward differentiates field_norm
  // through its composite form (autograd.cpp).
  m.def(
      "field_norm_backward(Tensor dy, Tensor x, Tensor mean, Tensor m2, Tensor weight, Tensor bias, Tensor[] layout, "
      "Tensor? ptr, bool channels_last, bool batch, float eps) -> (Tensor, Tensor, Tensor)");
}
