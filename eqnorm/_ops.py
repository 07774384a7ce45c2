r"""The layer as one registered op, and which implementation runs it.

``torch.ops.eqnorm.field_norm(x, weight, bias, index, ptr, channels_last, batch, eps) -> (y, mean, m2)`` normalizes
the rows of a contiguous tensor laid out channels-first ``(N, C, P)``, channels-last ``(N, P, C)``, or ragged
``(rows, C)`` with offsets ``ptr`` (sample ``n`` owns rows ``ptr[n]:ptr[n+1]``), with statistics per sample, or
pooled over the batch when ``batch``:

.. math::

    m = \frac1P \sum_p x_p, \quad M_2 = \sum_p (x_p - m)^2, \quad (a, \beta) = f(m, M_2, w, b), \quad y = a x + \beta

(:mod:`eqnorm.coefficients` gives :math:`f`). ``mean`` and ``m2`` are ``(N, C)``, or ``(N, 0)`` for point rows
(one position per sample, no ``ptr``, not ``batch``), where they would be ``x`` itself and zeros: the op keeps none
and its backward reads ``x``. Its autograd is registered in C++ with the op (``csrc/autograd.cpp``):
the backward is the fused ``eqnorm::field_norm_backward``, or, under ``create_graph=True``, a differentiable composite.
Statistics are float32 for float16/bfloat16/float32 inputs and float64 for float64.

The compiled extension ``eqnorm._C`` registers the ops (C++ on the CPU, CUDA on GPUs). Where it is missing, or
``EQNORM_BACKEND=torch`` is set, :func:`torch_field_norm` runs instead: plain ATen operations, differentiable to any
order and usable under every ``torch.func`` transform; :mod:`eqnorm._pure_kernels` registers it as the op there, so
``torch.ops.eqnorm.field_norm`` (and TorchScript, which calls it) works on every installation and device.
"""

from __future__ import annotations

import torch

from . import _pure_kernels
from ._extension import COMPILED, EXTENSION, C
from ._pure_kernels import is_tracing, torch_field_norm
from .operators import IndexTensors

__all__ = ["compiled_for", "field_norm", "field_norm_dense", "kernel_backend"]

#: device type -> name of the compiled implementation that runs there (tests empty it to take the pure route)
_COMPILED = dict(COMPILED)


def kernel_backend(device: torch.device | str = "cpu") -> str:
    """Which implementation of the layer runs on ``device``: ``"cpp"``, ``"cuda"`` or ``"torch"``."""
    return _COMPILED.get(torch.device(device).type, "torch")


# Every device the extension has no kernel for (all of them where it is missing) runs the pure-PyTorch kernels through
# the same op.
_pure_kernels.register(
    EXTENSION,
    ["CompositeImplicitAutograd"]
    if not EXTENSION
    else [f"Autograd{key}" for key in ("CPU", "CUDA", "MPS", "XPU") if key.lower() not in _COMPILED],
    lambda x, weight, bias, index, *args: torch_field_norm(x, weight, bias, IndexTensors(*index), *args),
)


def field_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    t: IndexTensors,
    ptr: torch.Tensor | None,
    channels_last: bool,
    batch: bool,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The compiled op where there is one for ``x``'s device, else :func:`torch_field_norm`; and
    :func:`torch_field_norm` under the transforms of ``torch.func`` (see :func:`compiled_for`)."""
    if compiled_for(x):
        if torch.compiler.is_compiling():
            return torch.ops.eqnorm.field_norm(x, weight, bias, list(t), ptr, channels_last, batch, eps)
        return C.field_norm(x, weight, bias, t, ptr, channels_last, batch, eps)
    return torch_field_norm(x, weight, bias, t, ptr, channels_last, batch, eps)


def compiled_for(x: torch.Tensor) -> bool:
    """Whether the compiled op runs for ``x``: its device has compiled kernels, and no ``torch.func`` transform
    (``vmap``, ``grad``, ``jacrev``, ``jacfwd``, ``jvp``, ``hessian``, ...) is active. The op's autograd is a C++
    function, which those transforms cannot see through; its differentiable ATen form (:func:`torch_field_norm`) is
    what they transform. (``torch.autograd.forward_ad`` tangents the op handles itself, through the same form.)"""
    if x.device.type not in _COMPILED:
        return False
    return torch.compiler.is_compiling() or not torch._C._are_functorch_transforms_active()


def field_norm_dense(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, t: IndexTensors, batch: bool, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`field_norm` of a contiguous ``(N, C, *spatial)`` ``x`` as ``(N, C, P)`` rows, ``y`` in ``x``'s shape.
    Eager calls view it inside the bound C++ call; traced code (compile, export, ``make_fx``, ``jit.trace``) views it
    here, where the tracer sees the sizes as symbols."""
    if compiled_for(x) and not is_tracing(x):
        return C.field_norm_dense(x, weight, bias, t, batch, eps)
    y, mean, m2 = field_norm(x.flatten(2), weight, bias, t, None, False, batch, eps)
    return y.reshape(x.shape), mean, m2
