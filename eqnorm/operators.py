"""The operators of a :class:`~eqnorm.FieldLayout`, built once from its fields: the dense matrices
(:class:`DenseOperators`) and the small index tensors the op takes (:class:`IndexTensors`)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from .compiled import compile_layout

if TYPE_CHECKING:
    from .layout import FieldLayout

__all__ = ["DenseOperators", "IndexTensors", "build_index", "dense_operators", "tensors_on"]


class DenseOperators(NamedTuple):
    r"""The dense operators of a :class:`FieldLayout`, as tensors of one dtype and device.

    With ``C`` channels, ``L`` centering classes, ``G`` groups and ``T`` trivial copies:

    - ``center_in`` ``(C, L)`` and ``center_out`` ``(L, C)``: :math:`\mathrm{cen} = (m\,A)\,B`.
    - ``group_member`` ``(C, G)``: one-hot channel-to-group matrix; ``group_size`` ``(G,)``: channels per group.
    - ``group_of_channel`` ``(C,)`` and ``field_of_channel`` ``(C,)``: integer indices.
    - ``channels_by_group`` ``(C,)`` and ``group_start`` ``(G + 1,)``: the channels of group ``g`` are
      ``channels_by_group[group_start[g]:group_start[g + 1]]``, in channel order.
    - ``bias_basis`` ``(C, T)``: the trivial basis vectors that carry the bias.
    """

    center_in: torch.Tensor
    center_out: torch.Tensor
    group_member: torch.Tensor
    group_size: torch.Tensor
    group_of_channel: torch.Tensor
    field_of_channel: torch.Tensor
    bias_basis: torch.Tensor
    channels_by_group: torch.Tensor
    group_start: torch.Tensor

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> DenseOperators:
        """Cast the floating operators to ``dtype`` and move everything to ``device``."""
        return DenseOperators(*(t.to(device=device, dtype=dtype if t.is_floating_point() else None) for t in self))


class IndexTensors(NamedTuple):
    r"""The layout as ``torch.ops.eqnorm.field_norm`` takes it: fourteen small tensors, sparse where the operators are.

    With ``C`` channels, ``G`` groups, ``L`` centering coordinates (one per irrep coordinate of a (group, irrep type)
    class), ``K`` basis entries and ``B`` bias entries:

    - ``field_of_channel``, ``group_of_channel`` ``(C,)`` int64; ``group_size`` ``(G,)`` float: the divisor of the
      group's sum of squares per position, :math:`D_\gamma` channels (or :math:`F_\gamma` fields when the layout's
      ``normalization`` is ``"norm"``).
    - ``center_channel``, ``center_class`` ``(K,)`` int64 and ``center_value`` ``(K,)`` float: the nonzero entries
      :math:`v_k` of the classes' orthonormal basis vectors; ``class_scale`` ``(L,)``: one over the copies of a class.
      Then :math:`z_l = s_l \sum_{k:\,l_k = l} v_k m_{c_k}` and :math:`\mathrm{cen}_c = \sum_{k:\,c_k = c} v_k z_{l_k}`,
      i.e. :math:`\mathrm{cen} = K m` with the symmetric :math:`K = V S V^\top`.
    - ``bias_channel``, ``bias_index`` ``(B,)`` int64 and ``bias_value`` ``(B,)`` float:
      :math:`b_c = \sum_{j:\,c_j = c} v_j\,\mathrm{bias}_{t_j}`.

    - ``compiled_index``, ``compiled_field_sum``, ``compiled_bias_grad`` int64 and ``compiled_value`` float64: the
      same operators compiled for the kernels, their entries sorted by the output they feed (:mod:`eqnorm.compiled`);
      the sizes of the second and third give the numbers of fields ``F`` and of trivial copies ``T``. The entry lists
      above serve the differentiable ATen form.

    Float entries are float64; the ops read them in the accumulation dtype of the input.
    """

    field_of_channel: torch.Tensor
    group_of_channel: torch.Tensor
    group_size: torch.Tensor
    center_channel: torch.Tensor
    center_class: torch.Tensor
    center_value: torch.Tensor
    class_scale: torch.Tensor
    bias_channel: torch.Tensor
    bias_index: torch.Tensor
    bias_value: torch.Tensor
    compiled_index: torch.Tensor
    compiled_field_sum: torch.Tensor
    compiled_bias_grad: torch.Tensor
    compiled_value: torch.Tensor


def tensors_on(tensors: IndexTensors, device: torch.device, cache: dict[torch.device, IndexTensors]) -> IndexTensors:
    """``tensors`` (on the CPU) on ``device``, copied once per device into ``cache``; never a traced copy."""
    if device.type == "cpu":
        return tensors
    if device in cache:
        return cache[device]
    moved = IndexTensors(*(t.to(device) for t in tensors))
    from torch._subclasses.fake_tensor import is_fake

    if not torch.compiler.is_compiling() and not is_fake(moved.group_size):
        cache[device] = moved
    return moved


def dense_operators(self: FieldLayout) -> DenseOperators:
    C, G = self.num_channels, self.num_groups
    field_of_channel = np.repeat(np.arange(self.num_fields), self.field_sizes)
    center_in, center_out, bias_basis = _centering_and_bias(self)
    if self.channel_order is not None:  # index every channel-indexed operator by tensor channel instead
        tensor_to_field = np.argsort(self.channel_order)
        field_of_channel, center_in = field_of_channel[tensor_to_field], center_in[tensor_to_field]
        center_out, bias_basis = center_out[:, tensor_to_field], bias_basis[tensor_to_field]
    group_of_channel = np.asarray(self.groups)[field_of_channel]
    member = np.zeros((C, G))
    member[np.arange(C), group_of_channel] = 1.0
    by_group = np.argsort(group_of_channel, kind="stable")
    start = np.concatenate([[0], np.cumsum(member.sum(axis=0))]).astype(np.int64)
    arrays = (
        center_in,
        center_out,
        member,
        member.sum(axis=0),
        group_of_channel,
        field_of_channel,
        bias_basis,
        by_group,
        start,
    )
    # contiguous: the fused CUDA kernels index them as dense row-major arrays
    ops = (torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)
    return DenseOperators(*(t.long() if not t.is_floating_point() else t for t in ops))


def build_index(self: FieldLayout) -> IndexTensors:
    """The dense operators' nonzeros: ``center_out`` holds the basis entries, ``center_in`` the same scaled by
    one over the copies of each class."""
    ops = self._float64
    basis, spread = ops.center_out.numpy().T, ops.center_in.numpy()  # both (C, L)
    channel, cls = np.nonzero(basis)
    scale = np.zeros(basis.shape[1])
    scale[cls] = spread[channel, cls] / basis[channel, cls]
    bias_channel, bias_index = np.nonzero(ops.bias_basis.numpy())
    divisor = _variance_divisor(self, ops.group_size)
    compiled = compile_layout(
        ops.field_of_channel.numpy(),
        ops.group_of_channel.numpy(),
        divisor.numpy(),
        (channel, cls, basis[channel, cls], scale),
        (bias_channel, bias_index, ops.bias_basis.numpy()[bias_channel, bias_index]),
        self.num_fields,
        self.num_trivial,
    )
    return IndexTensors(
        ops.field_of_channel,
        ops.group_of_channel,
        divisor,
        torch.from_numpy(np.ascontiguousarray(channel)).long(),
        torch.from_numpy(np.ascontiguousarray(cls)).long(),
        torch.from_numpy(basis[channel, cls].copy()),
        torch.from_numpy(scale),
        torch.from_numpy(np.ascontiguousarray(bias_channel)).long(),
        torch.from_numpy(np.ascontiguousarray(bias_index)).long(),
        ops.bias_basis[bias_channel, bias_index].contiguous(),
        *compiled,
    )


def _variance_divisor(self: FieldLayout, channels_per_group: torch.Tensor) -> torch.Tensor:
    """:math:`D_\\gamma` (channels) or, with ``normalization="norm"``, :math:`F_\\gamma` (fields) per group."""
    if self.normalization == "component":
        return channels_per_group
    return torch.bincount(torch.tensor(self.groups), minlength=self.num_groups).double()


def _components(self: FieldLayout) -> list[tuple[int, Hashable, np.ndarray]]:
    """Every irrep copy as ``(field, irrep type, (C, dim) basis columns)``, trivial columns summing to >= 0."""
    out = []
    offset = 0
    for i, (irreps, q) in enumerate(zip(self.field_irreps, self.bases, strict=True)):
        start = 0
        for key in irreps:
            dim = self.irrep_dims[key]
            cols = np.zeros((self.num_channels, dim))
            cols[offset : offset + q.shape[0]] = q[:, start : start + dim]
            # A trivial coordinate is defined up to sign; fixing it makes a group mixing different fields average
            # them with the same orientation (the channel mean for permutation fields).
            if key in self.trivial and cols.sum() < 0:
                cols = -cols
            out.append((i, key, cols))
            start += dim
        offset += q.shape[0]
    return out


def _centering_and_bias(self: FieldLayout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``center_in`` ``(C, L)``, ``center_out`` ``(L, C)`` and ``bias_basis`` ``(C, T)``.

    A centering class is one (group, irrep type); its copies' coordinates are averaged (``center_in``) and the
    mean is put back on every copy (``center_out``).
    """
    classes: dict[tuple[int, Hashable], list[np.ndarray]] = {}
    bias = []
    for i, key, cols in _components(self):
        if key in self.trivial:
            bias.append(cols[:, 0])
        if self.centering == "all" or (self.centering == "trivial" and key in self.trivial):
            classes.setdefault((self.groups[i], key), []).append(cols)
    C = self.num_channels
    sums = [np.sum(cols, axis=0) for cols in classes.values()]
    counts = [len(cols) for cols in classes.values()]
    center_in = np.concatenate([s / n for s, n in zip(sums, counts, strict=True)] + [np.zeros((C, 0))], axis=1)
    center_out = center_in.T * np.repeat(counts, [s.shape[1] for s in sums])[:, None]
    bias_basis = np.stack(bias, axis=1) if bias else np.zeros((C, 0))
    return center_in, center_out, bias_basis
