"""How the channels of a feature tensor split into fields, irreducible components and normalization groups.

The layout is the only place that reads representation objects. It turns a field type into a handful of small
dense matrices that the functional code applies to per-sample channel statistics.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from .compiled import compile_layout

__all__ = [
    "CENTERINGS",
    "NORMALIZATIONS",
    "FieldLayout",
    "LayoutOperators",
    "LayoutTensors",
    "contiguous_groups",
    "default_num_groups",
]

CENTERINGS = ("trivial", "all", "none")
NORMALIZATIONS = ("component", "norm")

#: Largest ``max |Q Q^T - I|`` accepted for a change of basis; escnn's bases are orthogonal to ~1e-15.
ORTHOGONALITY_TOLERANCE = 1e-8


class LayoutOperators(NamedTuple):
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

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> LayoutOperators:
        """Cast the floating operators to ``dtype`` and move everything to ``device``."""
        return LayoutOperators(*(t.to(device=device, dtype=dtype if t.is_floating_point() else None) for t in self))


class LayoutTensors(NamedTuple):
    r"""The layout as ``torch.ops.eqnorm.field_norm`` takes it: twelve small tensors, sparse where the operators are.

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

    - ``compiled_index`` int64 and ``compiled_value`` float64: the same operators compiled for the kernels, their
      entries sorted by the output they feed (:mod:`eqnorm.compiled`). The entry lists above serve the differentiable
      ATen form.

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
    compiled_value: torch.Tensor


def default_num_groups(field_sizes: Sequence[int]) -> int:
    r"""The number of groups ``num_groups=None`` picks: whole fields, about 16 channels per group, at most 32 groups.

    Wu & He found group normalization flat between about 8 and 32 groups, and 16 channels per group a good choice;
    here a group is made of whole fields, so this is the largest divisor of the number of fields :math:`F` not above
    :math:`\min(32, \operatorname{round}(C / 16))` (at least 1), with :math:`C` the channels.

    >>> default_num_groups([8] * 16)  # 16 C8 regular fields, 128 channels: 8 groups of 2 fields (16 channels)
    8
    >>> default_num_groups([3] * 10)  # 10 vectors, 30 channels: 2 groups of 5 (15 channels)
    2
    """
    target = max(1, min(32, round(sum(field_sizes) / 16)))
    return max(d for d in range(1, target + 1) if len(field_sizes) % d == 0)


def check_num_groups(num_groups: Any) -> None:
    """``ValueError`` unless ``num_groups`` is None or a positive integer."""
    if num_groups is None:
        return
    if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)) or num_groups <= 0:
        raise ValueError(
            f"num_groups must be a positive integer (a number of groups of whole fields), got {num_groups!r}"
        )


