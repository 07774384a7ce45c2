r"""``convert_norms``: swap the batch norms of an escnn or e3nn model for eqnorm layers over the same fields.

Every source layer is read as the same three things, whatever its own parametrisation:

- a scale per field :math:`w_i` (a scalar multiplying the whole field after normalization),
- a bias vector :math:`\beta \in \mathbb{R}^C` in channel coordinates, on the trivial irreps only,
- for ``norm="batch"``, a running mean vector :math:`\mu \in \mathbb{R}^C` and a running variance per field.

eqnorm's bias is :math:`b = V^\top \beta` with :math:`V` the orthonormal trivial basis vectors (``bias_value``), exact
when :math:`\beta` lies on the trivial irreps; its running centering vector is :math:`K \mu` (the centering operator).
Where a source keeps something eqnorm cannot hold (a scale per irrep that differs within a field, a running variance
per irrep, a variance reduced with ``max``), it is not carried and the :class:`Replacement` says so.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.utils.parametrize

from .coefficients import center
from .layout import FieldLayout, default_num_groups

__all__ = ["NORMS", "Replacement", "convert_norms"]

NORMS = ("group", "layer", "instance", "batch")
TORCH_BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)


@dataclass
class Replacement:
    """One layer ``convert_norms`` replaced: where (``name``, dotted as in ``named_modules``), what by what, what it
    carried over (``"weight"``, ``"bias"``, ``"running_cen"``, ``"running_var"``) and why anything else was not."""

    name: str
    old: str
    new: torch.nn.Module
    carried: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        carried = ", ".join(self.carried) or "nothing"
        notes = "".join(f"; {note}" for note in self.notes)
        return f"{self.name or '<model>'}: {self.old} -> {self.new!r} (carried {carried}{notes})"


@dataclass
class _Source:
    """A source layer read in channel coordinates; ``None`` where it holds no such thing."""

    affine: bool
    eps: float
    momentum: float | None
    track_running_stats: bool
    field_weight: torch.Tensor | None = None
    channel_bias: torch.Tensor | None = None
    channel_mean: torch.Tensor | None = None
    field_var: torch.Tensor | None = None
    notes: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    var_note: str | None = None  # said only where the running variance is carried
    var_changed: list[int] = field(default_factory=list)  # fields whose running variances differ per irrep


def convert_norms(
    model: torch.nn.Module,
    norm: str = "group",
    num_groups: int | None = None,
    *,
    approximate_running_var: bool = False,
    torch_batch_norms: bool = False,
    **options: Any,
) -> tuple[torch.nn.Module, list[Replacement]]:
    r"""Replace, in place, every escnn ``InnerBatchNorm``, ``IIDBatchNorm1d/2d/3d``, ``NormBatchNorm``,
    ``GNormBatchNorm``, ``InducedNormBatchNorm`` and e3nn ``BatchNorm`` in ``model`` by the eqnorm layer over the same
    field type or irreps.

    ``norm`` picks the layer: ``"group"`` (:class:`~eqnorm.FieldGroupNorm`, :class:`~eqnorm.e3nn.IrrepsGroupNorm`
    per node), ``"layer"``, ``"instance"`` (one field or copy per group) or ``"batch"``
    (:class:`~eqnorm.FieldBatchNorm`, :class:`~eqnorm.e3nn.IrrepsBatchNorm`). ``num_groups`` (``None``: whole fields
    of about 16 channels, :func:`eqnorm.layout.default_num_groups`) and ``options`` go to every new layer; ``eps``,
    ``affine``, ``momentum`` and e3nn's ``normalization`` and ``include_bias`` follow the old layer unless given.

    The affine parameters are carried over where the parametrisation is the same (one scale per field, a bias on the
    trivial irreps), and with ``"batch"`` the running statistics: the old layer's bias :math:`\beta` and running mean
    :math:`\mu`, read in channel coordinates, become :math:`b = V^\top \beta` (:math:`V` the orthonormal trivial basis
    vectors) and :math:`\bar{\mathrm{cen}} = K \mu` (the centering operator). The training mode and the device and
    dtype of the old layer are kept. Works at any depth (``SequentialModule``, ``ModuleDict``, nested blocks) and on
    ``model`` itself. Returns ``(model, replacements)``; ``model`` is a new object only when ``model`` itself was a
    batch norm.

    A ``GNormBatchNorm`` keeps one running variance per irrep, eqnorm's batch norm one per field: where a field's
    differ, converting it with ``norm="batch"`` would change the eval function, and is refused unless
    ``approximate_running_var=True`` (their dimension-weighted mean is carried). A model already wrapped in
    ``DistributedDataParallel`` or FSDP is refused (convert first, then wrap). Every new layer is built before the
    model is touched: on an error the model is as it was, and the message names the layer.

    Plain ``torch.nn.BatchNorm1d/2d/3d`` layers (an escnn model's head on invariant features) are left, with a
    warning, unless ``torch_batch_norms=True``: each then becomes the ``torch.nn.GroupNorm`` over its channels as
    scalars (``"group"``: ``num_groups`` as above, ``"layer"``: one group, ``"instance"``: one per channel), with its
    per-channel weight and bias carried. That is right only for features that are invariant, as a torch batch norm's
    channels must be for the model to be equivariant at all.

    Load an old checkpoint into the original model first, then convert: the parameters and statistics come with it.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if num_groups is not None and norm in ("layer", "instance"):
        raise ValueError(f"norm={norm!r} fixes the groups (one, or one per field); leave num_groups as None")
    if torch_batch_norms and norm == "batch":
        raise ValueError("torch_batch_norms=True turns torch batch norms into group norms; it needs a per-sample norm")
    _refuse_wrapped(model)
    readers: dict[type, Callable[[Any], _Source]] = _readers()
    if torch_batch_norms:
        readers.update(dict.fromkeys(TORCH_BATCH_NORMS, _read_torch))
    places: dict[int, list[str]] = {}  # a layer used at several places is one object: one replacement for all
    layers: dict[int, torch.nn.Module] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if any(name.startswith(f"{outer}.") for names in places.values() for outer in names if outer):
            continue  # inside a layer that is replaced whole (InnerBatchNorm holds a torch BatchNorm3d)
        if torch.nn.utils.parametrize.is_parametrized(module) and isinstance(module, tuple(readers)):
            raise ValueError(
                f"layer {name or '<model>'!r} ({type(module).__name__}) is parametrized with "
                "torch.nn.utils.parametrize; remove its parametrizations (parametrize.remove_parametrizations) first"
            )
        if type(module) in readers:
            places.setdefault(id(module), []).append(name)
            layers[id(module)] = module
    # every new layer is built before the model is touched: an error leaves it as it was, and names the layer
    replacements: list[Replacement] = []
    for key, old in layers.items():
        name = places[key][0]
        try:
            source = readers[type(old)](old)
            if norm == "batch" and source.var_changed and not approximate_running_var:
                raise ValueError(
                    f"fields {source.var_changed} hold a different running variance per irrep, eqnorm's batch norm "
                    "one per field: the eval function would change; pass approximate_running_var=True to carry "
                    "their dimension-weighted mean, or convert to a per-sample norm"
                )
            new = _build(old, source, norm, num_groups, options)
        except (ValueError, TypeError) as error:
            raise type(error)(f"layer {name or '<model>'!r} ({type(old).__name__}): {error}") from error
        carried = _carry(source, new)
        _carry_module_state(old, new, source)
        _to_like(new, old)
        if len(places[key]) > 1:
            source.notes.append(f"the same layer at {', '.join(places[key])}: one replacement serves every place")
        replacements.append(Replacement(name, type(old).__name__, new, carried, source.notes))
    for key, r in zip(layers, replacements, strict=True):
        for name in places[key]:
            if name == "":
                model = r.new
            else:
                parent_name, _, attribute = name.rpartition(".")
                setattr(model.get_submodule(parent_name), attribute, r.new)
    _warn_about_torch_batch_norms(model)
    return model, replacements


def _refuse_wrapped(model: torch.nn.Module) -> None:
    """``ValueError`` for a model inside DistributedDataParallel or FSDP, which hold its parameters already."""
    wrappers = ("DistributedDataParallel", "FullyShardedDataParallel", "FSDPModule")
    for name, module in model.named_modules():
        if any(cls.__name__ in wrappers for cls in type(module).__mro__):
            raise ValueError(
                f"{name or 'the model'} is wrapped in {type(module).__name__}, which has registered the parameters "
                "convert_norms would replace (its gradients would no longer be reduced): convert the plain model "
                "first, then wrap it"
            )


def _carry_module_state(old: torch.nn.Module, new: torch.nn.Module, source: _Source) -> None:
    """The old layer's training mode, forward hooks and frozen parameters carry over to the new one."""
    new.train(old.training)
    for attribute in ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
                      "_forward_hooks_with_kwargs", "_forward_hooks_always_called"):  # fmt: skip
        getattr(new, attribute).update(getattr(old, attribute))
    if old._backward_hooks or old._backward_pre_hooks:
        source.notes.append("backward hooks not carried: they were registered on the old layer's autograd graph")
    if any(not p.requires_grad for p in old.parameters()):
        for p in new.parameters():
            p.requires_grad_(False)
        source.notes.append("parameters frozen, as the old layer's were (requires_grad=False)")


