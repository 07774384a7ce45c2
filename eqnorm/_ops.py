r"""The four passes over the feature tensor, and which implementation runs them.

Every pass reduces or maps along the positions of each (sample, channel) row of a contiguous tensor laid out
channels-first ``(N, C, P)``, channels-last ``(N, P, C)``, or ragged ``(positions, C)`` with offsets ``ptr``
(``N + 1`` of them: sample ``n`` owns positions ``ptr[n]:ptr[n+1]``, as graph nodes sorted by graph):

- ``moments(x)``: :math:`m = \frac1P\sum_p x_p`, :math:`M_2 = \sum_p (x_p - m)^2`;
- ``affine(x, a, beta)``: :math:`y = a x + \beta`;
- ``moments_backward(dy, x)``: :math:`\sum_p dy_p` and :math:`\sum_p dy_p x_p`;
- ``affine_backward(dy, x, a, u, v)``: :math:`dx = a\,dy + u\,x + v`.

Statistics and per-row coefficients are float32 for float16/bfloat16/float32 inputs and float64 for float64. The
compiled extension ``eqnorm._C`` registers these as ``torch.ops.eqnorm.*`` custom ops (C++ on the CPU, CUDA on GPUs);
where it is missing, or ``EQNORM_BACKEND=torch`` is set, the pure-PyTorch functions below run instead.
"""

from __future__ import annotations

import os

import torch

from .coefficients import affine_coefficients, affine_coefficients_backward
from .layout import LayoutOperators

__all__ = [
    "accumulation_dtype",
    "affine",
    "affine_backward",
    "coefficients",
    "coefficients_backward",
    "kernel_backend",
    "moments",
    "moments_backward",
    "torch_affine",
    "torch_affine_backward",
    "torch_moments",
    "torch_moments_backward",
]

try:
    from . import _C  # noqa: F401  (importing it registers torch.ops.eqnorm.*)

    _EXTENSION = True
except ImportError:
    _EXTENSION = False


def _compiled_for(dispatch_key: str) -> bool:
    return _EXTENSION and torch._C._dispatch_has_kernel_for_dispatch_key("eqnorm::moments", dispatch_key)


_FORCE_TORCH = os.environ.get("EQNORM_BACKEND") == "torch"
#: device type -> name of the compiled implementation available for it
_COMPILED = {
    device: name
    for device, key, name in (("cpu", "CPU", "cpp"), ("cuda", "CUDA", "cuda"))
    if not _FORCE_TORCH and _compiled_for(key)
}


def kernel_backend(device: torch.device | str = "cpu") -> str:
    """Which implementation of the four passes runs on ``device``: ``"cpp"``, ``"cuda"`` or ``"torch"``."""
    return _COMPILED.get(torch.device(device).type, "torch")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 for every other floating dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------------------------------------------------
# pure PyTorch


