r"""The pure-PyTorch kernels: the layer in plain ATen operations (:func:`torch_field_norm`, the reference every
compiled result is tested against, differentiable to any order and what ``torch.func`` transforms), and their
registration as the op wherever no compiled kernel is registered.

``torch.ops.eqnorm.field_norm`` and ``field_norm_backward`` exist on every installation and device: where the compiled
extension is missing, :func:`register` defines their schemas (those of ``csrc/schemas.cpp``) and registers the
pure-PyTorch forward (:func:`eqnorm._pure_kernels.torch_field_norm`) for every device (``CompositeImplicitAutograd``:
autograd, ``torch.func``, ``torch.compile`` and TorchScript see its ATen operations); where the extension is loaded,
it registers the same kernels at the autograd key of every device the extension has no kernel for (``AutogradMPS``,
say), and of the CPU too when ``EQNORM_BACKEND=torch`` chose the pure-PyTorch kernels. Which implementation a device
runs is the dispatcher's table, read back by :func:`eqnorm.kernel_backend`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch._subclasses.fake_tensor import is_fake

from .coefficients import affine_coefficients, gather, scatter_sum
from .operators import IndexTensors

__all__ = [
    "SCHEMAS",
    "accumulation_dtype",
    "backward_of",
    "check_ptr",
    "is_tracing",
    "register",
    "torch_field_norm",
    "torch_segment_offsets",
]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 for every other floating dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


Rows = Callable[[torch.Tensor], torch.Tensor]


def statistics_shape(
    x: torch.Tensor, channels_last: bool, ptr: torch.Tensor | None, batch: bool
) -> tuple[int | torch.SymInt, int | torch.SymInt]:
    """``(N, C)``: the shape of the per-sample statistics ``field_norm`` returns for the rows ``x``; ``(N, 0)`` for
    point rows (one position per sample, no ``ptr``, no batch pooling: e3nn's node features), whose statistics would
    be ``x`` itself and zeros (the backward reads ``x`` instead)."""
    if ptr is not None:
        return ptr.shape[0] - 1, x.shape[1]
    positions, channels = (x.shape[1], x.shape[2]) if channels_last else (x.shape[2], x.shape[1])
    return x.shape[0], 0 if positions == 1 and not batch else channels


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
        stats = x.new_zeros(statistics_shape(x, channels_last, ptr, batch), dtype=accumulation_dtype(x.dtype))
        # y still depends on the parameters, so that their gradients are zeros (as the compiled op's), not None
        unused = sum((p.sum() * 0 for p in (weight, bias) if p is not None), x.new_zeros(()))
        return x + unused.to(x.dtype), stats, stats.clone()
    mean, m2, positions, rows = torch_moments(x, channels_last, ptr)
    pooled = pool(mean, m2, positions) if batch else (mean, m2, positions)  # type: ignore[arg-type]
    a, beta = affine_coefficients(*pooled, weight, bias, t, eps)
    y = x.to(a.dtype) * rows(a) + rows(beta)
    shape = statistics_shape(x, channels_last, ptr, batch)
    if shape[1] == 0:  # point rows keep no statistics
        return y.to(x.dtype), mean.new_zeros(shape), m2.new_zeros(shape)
    return y.to(x.dtype), mean, m2


def torch_segment_offsets(batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    r"""``eqnorm::segment_offsets`` in ATen operations: :math:`\mathrm{ptr}_n = |\{i : \mathrm{batch}_i < n\}|` for
    :math:`n = 0 \ldots` ``num_graphs``. ``batch`` must be sorted with ids below ``num_graphs``; ``_assert_async``
    checks it when the code runs, eager, compiled, exported or scripted, as the compiled op does
    (csrc/segment_offsets.cpp, whose messages these are)."""
    op = "eqnorm::segment_offsets"
    torch._check(
        batch.dim() == 1 and batch.dtype == torch.long,
        lambda: f"{op}: batch must be 1D int64 graph indices, got {batch.dtype} of shape {list(batch.shape)}",
    )
    torch._check(num_graphs >= 0, lambda: f"{op}: num_graphs must be non-negative, got {num_graphs}")
    b = batch.contiguous()  # an expanded single-graph index is not contiguous
    if b.numel() > 0:
        sorted_ids = b.diff().ge(0).all()
        torch._assert_async(sorted_ids, f"{op}: batch must be sorted (nodes grouped by graph); sort the nodes first")
        in_range = b.min().ge(0).logical_and(b.max().lt(num_graphs))
        torch._assert_async(in_range, f"{op}: batch holds a graph id outside 0 .. num_graphs - 1")
    return torch.searchsorted(b, torch.arange(num_graphs + 1, device=b.device))


#: the ops' schemas, exactly as csrc/schemas.cpp and csrc/segment_offsets.cpp define them (tests/test_pure_kernels.py
#: compares them)
SCHEMAS = (
    "field_norm(Tensor x, Tensor? weight, Tensor? bias, Tensor[] index, Tensor? ptr, bool channels_last, "
    "bool batch, float eps) -> (Tensor, Tensor, Tensor)",
    "field_norm_backward(Tensor dy, Tensor x, Tensor mean, Tensor m2, Tensor? weight, Tensor? bias, "
    "Tensor[] index, Tensor? ptr, bool channels_last, bool batch, float eps, bool[3] output_mask) "
    "-> (Tensor?, Tensor?, Tensor?)",
    "segment_offsets(Tensor batch, SymInt num_graphs) -> Tensor",
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
    """Register ``forward`` and its backward as the ops at each dispatch key of ``keys`` (``CompositeImplicitAutograd``
    or ``Autograd<device>``), after defining the schemas unless ``defined`` (the compiled extension defined them);
    :func:`torch_segment_offsets` wherever the extension has no kernel of that op."""
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
        backend = key.removeprefix("Autograd")  # segment_offsets has no autograd: its kernel is the device's own
        if not defined or not torch._C._dispatch_has_kernel_for_dispatch_key("eqnorm::segment_offsets", backend):
            lib.impl("segment_offsets", torch_segment_offsets, backend)
    _LIBRARIES.append(lib)