def _warn_about_torch_batch_norms(model: torch.nn.Module) -> None:
    """Plain torch batch norms left in the model still fail at batch size 1 in training: say where they are."""
    left = [name for name, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if left:
        warnings.warn(
            f"convert_norms leaves plain torch batch norms at {', '.join(left)}: they are not equivariant layers "
            "(on invariant features, torch.nn.GroupNorm or LayerNorm are their batch-independent counterparts), "
            "and they still need more than one value per channel in training",
            stacklevel=3,
        )


def _to_like(new: torch.nn.Module, old: torch.nn.Module) -> None:
    tensor = next(_tensors(old), None)
    if tensor is not None:
        new.to(device=tensor.device, dtype=tensor.dtype if tensor.is_floating_point() else None)


def _tensors(module: torch.nn.Module) -> Iterator[torch.Tensor]:
    yield from module.parameters()
    yield from (b for b in module.buffers() if b.is_floating_point())


def _build(old: Any, source: _Source, norm: str, num_groups: int | None, options: dict[str, Any]) -> Any:
    if isinstance(old, TORCH_BATCH_NORMS):
        return _torch_group_norm(old, norm, num_groups)
    settings = {"eps": source.eps, "affine": source.affine, **source.options, **options}
    is_e3nn = hasattr(old, "irreps")
    if norm == "batch":
        settings = {"momentum": source.momentum, "track_running_stats": source.track_running_stats, **settings}
    else:
        settings.pop("momentum", None)
        settings.pop("track_running_stats", None)
    if is_e3nn:
        from .e3nn import IrrepsBatchNorm, IrrepsGroupNorm, IrrepsLayerNorm

        irreps = old.irreps
        if norm == "batch":
            return IrrepsBatchNorm(irreps, num_groups, **settings)
        if norm == "layer":
            return IrrepsLayerNorm(irreps, **settings)
        if norm == "instance":
            return IrrepsGroupNorm(irreps, num_groups, group_by="field", **settings)
        return IrrepsGroupNorm(irreps, num_groups, **settings)
    from .escnn import FieldBatchNorm, FieldGroupNorm, FieldInstanceNorm, FieldLayerNorm

    if norm == "batch":
        return FieldBatchNorm(old.in_type, num_groups, **settings)
    if norm == "layer":
        return FieldLayerNorm(old.in_type, **settings)
    if norm == "instance":
        return FieldInstanceNorm(old.in_type, **settings)
    return FieldGroupNorm(old.in_type, num_groups, **settings)


def _torch_group_norm(old: torch.nn.modules.batchnorm._BatchNorm, norm: str, num_groups: int | None) -> Any:
    channels = old.num_features
    groups = {"layer": 1, "instance": channels}.get(norm) or num_groups or default_num_groups([1] * channels)
    if channels % groups:
        raise ValueError(f"num_groups={groups} does not divide its {channels} channels")
    return torch.nn.GroupNorm(groups, channels, eps=old.eps, affine=old.affine)


def _read_torch(m: torch.nn.modules.batchnorm._BatchNorm) -> _Source:
    source = _Source(m.affine, m.eps, None, False, m.weight, m.bias)  # per channel, as torch.nn.GroupNorm keeps them
    if m.track_running_stats:
        source.notes.append("running statistics not carried: group normalization keeps none")
    return source


@torch.no_grad()
def _carry(source: _Source, new: Any) -> list[str]:
    """Copy what the source holds into ``new`` where it means the same; returns what was copied."""
    if isinstance(new, torch.nn.GroupNorm):  # from a torch batch norm: the same per-channel weight and bias
        carried = []
        for name, value in (("weight", source.field_weight), ("bias", source.channel_bias)):
            if getattr(new, name) is not None and value is not None:
                getattr(new, name).copy_(value)
                carried.append(name)
        return carried
    inner = new.norm
    layout: FieldLayout = inner.layout
    t = inner.index_tensors
    carried = []
    if inner.weight is not None and source.field_weight is not None:
        inner.weight.copy_(source.field_weight.to(inner.weight))
        carried.append("weight")
    if inner.bias is not None and source.channel_bias is not None:
        beta = source.channel_bias.double()
        bias = torch.zeros(layout.num_trivial, dtype=torch.float64).index_add_(
            0, t.bias_index, t.bias_value * beta[t.bias_channel]
        )
        rebuilt = torch.zeros_like(beta).index_add_(0, t.bias_channel, t.bias_value * bias[t.bias_index])
        if torch.allclose(rebuilt, beta, atol=1e-6):
            inner.bias.copy_(bias.to(inner.bias))
            carried.append("bias")
        else:
            source.notes.append("bias not carried: it has components off the trivial irreps")
    if getattr(inner, "track_running_stats", False):
        if source.channel_mean is not None:
            cen = center(source.channel_mean.double().unsqueeze(0), t)[0]
            inner.running_cen.copy_(cen.to(inner.running_cen))
            carried.append("running_cen")
        if source.field_var is not None:
            if layout.groups == list(range(layout.num_fields)):
                inner.running_var.copy_(source.field_var.to(inner.running_var))
                carried.append("running_var")
                if source.var_note:
                    source.notes.append(source.var_note)
            else:
                source.notes.append("running_var not carried: the new groups are not one field each")
    return carried


def _readers() -> dict[type, Callable[[Any], _Source]]:
    """The convertible classes of the installed libraries and how to read each."""
    readers: dict[type, Callable[[Any], _Source]] = {}
    if importlib.util.find_spec("escnn") is not None:
        from escnn import nn

        readers[nn.InnerBatchNorm] = _read_inner
        for cls in (nn.IIDBatchNorm1d, nn.IIDBatchNorm2d, nn.IIDBatchNorm3d):
            readers[cls] = _read_iid
        readers[nn.GNormBatchNorm] = _read_gnorm
        readers[nn.NormBatchNorm] = _read_norm
        readers[nn.InducedNormBatchNorm] = _read_induced_norm
    if importlib.util.find_spec("e3nn") is not None:
        from e3nn.nn import BatchNorm

        readers[BatchNorm] = _read_e3nn
    return readers


def _settings(m: Any, track_running_stats: bool = True) -> _Source:
    return _Source(m.affine, m.eps, m.momentum, getattr(m, "track_running_stats", track_running_stats))


def _fields(m: Any, kind: Callable[[Any], Hashable] = lambda rep: rep.name) -> Iterator[tuple[int, int, Any, slice]]:
    """``(field, index among the fields of its kind, representation, channels)`` for every field of ``m.in_type``;
    escnn's batch norms keep their parameters per kind (representation name, or size) in order of appearance."""
    seen: dict[Hashable, int] = {}
    start = 0
    for i, rep in enumerate(m.in_type.representations):
        k = seen.get(kind(rep), 0)
        seen[kind(rep)] = k + 1
        yield i, k, rep, slice(start, start + rep.size)
        start += rep.size


def _escape(name: str) -> str:
    return name.replace(".", "^")  # escnn's own escaping of representation names in parameter names


def _empty(m: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    fields, channels = len(m.in_type), m.in_type.size
    return torch.ones(fields), torch.zeros(channels), torch.zeros(channels), torch.ones(fields)


def _read_inner(m: Any) -> _Source:
    """escnn ``InnerBatchNorm``: a ``torch.nn.BatchNorm3d`` per field size over ``(fields, channels of a field)``; its
    per-field bias and mean are constant over the field's channels, i.e. on the trivial irrep."""
    source = _settings(m)
    weight, bias, mean, var = _empty(m)
    for i, k, rep, channels in _fields(m, lambda rep: rep.size):
        bn = getattr(m, f"batch_norm_[{rep.size}]")
        if bn.affine:
            weight[i] = bn.weight[k]
            bias[channels] = bn.bias[k]
        if bn.track_running_stats:
            mean[channels] = bn.running_mean[k]
            var[i] = bn.running_var[k]
    _fill(source, weight, bias, mean, var)
    return source


def _fill(source: _Source, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> None:
    if source.affine:
        source.field_weight, source.channel_bias = weight, bias
    if source.track_running_stats:
        source.channel_mean, source.field_var = mean, var


def _read_iid(m: Any) -> _Source:
    """escnn ``IIDBatchNorm``: a weight per field, a bias per trivial irrep in the field's basis, a running mean per
    channel and a running variance per field (each component's variance about its own batch mean, averaged)."""
    source = _settings(m)
    weight, bias, mean, var = _empty(m)
    for i, k, rep, channels in _fields(m):
        name = _escape(rep.name)
        var[i] = getattr(m, f"{name}_running_var")[k, 0]
        if m._has_trivial[rep.name]:
            mean[channels] = getattr(m, f"{name}_running_mean")[k]
        if m.affine:
            weight[i] = getattr(m, f"{name}_weight")[k, 0]
            if m._has_trivial[rep.name]:
                q = getattr(m, f"{name}_change_of_basis")
                bias[channels] = q @ getattr(m, f"{name}_bias")[k]
    _fill(source, weight, bias, mean, var)
    source.notes.append(
        "IIDBatchNorm's variance is taken about the batch mean of every component, eqnorm's about the trivial mean"
    )
    return source


def _read_gnorm(m: Any) -> _Source:
    """escnn ``GNormBatchNorm``: in each field's irrep basis, a weight and a running variance per irrep, a bias and a
    running mean per trivial irrep. One scale per field is carried only where the field's irreps share one."""
    source = _settings(m, track_running_stats=True)
    weight, bias, mean, var = _empty(m)
    mixed = []
    for i, k, rep, channels in _fields(m):
        name = _escape(rep.name)
        basis = getattr(m, f"{name}_change_of_basis", None)
        q = torch.eye(rep.size) if basis is None else basis
        trivial = m._trivial_idxs[rep.name]
        sizes = torch.tensor([m.in_type.fibergroup.irrep(*irr).size for irr in rep.irreps], dtype=torch.float)
        irrep_var = getattr(m, f"{name}_running_var")[k]
        var[i] = (irrep_var * sizes).sum() / rep.size
        if not torch.allclose(irrep_var, irrep_var[0].expand_as(irrep_var)):
            source.var_changed.append(i)
        mean[channels] = q[:, trivial] @ getattr(m, f"{name}_running_mean")[k]
        if m.affine:
            w = getattr(m, f"{name}_weight")[k]
            if not torch.all(w == w[0]):
                mixed.append(i)
            weight[i] = w[0]
            bias[channels] = q[:, trivial] @ getattr(m, f"{name}_bias")[k]
    _fill(source, weight, bias, mean, var)
    if mixed:
        source.field_weight = None
        source.notes.append(f"weight not carried: fields {mixed} have a different weight per irrep")
    source.var_note = "GNormBatchNorm's running variance per irrep carried as their dimension-weighted mean"
    return source


def _read_norm(m: Any) -> _Source:
    """escnn ``NormBatchNorm`` (no trivial irreps, no centering): a weight and a running mean square per field."""
    source = _settings(m, track_running_stats=True)
    weight, bias, mean, var = _empty(m)
    for i, k, rep, _ in _fields(m, lambda rep: rep.size):
        var[i] = getattr(m, f"{rep.size}_running_var")[0, k, 0]
        if m.affine:
            weight[i] = getattr(m, f"{rep.size}_weight")[0, k, 0]
    _fill(source, weight, bias, mean, var)
    return source


def _read_induced_norm(m: Any) -> _Source:
    """escnn ``InducedNormBatchNorm``: as ``NormBatchNorm``, per (field size, sub-field size)."""
    source = _settings(m, track_running_stats=True)
    weight, bias, mean, var = _empty(m)
    for i, k, rep, _ in _fields(m, _induced_key):
        key = _induced_key(rep)
        var[i] = getattr(m, f"{key}_running_var")[0, k, 0, 0]
        if m.affine:
            weight[i] = getattr(m, f"{key}_weight")[0, k, 0, 0]
    _fill(source, weight, bias, mean, var)
    return source


def _induced_key(rep: Any) -> tuple[int, int]:
    """``(field size, sub-field size)``: how ``InducedNormBatchNorm`` names its parameters."""
    sub = next(int(nl.split("_")[-1]) for nl in rep.supported_nonlinearities if nl.startswith("induced_norm"))
    return rep.size, sub


def _read_e3nn(m: Any) -> _Source:
    """e3nn ``BatchNorm``: a weight and a running mean square per copy, a bias and a running mean per ``0e`` copy."""
    source = _settings(m, track_running_stats=not m.instance)
    source.options = {"normalization": m.normalization}
    if not m.include_bias:
        source.options["bias"] = False
    if m.instance:
        source.notes.append("instance=True: e3nn normalizes each sample over its points; no running statistics")
    if m.reduce != "mean":
        source.notes.append(f"reduce={m.reduce!r} has no eqnorm counterpart: the variance is a mean")
    channels = m.irreps.dim
    weight, bias, mean = torch.ones(m.irreps.num_irreps), torch.zeros(channels), torch.zeros(channels)
    var = torch.ones(m.irreps.num_irreps)
    start = copy = scalar = 0
    for mul, ir in m.irreps:
        for _ in range(mul):
            if m.affine:
                weight[copy] = m.weight[copy]
            if not m.instance:
                var[copy] = m.running_var[copy]
            if ir.l == 0 and ir.p == 1:
                if m.affine and m.include_bias:
                    bias[start] = m.bias[scalar]
                if not m.instance:
                    mean[start] = m.running_mean[scalar]
                scalar += 1
            start += ir.dim
            copy += 1
    source.field_weight = weight if m.affine else None
    source.channel_bias = bias if m.affine and m.include_bias else None
    if not m.instance:
        source.channel_mean, source.field_var = mean, var
        source.var_note = "e3nn's running variance is biased, eqnorm's unbiased: they differ by a factor n/(n-1)"
    return source
