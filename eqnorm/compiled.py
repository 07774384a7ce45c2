r"""The layout compiled once into the index arrays that every kernel executor reads.

The coefficient map (:mod:`eqnorm.coefficients`) is a few sums over sparse operators. Each operator is stored with
its entries sorted by the output they feed, with offsets (CSR), so a phase computing some outputs visits only their
entries: :math:`O(K)` work per row. With :math:`C` channels, :math:`L` centering classes, :math:`G` groups,
:math:`F` fields and :math:`T` trivial copies (biases), the operators are, in this order:

=================  =========  =========  ==========================================================================
operator           outputs    sources    value of an entry
=================  =========  =========  ==========================================================================
``class_sum``      L          C          :math:`s_l v_k`: :math:`z = S V^\top m`
``center``         C          L          :math:`v_k`: :math:`\mathrm{cen} = V z`, so :math:`\mathrm{cen} = K m`
``group_mean``     G          C          :math:`1 / D_\gamma`: the group's divisor
``channel_bias``   C          T          the bias basis: :math:`b = B\,\mathrm{bias}`
``bias_grad``      T          C          the same entries transposed: :math:`B^\top`
``field_sum``      F          C          1: the weight gradient per field
=================  =========  =========  ==========================================================================

``indices`` holds, for each of the first four operators, its offsets ``(outputs + 1,)`` and then its sources
``(entries,)``; after them, the *runs* of ``center`` ``(C,)``: from each channel on, how many consecutive channels
read no entry, or exactly one entry each, all of one class (the channels of a group's trivial class, say): the CPU
computes a run as one loop; then the *cuts* ``(Q, 3)``: ``(channel, class, group)`` triples at which the map splits
into parts that read nothing outside themselves (the CPU normalizes a large sample part by part while it stays in
cache); the first is ``(0, 0, 0)`` and the last ``(C, L, G)``. The parameter gradients' operators have tensors of
their own, ``field_sum`` ``(F + 1 + C,)`` and ``bias_grad`` ``(T + 1 + B,)``, offsets then sources: their sizes give
``F`` and ``T``, so the ops check weight and bias against them, and run without either. ``values`` holds the six
operators' values, float64, in the order of the table. Every size follows from the layout tensors' shapes, so the ops
check them in O(1); the values are checked here, once.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

__all__ = ["OPERATORS", "CompiledLayout", "compile_layout"]

OPERATORS = ("class_sum", "center", "group_mean", "channel_bias", "bias_grad", "field_sum")


class CompiledLayout(NamedTuple):
    """``indices``, ``field_sum`` and ``bias_grad`` int64 and ``values`` float64: the sparse operators, runs and cuts
    of :mod:`eqnorm.compiled`."""

    indices: torch.Tensor
    field_sum: torch.Tensor
    bias_grad: torch.Tensor
    values: torch.Tensor


class _Operator(NamedTuple):
    ptr: np.ndarray
    source: np.ndarray
    value: np.ndarray


def _csr(outputs: int, sources: int, target: np.ndarray, source: np.ndarray, value: np.ndarray) -> _Operator:
    """Entries ``(target, source, value)`` sorted by target, then source, with the offsets of each target."""
    if target.size and (target.min() < 0 or target.max() >= outputs):
        raise ValueError(f"compiled layout: an output index lies outside range({outputs}): {target.tolist()}")
    order = np.lexsort((source, target))
    ptr = np.zeros(outputs + 1, dtype=np.int64)
    np.cumsum(np.bincount(target, minlength=outputs), out=ptr[1:])
    op = _Operator(ptr, source[order].astype(np.int64), value[order].astype(np.float64))
    _check(op, outputs, sources)
    return op


def _check(op: _Operator, outputs: int, sources: int) -> None:
    """Offsets from 0 to the entries without decreasing; sources in range and strictly ascending per output."""
    ptr, source = op.ptr, op.source
    if ptr.shape != (outputs + 1,) or ptr[0] != 0 or ptr[-1] != source.shape[0] or (np.diff(ptr) < 0).any():
        raise ValueError(
            f"compiled layout: offsets must run from 0 to the entries without decreasing, got {ptr.tolist()}"
        )
    if source.size and (source.min() < 0 or source.max() >= sources):
        raise ValueError(f"compiled layout: a source index lies outside range({sources}): {source.tolist()}")
    first = np.zeros(source.shape[0], dtype=bool)
    first[ptr[:-1][np.diff(ptr) > 0]] = True
    if ((np.diff(source) <= 0) & ~first[1:]).any():
        raise ValueError(f"compiled layout: sources must ascend within each output, got {source.tolist()}")


def _runs(op: _Operator) -> np.ndarray:
    """For each output, the length of the run of consecutive outputs from it on that read no entry, or one entry
    each of one source (0 for an output that reads several)."""
    count = np.diff(op.ptr)
    source = np.full(count.shape[0], -1, dtype=np.int64)
    source[count == 1] = op.source[op.ptr[:-1][count == 1]]
    runs = np.zeros(count.shape[0], dtype=np.int64)
    for o in range(count.shape[0] - 1, -1, -1):
        if count[o] <= 1:
            same = o + 1 < count.shape[0] and count[o + 1] == count[o] and source[o + 1] == source[o]
            runs[o] = 1 + (runs[o + 1] if same else 0)
    return runs


def _cuts(group_of_channel: np.ndarray, class_channels: _Operator, num_classes: int) -> np.ndarray:
    """The ``(channel, class, group)`` triples at which every group and every class lies wholly on one side."""
    C = group_of_channel.shape[0]
    groups_before = np.maximum.accumulate(group_of_channel)
    groups_after = np.minimum.accumulate(group_of_channel[::-1])[::-1]
    has = np.diff(class_channels.ptr) > 0
    lowest = np.full(num_classes, C, dtype=np.int64)
    highest = np.full(num_classes, -1, dtype=np.int64)
    lowest[has] = class_channels.source[class_channels.ptr[:-1][has]]
    highest[has] = class_channels.source[class_channels.ptr[1:][has] - 1]
    cuts = [(0, 0, 0)]
    for c in range(1, C):
        if groups_before[c - 1] >= groups_after[c]:
            continue
        below = int((highest < c).sum())  # classes wholly before channel c must come first, the rest wholly after
        if (highest[:below] < c).all() and (lowest[below:] >= c).all():
            cuts.append((c, below, int(groups_before[c - 1]) + 1))
    cuts.append((C, num_classes, int(group_of_channel.max()) + 1 if C else 0))
    return np.asarray(cuts, dtype=np.int64)


def compile_layout(
    field_of_channel: np.ndarray,
    group_of_channel: np.ndarray,
    group_divisor: np.ndarray,
    center: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    bias: tuple[np.ndarray, np.ndarray, np.ndarray],
    num_fields: int,
    num_trivial: int,
) -> CompiledLayout:
    r"""Compile the layout's entry lists into :class:`CompiledLayout`.

    ``center`` is ``(channel, class, value, class_scale)``: :math:`K = V S V^\top` with :math:`V` holding ``value`` at
    ``(channel, class)``; ``bias`` is ``(channel, index, value)``: the bias basis :math:`B`.
    """
    C, G = field_of_channel.shape[0], group_divisor.shape[0]
    channel, cls, value, scale = center
    L = scale.shape[0]
    bias_channel, bias_index, bias_value = bias
    channels = np.arange(C)
    class_sum = _csr(L, C, cls, channel, value * scale[cls])
    operators = (
        class_sum,
        _csr(C, L, channel, cls, value),
        _csr(G, C, group_of_channel, channels, 1.0 / group_divisor[group_of_channel]),
        _csr(C, num_trivial, bias_channel, bias_index, bias_value),
        _csr(num_trivial, C, bias_index, bias_channel, bias_value),
        _csr(num_fields, C, field_of_channel, channels, np.ones(C)),
    )
    cuts = _cuts(group_of_channel, class_sum, L)
    runs = _runs(operators[1])
    index = np.concatenate([a for op in operators[:4] for a in (op.ptr, op.source)] + [runs, cuts.reshape(-1)])
    bias_grad, field_sum = (torch.from_numpy(np.concatenate([op.ptr, op.source])) for op in operators[4:])
    values = np.concatenate([op.value for op in operators])
    return CompiledLayout(torch.from_numpy(index), field_sum, bias_grad, torch.from_numpy(values))
