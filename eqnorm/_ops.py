r"""The layer as one registered op, and which implementation runs it.

``torch.ops.eqnorm.field_norm(x, weight, bias, index, ptr, channels_last, batch, eps) -> (y, mean, m2)`` normalizes
the rows of a contiguous tensor laid out channels-first ``(N, C, P)``, channels-last ``(N, P, C)``, or ragged
``(rows, C)`` with offsets ``ptr`` (sample ``n`` owns rows ``ptr[n]:ptr[n+1]``), with statistics per sample, or
pooled over the batch when ``batch``:

.. math::

    m = \frac1P \sum_p x_p, \quad M_2 = \sum_p (x_p - m)^2, \quad (a, \beta) = f(m, M_2, w, b), \quad y = a x + \beta

(:mod:`eqnorm.coefficients` gives :math:`f`). Its autograd is registered in C++ with the op (``csrc/autograd.cpp``):
the backward is the fused ``eqnorm::field_norm_backward``, or, under ``create_graph=True``, a differentiable composite.
Statistics are float32 for float16/bfloat16/float32 inputs and float64 for float64.

The compiled extension ``eqnorm._C`` registers the ops (C++ on the CPU, CUDA on GPUs). Where it is missing, or
``EQNORM_BACKEND=torch`` is set, :func:`torch_field_norm` runs instead: plain ATen operations, differentiable to any
order and usable under every ``torch.func`` transform; :mod:`eqnorm._pure_kernels` registers it as the op there, so
``torch.ops.eqnorm.field_norm`` (and TorchScript, which calls it) works on every installation and device.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch._subclasses.fake_tensor import is_fake

from . import _pure_kernels
from .coefficients import affine_coefficients, gather, scatter_sum
from .layout import IndexTensors

__all__ = ["accumulation_dtype", "field_norm", "kernel_backend", "torch_field_norm"]

_FORCE_TORCH = os.environ.get("EQNORM_BACKEND") == "torch"

try:
    _C: Any = importlib.import_module("eqnorm._C")  # importing it registers torch.ops.eqnorm.*

    _EXTENSION = True
except ImportError as error:
    _EXTENSION = False
    _note, _built = (Path(__file__).with_name(name) for name in ("_extension_missing.txt", "_built_with.txt"))
    _why = _note.read_text().strip() if _note.exists() else f"eqnorm._C does not import: {error}"
    if _built.exists() and _built.read_text().strip() != torch.__version__:
        _why += f"; it was compiled against torch {_built.read_text().strip()}, and this is torch {torch.__version__}"
    if not _FORCE_TORCH:
        warnings.warn(
            f"eqnorm: the compiled kernels are missing ({_why}); the pure-PyTorch kernels run instead, slower. "
            "Reinstall with `pip install --no-build-isolation 'eqnorm-layers[...]'` to build them against the "
            "installed torch, or set "
            "EQNORM_BACKEND=torch to choose the pure-PyTorch kernels on purpose.",
            RuntimeWarning,
            stacklevel=2,
        )

#: device type -> name of the compiled implementation available for it
_COMPILED = {
    device: name
    for device, key, name in (("cpu", "CPU", "cpp"), ("cuda", "CUDA", "cuda"))
    if _EXTENSION and not _FORCE_TORCH and torch._C._dispatch_has_kernel_for_dispatch_key("eqnorm::field_norm", key)
}


def kernel_backend(device: torch.device | str = "cpu") -> str:
    """Which implementation of the layer runs on ``device``: ``"cpp"``, ``"cuda"`` or ``"torch"``."""
    return _COMPILED.get(torch.device(device).type, "torch")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 for every other floating dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


Rows = Callable[[torch.Tensor], torch.Tensor]


def statistics_shape(x: torch.Tensor, channels_last: bool, ptr: torch.Tensor | None) -> tuple[int, int]:
    """``(N, C)``: the shape of the per-sample statistics of the rows ``x``."""
    if ptr is not None:
        return ptr.shape[0] - 1, x.shape[1]
    return x.shape[0], x.shape[2 if channels_last else 1]


def is_tracing(x: torch.Tensor) -> bool:
    """True while torch.compile, torch.export, torch.jit.trace or a fake-tensor trace (``make_fx``) runs:
    data-dependent checks must wait. Cheap for a plain tensor (well under a microsecond): it runs on every call."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or x.is_meta:
        return True
    return type(x) is not torch.Tensor and is_fake(x)  # is_fake alone costs about 2 us


def check_ptr(ptr: torch.Tensor, rows: int | torch.SymInt) -> None:
    """``ValueError`` unless ``ptr`` runs from 0 to ``rows`` without decreasing (checked in eager mode; the compiled
    op checks it itself)."""
    if is_tracing(ptr):
        return
    if ptr.dim() != 1 or ptr.dtype != torch.long or ptr.numel() < 1:
        raise ValueError(f"ptr must be 1D int64 offsets, got shape {tuple(ptr.shape)} and dtype {ptr.dtype}")
    if int(ptr[0]) != 0 or int(ptr[-1]) != rows or bool((ptr.diff() < 0).any()):
        raise ValueError(f"ptr must run from 0 to the number of rows {rows} without decreasing, got {ptr.tolist()}")