def contiguous_groups(num_fields: int, num_groups: int) -> list[int]:
    """Group index of each field when ``num_groups`` groups take consecutive, equally many fields.

    >>> contiguous_groups(6, 3)
    [0, 0, 1, 1, 2, 2]
    """
    check_num_groups(num_groups)
    if num_groups is None:
        raise ValueError("contiguous groups need num_groups")
    if num_fields % num_groups:
        raise ValueError(
            f"num_groups={num_groups} does not divide the {num_fields} fields; groups are made of whole fields, "
            "so choose a divisor of the number of fields or pass group_by='representation' or a list of group ids"
        )
    per_group = num_fields // num_groups
    return [i // per_group for i in range(num_fields)]


def _dense_group_ids(groups: Sequence[int], num_fields: int) -> list[int]:
    """Relabel arbitrary integer group ids to ``0..G-1`` in order of first appearance."""
    ids = list(groups)
    if len(ids) != num_fields:
        raise ValueError(f"group_by lists {len(ids)} group ids but the layout has {num_fields} fields")
    if not all(isinstance(g, (int, np.integer)) and not isinstance(g, bool) for g in ids):
        raise ValueError(f"group ids must be integers, got {ids!r}")
    relabel: dict[int, int] = {}
    return [relabel.setdefault(int(g), len(relabel)) for g in ids]


class FieldLayout:
    r"""Fields, their irreducible components and their normalization groups, precomputed once.

    Channel ``c`` of the input belongs to field ``i``, whose representation is
    :math:`\rho_i(g) = Q_i \left(\bigoplus_k \psi_k(g)\right) Q_i^\top` with orthogonal :math:`Q_i`. Every field belongs
    to exactly one group :math:`\gamma`. The layout precomputes the linear centering operator
    :math:`\mathrm{cen} = K m` (docs/theory.rst):

    - ``"trivial"``: :math:`K` averages, within each group, the coordinates of :math:`Q_i^\top m_i` on trivial irreps
      and maps the mean back with :math:`Q_i`;
    - ``"all"``: the same for every irrep type, coordinate by coordinate (copies of one irrep share one basis);
    - ``"none"``: :math:`K = 0`.

    :math:`K` commutes with :math:`\bigoplus_i \rho_i(g)`, which is what makes the normalization equivariant.

    Parameters
    ----------
    field_irreps
        For each field, the irrep type (any hashable id) of each irreducible component, in the order of the irrep basis.
    irrep_dims
        Dimension of each irrep type.
    trivial
        The irrep types that are trivial (invariant): the only ones centered by ``"trivial"`` and given a bias.
    groups
        Group id of each field (any integers; relabelled ``0..G-1`` in order of first appearance).
    change_of_basis
        For each field, its orthogonal :math:`Q_i` (``None`` for the identity). Non-orthogonal matrices are refused.
    channel_order
        Where the fields' channels sit in the tensor when they are not consecutive: tensor channel
        ``channel_order[c]`` holds channel ``c`` of the fields laid end to end (e.g. cuEquivariance's ``ir_mul``).
    centering
        ``"trivial"``, ``"all"`` or ``"none"``.
    normalization
        ``"component"``: :math:`\sigma^2` is the mean square per channel (divided by :math:`D_\gamma`, the group's
        channels); ``"norm"``: per field (divided by :math:`F_\gamma`, the group's fields), as e3nn's
        ``BatchNorm(normalization="norm")``, so a field of dimension :math:`d` has :math:`d` times the variance.
    field_names
        Optional names used in error messages.

    Examples
    --------
    Two 2-dimensional vector fields and one scalar in one group:

    >>> layout = FieldLayout([["vec"], ["vec"], ["s"]], {"vec": 2, "s": 1}, trivial={"s"}, groups=[0, 0, 0])
    >>> layout.num_channels, layout.num_fields, layout.num_groups, layout.num_trivial
    (5, 3, 1, 1)
    """

    def __init__(
        self,
        field_irreps: Sequence[Sequence[Hashable]],
        irrep_dims: Mapping[Hashable, int],
        trivial: Collection[Hashable],
        groups: Sequence[int],
        change_of_basis: Sequence[Any | None] | None = None,
        centering: str = "trivial",
        field_names: Sequence[str] | None = None,
        channel_order: Sequence[int] | None = None,
        normalization: str = "component",
    ) -> None:
        if centering not in CENTERINGS:
            raise ValueError(f"centering must be one of {CENTERINGS}, got {centering!r}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        self.normalization = normalization
        if len(field_irreps) == 0:
            raise ValueError("a layout needs at least one field")
        self.centering = centering
        self.field_irreps = [tuple(irreps) for irreps in field_irreps]
        self.field_names = (
            list(field_names) if field_names is not None else [f"field {i}" for i in range(self.num_fields)]
        )
        for name, irreps in zip(self.field_names, self.field_irreps, strict=False):
            if not irreps:
                raise ValueError(f"{name} has no irreducible component; every field needs at least one")
            for key in irreps:
                if key not in irrep_dims:
                    raise ValueError(f"irrep {key!r} has no entry in irrep_dims")
        for key, dim in irrep_dims.items():
            if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
                raise ValueError(f"irrep {key!r} must have a positive integer dimension, got {dim!r}")
        self.irrep_dims = dict(irrep_dims)
        self.trivial = frozenset(trivial)
        for key in self.trivial:
            if key in self.irrep_dims and self.irrep_dims[key] != 1:
                raise ValueError(f"trivial irrep {key!r} must have dimension 1, got {self.irrep_dims[key]}")
        self.field_sizes = [sum(self.irrep_dims[k] for k in irreps) for irreps in self.field_irreps]
        self.num_channels = sum(self.field_sizes)
        self.groups = _dense_group_ids(groups, self.num_fields)
        self.bases = self._orthogonal_bases(change_of_basis)
        self.channel_order = None if channel_order is None else np.asarray(channel_order, dtype=np.int64)
        if self.channel_order is not None and sorted(self.channel_order.tolist()) != list(range(self.num_channels)):
            raise ValueError(f"channel_order must be a permutation of range({self.num_channels})")
        self._float64 = self._build_operators()
        self._operators: dict[tuple[torch.dtype, torch.device], LayoutOperators] = {}
        # built eagerly, on the CPU: modules register them as buffers, and nothing traced ever fills a cache
        self.tensors = self._sparse_tensors()
        self._device_tensors: dict[torch.device, LayoutTensors] = {}

    @property
    def num_fields(self) -> int:
        return len(self.field_irreps)

    @property
    def num_groups(self) -> int:
        return max(self.groups) + 1

    @property
    def num_trivial(self) -> int:
        """Number of trivial irrep copies, i.e. of bias parameters."""
        return sum(key in self.trivial for irreps in self.field_irreps for key in irreps)

    def _orthogonal_bases(self, change_of_basis: Sequence[Any | None] | None) -> list[np.ndarray]:
        if change_of_basis is None:
            change_of_basis = [None] * self.num_fields
        if len(change_of_basis) != self.num_fields:
            raise ValueError(f"{len(change_of_basis)} change-of-basis matrices given for {self.num_fields} fields")
        bases = []
        for name, size, q in zip(self.field_names, self.field_sizes, change_of_basis, strict=True):
            q = np.eye(size) if q is None else np.asarray(q, dtype=np.float64)
            if q.shape != (size, size):
                raise ValueError(f"{name}: change of basis has shape {q.shape}, expected {(size, size)}")
            err = float(np.abs(q @ q.T - np.eye(size)).max())
            if not err <= ORTHOGONALITY_TOLERANCE:
                raise ValueError(
                    f"{name}: its change of basis is not orthogonal (max |Q Q^T - I| = {err:.2e}); eqnorm needs an "
                    "orthogonal representation so that the norm of a field is invariant"
                )
            bases.append(q)
        return bases

    @classmethod
    def from_field_type(
        cls,
        field_type: Any,
        num_groups: int | None = None,
        group_by: str | Sequence[int] = "contiguous",
        centering: str = "trivial",
        normalization: str = "component",
    ) -> FieldLayout:
        """Layout of an escnn ``FieldType``: one field per representation, components from ``rep.irreps``.

        ``group_by`` is ``"contiguous"`` (``num_groups`` groups of consecutive fields; ``None``:
        :func:`default_num_groups`), ``"representation"`` (one group per distinct representation), ``"field"`` (one
        field per group) or a sequence of group ids, one per field.
        """
        reps = getattr(field_type, "representations", None)
        if reps is None:
            raise TypeError(f"expected an escnn FieldType, got {type(field_type).__name__}")
        group = field_type.fibergroup
        irreps = [list(rep.irreps) for rep in reps]
        dims = {key: group.irrep(*key).size for field in irreps for key in field}
        trivial = {key for key in dims if group.irrep(*key).is_trivial()}
        names = [f"field {i} ({rep.name})" for i, rep in enumerate(reps)]
        check_num_groups(num_groups)
        if group_by == "representation":
            if num_groups is not None:
                raise ValueError("group_by='representation' sets the groups itself; leave num_groups as None")
            groups = [rep.name for rep in reps]
            ids: list[int] = [groups.index(name) for name in groups]
        else:
            ids = resolve_groups([rep.size for rep in reps], num_groups, group_by)
        bases = [rep.change_of_basis for rep in reps]
        return cls(irreps, dims, trivial, ids, bases, centering, names, normalization=normalization)

    @classmethod
    def from_irreps(
        cls,
        irreps: Any,
        num_groups: int | None = None,
        group_by: str | Sequence[int] = "contiguous",
        centering: str = "trivial",
        layout: str = "mul_ir",
        normalization: str = "component",
    ) -> FieldLayout:
        """Layout of an e3nn ``Irreps``: every irrep copy is a field; only ``0e`` is trivial.

        ``group_by`` is ``"contiguous"``, ``"field"``, ``"irrep"`` (one group per irrep type, i.e. per degree and
        parity) or one group id per copy. ``layout`` is ``"mul_ir"`` (e3nn) or ``"ir_mul"`` (cuEquivariance: the
        copies of a ``mul x ir`` block interleaved component by component).
        """
        try:
            blocks = [(int(mul), int(ir.l), int(ir.p)) for mul, ir in irreps]
        except (TypeError, AttributeError, ValueError):
            raise TypeError(f"expected e3nn Irreps, got {type(irreps).__name__}") from None
        if layout not in ("mul_ir", "ir_mul"):
            raise ValueError(f"layout must be 'mul_ir' or 'ir_mul', got {layout!r}")
        copies = [(l, p) for mul, l, p in blocks for _ in range(mul)]
        if not copies:
            raise ValueError("irreps must hold at least one irrep copy")
        dims: dict[Hashable, int] = {key: 2 * key[0] + 1 for key in copies}
        names = [f"copy {i} ({l}{'e' if p == 1 else 'o'})" for i, (l, p) in enumerate(copies)]
        check_num_groups(num_groups)
        if group_by == "irrep":
            if num_groups is not None:
                raise ValueError("group_by='irrep' sets the groups itself; leave num_groups as None")
            ids = [sorted(set(copies)).index(key) for key in copies]
        else:
            ids = resolve_groups([dims[key] for key in copies], num_groups, group_by)
        order = None
        if layout == "ir_mul":
            order, offset = [], 0
            for mul, l, _ in blocks:
                d = 2 * l + 1
                order += [offset + m * mul + u for u in range(mul) for m in range(d)]
                offset += mul * d
        return cls([[key] for key in copies], dims, {(0, 1)}, ids, None, centering, names, order, normalization)

    @classmethod
    def scalars(cls, num_channels: int, num_groups: int, centering: str = "trivial") -> FieldLayout:
        """``num_channels`` trivial fields in ``num_groups`` contiguous groups: ``torch.nn.GroupNorm``'s layout."""
        return cls([[0]] * num_channels, {0: 1}, {0}, contiguous_groups(num_channels, num_groups), centering=centering)

    def tensors_on(self, device: torch.device | str) -> LayoutTensors:
        """:attr:`tensors` on ``device``, copied once per device (modules hold them as buffers instead)."""
        device = torch.device(device)
        if device.type == "cpu":
            return self.tensors
        if device in self._device_tensors:
            return self._device_tensors[device]
        moved = LayoutTensors(*(t.to(device) for t in self.tensors))
        from torch._subclasses.fake_tensor import is_fake

        if not torch.compiler.is_compiling() and not is_fake(moved.group_size):  # never cache a traced value
            self._device_tensors[device] = moved
        return moved

    def operators(self, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> LayoutOperators:
        """The dense operators of this layout (see :class:`LayoutOperators`), built once per dtype and device."""
        key = (dtype, torch.device(device))
        if key not in self._operators:
            self._operators[key] = self._float64.to(*key)
        return self._operators[key]

    def _sparse_tensors(self) -> LayoutTensors:
        """The dense operators' nonzeros: ``center_out`` holds the basis entries, ``center_in`` the same scaled by
        one over the copies of each class."""
        ops = self._float64
        basis, spread = ops.center_out.numpy().T, ops.center_in.numpy()  # both (C, L)
        channel, cls = np.nonzero(basis)
        scale = np.zeros(basis.shape[1])
        scale[cls] = spread[channel, cls] / basis[channel, cls]
        bias_channel, bias_index = np.nonzero(ops.bias_basis.numpy())
        divisor = self._variance_divisor(ops.group_size)
        compiled = compile_layout(
            ops.field_of_channel.numpy(),
            ops.group_of_channel.numpy(),
            divisor.numpy(),
            (channel, cls, basis[channel, cls], scale),
            (bias_channel, bias_index, ops.bias_basis.numpy()[bias_channel, bias_index]),
            self.num_fields,
            self.num_trivial,
        )
        return LayoutTensors(
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

    def _variance_divisor(self, channels_per_group: torch.Tensor) -> torch.Tensor:
        """:math:`D_\\gamma` (channels) or, with ``normalization="norm"``, :math:`F_\\gamma` (fields) per group."""
        if self.normalization == "component":
            return channels_per_group
        return torch.bincount(torch.tensor(self.groups), minlength=self.num_groups).double()

    def _build_operators(self) -> LayoutOperators:
        C, G = self.num_channels, self.num_groups
        field_of_channel = np.repeat(np.arange(self.num_fields), self.field_sizes)
        center_in, center_out, bias_basis = self._centering_and_bias()
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
        return LayoutOperators(*(t.long() if not t.is_floating_point() else t for t in ops))

    def _components(self) -> list[tuple[int, Hashable, np.ndarray]]:
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

    def _centering_and_bias(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``center_in`` ``(C, L)``, ``center_out`` ``(L, C)`` and ``bias_basis`` ``(C, T)``.

        A centering class is one (group, irrep type); its copies' coordinates are averaged (``center_in``) and the
        mean is put back on every copy (``center_out``).
        """
        classes: dict[tuple[int, Hashable], list[np.ndarray]] = {}
        bias = []
        for i, key, cols in self._components():
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

    def __repr__(self) -> str:
        norm = "" if self.normalization == "component" else f", normalization={self.normalization!r}"
        return (
            f"FieldLayout(channels={self.num_channels}, fields={self.num_fields}, groups={self.num_groups}, "
            f"centering={self.centering!r}{norm})"
        )


def resolve_groups(field_sizes: Sequence[int], num_groups: int | None, group_by: str | Sequence[int]) -> list[int]:
    """Group id of each field for ``group_by`` in ``"contiguous"`` (``num_groups`` None: :func:`default_num_groups`),
    ``"field"`` or an explicit sequence of ids; a ``num_groups`` that contradicts ``group_by`` is refused."""
    check_num_groups(num_groups)
    num_fields = len(field_sizes)
    if isinstance(group_by, str):
        if group_by == "contiguous":
            return contiguous_groups(num_fields, default_num_groups(field_sizes) if num_groups is None else num_groups)
        if group_by == "field":
            if num_groups is not None and num_groups != num_fields:
                raise ValueError(
                    f"group_by='field' makes one group per field ({num_fields} groups) but num_groups={num_groups}; "
                    "leave num_groups as None or use group_by='contiguous'"
                )
            return list(range(num_fields))
        raise ValueError(
            f"group_by must be 'contiguous', 'representation', 'field' or a sequence of group ids, got {group_by!r}"
        )
    ids = _dense_group_ids(group_by, num_fields)
    if num_groups is not None and num_groups != max(ids) + 1:
        raise ValueError(f"num_groups={num_groups} but group_by names {max(ids) + 1} distinct groups")
    return ids
