r"""The pure-PyTorch kernels as the op's implementation wherever no compiled kernel is registered.

``torch.ops.eqnorm.field_norm`` and ``field_norm_backward`` exist on every installation and device: where the compiled
extension is missing, this module defines their schemas (those of ``csrc/schemas.cpp``) and registers
:func:`~eqnorm._ops.torch_field_norm` for every device (``CompositeImplicitAutograd``: autograd, ``torch.func``,
``torch.compile`` and TorchScript see its ATen operations); where the extension is loaded, it registers the same
kernels at the autograd key of every device the extension has no kernel for (``AutogradMPS``, say), and of the CPU too
when ``EQNORM_BACKEND=torch`` chose the pure-PyTorch kernels. Which implementation a device runs is the dispatcher's
table, read back by :func:`eqnorm.kernel_backend`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .operators import LayoutTensors

__all__ = ["SCHEMAS", "register"]

#: the ops' schemas, exactly as csrc/schemas.cpp defines them (tests/test_pure_kernels.py compares them)
SCHEMAS = (
    "field_norm(Tensor x, Tensor? weight, Tensor? bias, Tensor[] layout, Tensor? ptr, bool channels_last, "
    "bool batch, float eps) -> (Tensor, Tensor, Tensor)",
    "field_norm_backward(Tensor dy, Tensor x, Tensor mean, Tensor m2, Tensor? weight, Tensor? bias, "
    "Tensor[] layout, Tensor? ptr, bool channels_last, bool batch, float eps, bool[3] output_mask) "
    "-> (Tensor?, Tensor?, Tensor?)",
)


def field_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    layout: list[torch.Tensor],
    ptr: torch.Tensor | None,
    channels_last: bool,
    batch: bool,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``eqnorm::field_norm`` by :func:`~eqnorm._ops.torch_field_norm`."""
    from ._ops import torch_field_norm

    return torch_field_norm(x, weight, bias, LayoutTensors(*layout), ptr, channels_last, batch, eps)


def field_norm_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    m2: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    layout: list[torch.Tensor],
    ptr: torch.Tensor | None,
    channels_last: bool,
    batch: bool,
    eps: float,
    output_mask: list[bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """``eqnorm::field_norm_backward``: autograd through :func:`field_norm` (the statistics are recomputed), the
    gradients ``output_mask`` asks for, ``None`` for the others and for an absent parameter."""
    given = (x, weight, bias)
    inputs = [None if t is None else t.detach().requires_grad_(w) for t, w in zip(given, output_mask, strict=True)]
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    with torch.enable_grad():
        y = field_norm(inputs[0], inputs[1], inputs[2], layout, ptr, channels_last, batch, eps)[0]  # type: ignore[arg-type]
        grads = iter(torch.autograd.grad(y, wanted, dy, allow_unused=True) if wanted else ())
    out: list[torch.Tensor | None] = []
    for t in inputs:
        if t is None or not t.requires_grad:
            out.append(None)
            continue
        g = next(grads)
        out.append(torch.zeros_like(t) if g is None else g)
    return out[0], out[1], out[2]


#: the registrations made, kept alive: a library's registrations end when it is collected
_LIBRARIES: list[torch.library.Library] = []


def register(defined: bool, keys: Iterable[str]) -> None:
    """Register the pure kernels at each dispatch key of ``keys``, after defining the schemas unless ``defined``
    (the compiled extension defined them)."""
    keys = list(keys)
    if not keys:
        return
    lib = torch.library.Library("eqnorm", "IMPL" if defined else "DEF")
    if not defined:
        for schema in SCHEMAS:
            lib.define(schema)
    for key in keys:
        lib.impl("field_norm", field_norm, key)
        lib.impl("field_norm_backward", field_norm_backward, key)
    _LIBRARIES.append(lib)