def _per_position(t: torch.Tensor, channels_last: bool, ptr: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """An ``(N, C)`` row coefficient broadcast against ``x``'s layout."""
    if ptr is not None:
        counts = ptr.diff()
        return t.repeat_interleave(counts, dim=0, output_size=x.shape[0])
    return t.unsqueeze(1) if channels_last else t.unsqueeze(2)


def _row_sum(t: torch.Tensor, channels_last: bool, ptr: torch.Tensor | None) -> torch.Tensor:
    if ptr is None:
        return t.sum(1 if channels_last else 2)
    seg = torch.arange(ptr.numel() - 1, device=t.device).repeat_interleave(ptr.diff(), output_size=t.shape[0])
    return t.new_zeros(ptr.numel() - 1, t.shape[1]).index_add_(0, seg, t)


def _positions(x: torch.Tensor, channels_last: bool, ptr: torch.Tensor | None) -> torch.Tensor | int:
    if ptr is not None:
        return ptr.diff().unsqueeze(1)
    return x.shape[1 if channels_last else 2]


def torch_moments(
    x: torch.Tensor, channels_last: bool, ptr: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean and sum of squared deviations (two passes, never sum-of-squares minus square)."""
    xf = x.to(accumulation_dtype(x.dtype))
    positions = _positions(x, channels_last, ptr)
    count = positions.clamp(min=1) if isinstance(positions, torch.Tensor) else max(positions, 1)
    mean = _row_sum(xf, channels_last, ptr) / count
    m2 = _row_sum((xf - _per_position(mean, channels_last, ptr, x)).square(), channels_last, ptr)
    return mean, m2


def torch_affine(
    x: torch.Tensor, a: torch.Tensor, beta: torch.Tensor, channels_last: bool, ptr: torch.Tensor | None = None
) -> torch.Tensor:
    """``y = a * x + beta`` per row, computed in the coefficients' dtype, returned in ``x``'s dtype."""
    y = x.to(a.dtype) * _per_position(a, channels_last, ptr, x) + _per_position(beta, channels_last, ptr, x)
    return y.to(x.dtype)


def torch_moments_backward(
    dy: torch.Tensor, x: torch.Tensor, channels_last: bool, ptr: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``sum_p dy`` and ``sum_p dy * x``."""
    acc = accumulation_dtype(x.dtype)
    dyf = dy.to(acc)
    return _row_sum(dyf, channels_last, ptr), _row_sum(dyf * x.to(acc), channels_last, ptr)


def torch_affine_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    a: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    channels_last: bool,
    ptr: torch.Tensor | None = None,
) -> torch.Tensor:
    """``dx = a * dy + u * x + v`` per row, returned in ``x``'s dtype."""

    def row(t: torch.Tensor) -> torch.Tensor:
        return _per_position(t, channels_last, ptr, x)

    dx = dy.to(a.dtype) * row(a) + x.to(a.dtype) * row(u) + row(v)
    return dx.to(x.dtype)


# ---------------------------------------------------------------------------------------------------------------------
# dispatch: the compiled op where there is one for the tensor's device, else pure PyTorch


def _single_position(x: torch.Tensor, channels_last: bool, ptr: torch.Tensor | None) -> bool:
    """Point features: one position per row, so the moments are the row itself and zero."""
    return ptr is None and x.shape[1 if channels_last else 2] == 1


def moments(x: torch.Tensor, channels_last: bool, ptr: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    if _single_position(x, channels_last, ptr):
        mean = x.reshape(x.shape[0], -1).to(accumulation_dtype(x.dtype), copy=True)
        return mean, torch.zeros_like(mean)
    if x.device.type in _COMPILED:
        return torch.ops.eqnorm.moments(x, channels_last, ptr)
    return torch_moments(x, channels_last, ptr)


def affine(
    x: torch.Tensor, a: torch.Tensor, beta: torch.Tensor, channels_last: bool, ptr: torch.Tensor | None = None
) -> torch.Tensor:
    if x.device.type in _COMPILED:
        return torch.ops.eqnorm.affine(x, a, beta, channels_last, ptr)
    return torch_affine(x, a, beta, channels_last, ptr)


def moments_backward(
    dy: torch.Tensor, x: torch.Tensor, channels_last: bool, ptr: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    if _single_position(x, channels_last, ptr):
        acc = accumulation_dtype(x.dtype)
        dyf = dy.reshape(x.shape[0], -1).to(acc, copy=True)
        return dyf, dyf * x.reshape(x.shape[0], -1).to(acc)
    if x.device.type in _COMPILED:
        return torch.ops.eqnorm.moments_backward(dy, x, channels_last, ptr)
    return torch_moments_backward(dy, x, channels_last, ptr)


def affine_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    a: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    channels_last: bool,
    ptr: torch.Tensor | None = None,
) -> torch.Tensor:
    if x.device.type in _COMPILED:
        return torch.ops.eqnorm.affine_backward(dy, x, a, u, v, channels_last, ptr)
    return torch_affine_backward(dy, x, a, u, v, channels_last, ptr)


#: the fused CUDA coefficient kernel keeps a sample's (C + L + 2G) statistics in one block's shared memory
_FUSED_SHARED_BYTES = 48 * 1024


def _fused(mean: torch.Tensor, ops: LayoutOperators) -> bool:
    if mean.device.type not in _COMPILED:
        return False
    if mean.device.type != "cuda":
        return True
    c, classes = ops.center_in.shape
    return (classes + 2 * c + 2 * ops.group_size.shape[0]) * mean.element_size() <= _FUSED_SHARED_BYTES


def _centering(ops: LayoutOperators) -> tuple[torch.Tensor, ...]:
    """The operator arguments of the fused coefficient ops, in schema order."""
    return (ops.center_in, ops.center_out, ops.group_of_channel, ops.group_size, ops.channels_by_group, ops.group_start)


def _op_positions(positions: int | torch.Tensor) -> tuple[float, torch.Tensor | None]:
    if isinstance(positions, torch.Tensor):
        return 0.0, positions.reshape(-1)
    return float(positions), None


def coefficients(
    mean: torch.Tensor,
    m2: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    ops: LayoutOperators,
    positions: int | torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`eqnorm.coefficients.affine_coefficients`, fused into one compiled op where the extension is built."""
    if _fused(mean, ops):
        p, counts = _op_positions(positions)
        return torch.ops.eqnorm.coefficients(mean, m2, weight, bias, *_centering(ops), p, counts, eps)
    return affine_coefficients(mean, m2, weight, bias, ops, positions, eps)


def coefficients_backward(
    sum_dy_x: torch.Tensor,
    sum_dy: torch.Tensor,
    mean: torch.Tensor,
    m2: torch.Tensor,
    weight: torch.Tensor,
    ops: LayoutOperators,
    positions: int | torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(a, u, v, grad_weight, grad_bias)``: what ``affine_backward`` needs (``dx = a dy + u x + v``) and the
    parameter gradients, from the backward reductions; fused into one compiled op where the extension is built."""
    if _fused(mean, ops):
        p, counts = _op_positions(positions)
        a, u, v, grad_weight = torch.ops.eqnorm.coefficients_backward(
            sum_dy_x,
            sum_dy,
            mean,
            m2,
            weight,
            *_centering(ops),
            p,
            counts,
            eps,
        )
        return a, u, v, grad_weight.sum(0), sum_dy.sum(0)
    a, grad_mean, grad_m2, grad_weight, grad_bias = affine_coefficients_backward(
        sum_dy_x, sum_dy, mean, m2, weight, ops, positions, eps
    )
    u = 2 * grad_m2
    return a, u, grad_mean / positions - u * mean, grad_weight, grad_bias


# ---------------------------------------------------------------------------------------------------------------------
# shapes for torch.compile and other tracing: fake tensors of the right shape and dtype

if _EXTENSION:

    def _stat_shape(x: torch.Tensor, channels_last: bool, ptr: torch.Tensor | None) -> tuple[int, int]:
        if ptr is not None:
            return ptr.shape[0] - 1, x.shape[1]
        return x.shape[0], x.shape[2 if channels_last else 1]

    @torch.library.register_fake("eqnorm::moments")
    def _moments_fake(
        x: torch.Tensor, channels_last: bool, ptr: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        shape = _stat_shape(x, channels_last, ptr)
        acc = accumulation_dtype(x.dtype)
        return x.new_empty(shape, dtype=acc), x.new_empty(shape, dtype=acc)

    @torch.library.register_fake("eqnorm::moments_backward")
    def _moments_backward_fake(
        dy: torch.Tensor, x: torch.Tensor, channels_last: bool, ptr: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _moments_fake(x, channels_last, ptr)

    @torch.library.register_fake("eqnorm::affine")
    def _affine_fake(
        x: torch.Tensor, a: torch.Tensor, beta: torch.Tensor, channels_last: bool, ptr: torch.Tensor | None = None
    ) -> torch.Tensor:
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("eqnorm::coefficients")
    def _coefficients_fake(mean: torch.Tensor, m2: torch.Tensor, *args: object) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.empty_like(mean), torch.empty_like(mean)

    @torch.library.register_fake("eqnorm::coefficients_backward")
    def _coefficients_backward_fake(
        grad_a: torch.Tensor, grad_beta: torch.Tensor, mean: torch.Tensor, *args: object
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(torch.empty_like(mean) for _ in range(4))  # type: ignore[return-value]

    @torch.library.register_fake("eqnorm::affine_backward")
    def _affine_backward_fake(
        dy: torch.Tensor,
        x: torch.Tensor,
        a: torch.Tensor,
        u: torch.Tensor,
        v: torch.Tensor,
        channels_last: bool,
        ptr: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return torch.empty_like(x, memory_format=torch.contiguous_format)