def torch_moments(
    x: torch.Tensor, channels_last: bool, ptr: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | int, Rows]:
    """``(mean, m2, positions, rows)``: per-row statistics in the accumulation dtype, the values per row (an int or
    ``(N, 1)`` counts, at least 1), and how an ``(N, C)`` coefficient broadcasts back over ``x``."""
    xf = x.to(accumulation_dtype(x.dtype))
    if ptr is None:
        dim = 1 if channels_last else 2
        mean = xf.mean(dim)
        return mean, (xf - mean.unsqueeze(dim)).square().sum(dim), x.shape[dim], lambda t: t.unsqueeze(dim)
    check_ptr(ptr, x.shape[0])
    counts = ptr.diff()
    segment = torch.arange(counts.shape[0], device=x.device).repeat_interleave(counts, output_size=x.shape[0])
    positions = counts.clamp(min=1).to(xf.dtype).unsqueeze(1)
    mean = scatter_sum(xf, segment, counts.shape[0], 0) / positions
    m2 = scatter_sum((xf - gather(mean, segment, 0)).square(), segment, counts.shape[0], 0)
    return mean, m2, positions, lambda t: gather(t, segment, 0)


#: ``(mean, m2, positions) -> (mean, m2, count)`` pooled over the batch (and, for sync batch norm, over processes)
Pool = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def pool_batch(mean: torch.Tensor, m2: torch.Tensor, positions: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Chan's combination of ``N`` rows of ``P`` values: :math:`\bar m = \frac1N\sum_n m_n`,
    :math:`M_2 = \sum_n M_{2,n} + P \sum_n (m_n - \bar m)^2`, over :math:`N P` values; each ``(1, C)``."""
    mu = mean.mean(0, keepdim=True)
    spread = m2.sum(0, keepdim=True) + positions * (mean - mu).square().sum(0, keepdim=True)
    return mu, spread, mean.new_ones(()) * (positions * mean.shape[0])


def torch_field_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    t: IndexTensors,
    ptr: torch.Tensor | None,
    channels_last: bool,
    batch: bool,
    eps: float,
    pool: Pool = pool_batch,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``field_norm`` in plain ATen operations: the reference, differentiable to any order."""
    if x.numel() == 0 and not (batch and pool is not pool_batch):  # a process's share of a synchronised batch
        # may be empty: it still joins the pool's collective
        stats = x.new_zeros(statistics_shape(x, channels_last, ptr), dtype=accumulation_dtype(x.dtype))
        # y still depends on the parameters, so that their gradients are zeros (as the compiled op's), not None
        unused = sum((p.sum() * 0 for p in (weight, bias) if p is not None), x.new_zeros(()))
        return x + unused.to(x.dtype), stats, stats.clone()
    mean, m2, positions, rows = torch_moments(x, channels_last, ptr)
    pooled = pool(mean, m2, positions) if batch else (mean, m2, positions)  # type: ignore[arg-type]
    a, beta = affine_coefficients(*pooled, weight, bias, t, eps)
    y = x.to(a.dtype) * rows(a) + rows(beta)
    return y.to(x.dtype), mean, m2


# Every device the extension has no kernel for (all of them where it is missing) runs the pure-PyTorch kernels through
# the same op.
_pure_kernels.register(
    _EXTENSION,
    ["CompositeImplicitAutograd"]
    if not _EXTENSION
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
        return _C.field_norm(x, weight, bias, t, ptr, channels_last, batch, eps)
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
        return _C.field_norm_dense(x, weight, bias, t, batch, eps)
    y, mean, m2 = field_norm(x.flatten(2), weight, bias, t, None, False, batch, eps)
    return y.reshape(x.shape), mean, m2


if _EXTENSION:

    @torch.library.register_fake("eqnorm::field_norm")
    def _field_norm_fake(
        x: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        index: list[torch.Tensor],
        ptr: torch.Tensor | None,
        channels_last: bool,
        batch: bool,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for name, t in (("weight", weight), ("bias", bias), ("ptr", ptr), *(("index", t) for t in index)):
            if t is not None and t.device != x.device:
                raise RuntimeError(f"eqnorm::field_norm: {name} is on {t.device} but x is on {x.device}")
        torch._check(x.dim() == (2 if ptr is not None else 3), lambda: f"eqnorm::field_norm: bad x {x.shape}")
        shape = statistics_shape(x, channels_last, ptr)
        acc = accumulation_dtype(x.dtype)
        y = torch.empty_like(x, memory_format=torch.contiguous_format)
        return y, x.new_empty(shape, dtype=acc), x.new_empty(shape, dtype=acc)

    @torch.library.register_fake("eqnorm::segment_offsets")
    def _segment_offsets_fake(batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
        return batch.new_empty(num_graphs + 1)

    @torch.library.register_fake("eqnorm::field_norm_backward")
    def _field_norm_backward_fake(
        dy: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor, *args: Any
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        weight, bias, output_mask = args[0], args[1], args[-1]  # between them: index, ptr, channels_last, batch, eps
        dx = torch.empty_like(x, memory_format=torch.contiguous_format) if output_mask[0] else None
        dweight = torch.empty_like(weight) if output_mask[1] and weight is not None else None
        return dx, dweight, torch.empty_like(bias) if output_mask[2] and bias is not None else None
