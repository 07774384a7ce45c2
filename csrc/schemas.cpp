// The op schemas of the four passes, and the Python module that loads them (import eqnorm._C).
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
  m.def("moments(Tensor x, bool channels_last, Tensor? ptr=None) -> (Tensor, Tensor)");
  m.def("affine(Tensor x, Tensor a, Tensor beta, bool channels_last, Tensor? ptr=None) -> Tensor");
  m.def("moments_backward(Tensor dy, Tensor x, bool channels_last, Tensor? ptr=None) -> (Tensor, Tensor)");
  m.def(
      "affine_backward(Tensor dy, Tensor x, Tensor a, Tensor u, Tensor v, bool channels_last, Tensor? ptr=None) -> "
      "Tensor");
  // the small (N, C) coefficient map and its vector-Jacobian product, fused (eqnorm/coefficients.py holds the same
  // math in PyTorch, for machines without the extension and as the tests' reference)
  m.def(
      "coefficients(Tensor mean, Tensor m2, Tensor weight, Tensor bias, Tensor center_in, Tensor center_out, "
      "Tensor group_of_channel, Tensor group_size, Tensor channels_by_group, Tensor group_start, float positions, "
      "Tensor? counts, float eps) -> (Tensor, Tensor)");
  m.def(
      "coefficients_backward(Tensor grad_a, Tensor grad_beta, Tensor mean, Tensor m2, Tensor weight, "
      "Tensor center_in, Tensor center_out, Tensor group_of_channel, Tensor group_size, Tensor channels_by_group, "
      "Tensor group_start, float positions, Tensor? counts, float eps) -> (Tensor, Tensor, Tensor, Tensor)");
}
