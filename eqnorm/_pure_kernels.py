r"""The pure-PyTorch kernels as the op's implementation wherever no compiled kernel is registered.

``torch.ops.eqnorm.field_norm`` and ``field_norm_backward`` exist on every installation and device: where the compiled
extension is missing, :func:`register` defines their schemas (those of ``csrc/schemas.cpp``) and registers the
pure-PyTorch forward (:func:`eqnorm._ops.torch_field_norm`) for every device (``CompositeImplicitAutograd``:
autograd, ``torch.func``, ``torch.compile`` and TorchScript see its ATen operations); where the extension is loaded,
it registers the same kernels at the autograd key of every device the extension has no kernel for (``AutogradMPS``,
say), and of the CPU too when ``EQNORM_BACKEND=torch`` chose the pure-PyTorch kernels. Which implementation a device
runs is the dispatcher's table, read back by :func:`eqnorm.kernel_backend`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["SCHEMAS", "backward_of", "register"]

#: the ops' schemas, exactly as csrc/schemas.cpp defines them (tests/test_pure_kernels.py compares them)
SCHEMAS = (
    "field_norm(Tensor x, Tensor? weight, Tensor? bias, Tensor[] index, Tensor? ptr, bool channels_last, "
    "bool batch, float eps) -> (Tensor, Tensor, Tensor)",
    "field_norm_backward(Tensor dy, Tensor x, Tensor mean, Tensor m2, Tensor? weight, Tensor? bias, "
    "Tensor[] index, Tensor? ptr, bool channels_last, bool batch, float eps, bool[3] output_mask) "
    "-> (Tensor?, Tensor?, Tensor?)",
)

#: ``field_norm``: ``(x, weight, bias, index, ptr, channels_last, batch, eps) -> (y, mean, m2)``
Forward = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
#: ``(dx, dweight, dbias)``, each ``None`` where not computed
Gradients = tuple[torch.Tensor | None, ...]


def backward_of(forward: Forward) -> Callable[..., Gradients]:
    """``field_norm_backward`` from a differentiable ``forward``: autograd through it (the statistics recomputed),
    the gradients ``output_mask`` asks for, ``None`` for the others and for an absent parameter."""

    def field_norm_backward(
        dy: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor, *args: Any
    ) -> Gradients:
        *rest, output_mask = args  # rest: the forward's arguments after x, from weight and bias on
        given = zip((x, *rest[:2]), output_mask, strict=True)
        inputs = [None if t is None else t.detach().requires_grad_(wanted) for t, wanted in given]
        wanted = [t for t in inputs if t is not None and t.requires_grad]
        with torch.enable_grad():
            y = forward(*inputs, *rest[2:])[0]
            grads = iter(torch.autograd.grad(y, wanted, dy, allow_unused=True) if wanted else ())
        out: list[torch.Tensor | None] = []
        for t in inputs:
            g = next(grads) if t is not None and t.requires_grad else None
            out.append(torch.zeros_like(t) if g is None and t is not None and t.requires_grad else g)
        return tuple(out)

    return field_norm_backward


#: the registrations made, kept alive: a library's registrations end when it is collected
_LIBRARIES: list[torch.library.Library] = []


def register(defined: bool, keys: Iterable[str], forward: Forward) -> None:
    """Register ``forward`` and its backward as the ops at each dispatch key of ``keys``, after defining the schemas
    unless ``defined`` (the compiled extension defined them)."""
    keys = list(keys)
    if not keys:
        return
    lib = torch.library.Library("eqnorm", "IMPL" if defined else "DEF")
    if not defined:
        for schema in SCHEMAS:
            lib.define(schema)
    for key in keys:
        lib.impl("field_norm", forward, key)
        lib.impl("field_norm_backward", backward_of(forward), key)
    _LIBRARIES.append(lib)
