"""``FieldNorm``: equivariant group normalization as a plain ``torch.nn.Module`` on ``(N, C, *spatial)`` tensors, and
``PlainNorm``, the base of the plain modules: a layout's index tensors as buffers, weight and bias."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .functional import check_eps, check_input, field_norm
from .layout import FieldLayout, IndexTensors

__all__ = ["FieldNorm", "NormAttributes", "PlainNorm"]

_INDEX_KEYS = tuple(f"index_{name}" for name in IndexTensors._fields)


class PlainNorm(torch.nn.Module):
    r"""A module over the fields of a :class:`~eqnorm.FieldLayout`: its :class:`~eqnorm.layout.IndexTensors` are
    non-persistent buffers (they move with ``.to()``, ``torch.export`` sees them as buffers, checkpoints do not carry
    them), and the parameters ``weight`` ``(F,)`` (init 1) and ``bias`` ``(T,)`` (init 0).

    As in ``torch.nn.GroupNorm``: ``affine=False`` registers ``weight`` and ``bias`` as ``None`` (no parameters),
    ``bias=False`` only ``bias``; the op takes ``None`` as a weight of 1, a bias of 0. The attributes ``num_groups``,
    ``num_channels``, ``num_fields``, ``eps`` and ``affine`` say what the module computes.

    The floating index entries stay float64 whatever ``.to(dtype)``, ``.half()`` or ``.double()`` do to the module:
    the ops read them in the accumulation dtype of the input.
    """

    if TYPE_CHECKING:  # for mypy only: TorchScript cannot read these annotations, and infers them from the values
        weight: torch.nn.Parameter | None
        bias: torch.nn.Parameter | None
        index_field_of_channel: torch.Tensor
        index_group_of_channel: torch.Tensor
        index_bias_channel: torch.Tensor
        index_bias_index: torch.Tensor
        index_bias_value: torch.Tensor
    # Python-side views: TorchScript compiles a module's properties unless they are listed here
    __jit_unused_properties__ = ("num_groups", "num_channels", "num_fields", "index_tensors")

    def __init__(self, layout: FieldLayout, eps: float, affine: bool, bias: bool = True) -> None:
        super().__init__()
        if not isinstance(layout, FieldLayout):
            raise TypeError(f"expected a FieldLayout, got {type(layout).__name__}")
        self.layout = layout
        self.eps = check_eps(eps)
        self.affine = bool(affine)
        for name, tensor in zip(IndexTensors._fields, layout.tensors, strict=True):
            self.register_buffer(f"index_{name}", tensor.clone(), persistent=False)
        # registered even when None, as torch.nn.GroupNorm does: load_state_dict and named_parameters agree with it
        self.register_parameter("weight", torch.nn.Parameter(torch.ones(layout.num_fields)) if affine else None)
        self.register_parameter(
            "bias", torch.nn.Parameter(torch.zeros(layout.num_trivial)) if affine and bias else None
        )

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "eps":  # checked whenever it is set, as torch.nn.GroupNorm users set it after construction
            value = check_eps(value)
        super().__setattr__(name, value)

    @property
    def num_groups(self) -> int:
        return self.layout.num_groups

    @property
    def num_channels(self) -> int:
        return self.layout.num_channels

    @property
    def num_fields(self) -> int:
        return self.layout.num_fields

    def scripted_op(self, x: torch.Tensor, ptr: torch.Tensor | None, batch: bool) -> torch.Tensor:
        """``y`` of ``torch.ops.eqnorm.field_norm`` for ``x`` ``(N, C, *spatial)``, ``(N, C)`` or ragged with
        ``ptr``, in TorchScript (which cannot call the Python route): the rows of ``x`` made contiguous first."""
        if ptr is not None:
            rows, last = x.contiguous(), True
        elif x.dim() == 2:  # point features: (N, C) as N rows of one position, channels last
            rows, last = x.contiguous().unsqueeze(1), True
        else:
            rows, last = x.contiguous().flatten(2), False
        index = [
            self.index_field_of_channel,
            self.index_group_of_channel,
            self.index_group_size,
            self.index_center_channel,
            self.index_center_class,
            self.index_center_value,
            self.index_class_scale,
            self.index_bias_channel,
            self.index_bias_index,
            self.index_bias_value,
            self.index_compiled_index,
            self.index_compiled_field_sum,
            self.index_compiled_bias_grad,
            self.index_compiled_value,
        ]
        y = torch.ops.eqnorm.field_norm(rows, self.weight, self.bias, index, ptr, last, batch, self.eps)[0]
        return y.reshape(x.shape)

    def reset_parameters(self) -> None:
        """``weight`` to ones and ``bias`` to zeros, as at construction."""
        if self.weight is not None:
            torch.nn.init.ones_(self.weight)
        if self.bias is not None:
            torch.nn.init.zeros_(self.bias)

    @property
    def index_tensors(self) -> IndexTensors:
        buffers = self._buffers  # straight from the dict: this runs on every call
        return IndexTensors._make([buffers[key] for key in _INDEX_KEYS])

    def _apply(self, fn: Any, recurse: bool = True) -> PlainNorm:
        super()._apply(fn, recurse)
        for name, master in zip(IndexTensors._fields, self.layout.tensors, strict=True):
            current = getattr(self, f"index_{name}")
            if current.dtype != master.dtype:
                setattr(self, f"index_{name}", master.to(current.device))
        return self

    def settings_repr(self) -> str:
        """``"num_groups=4, eps=1e-05, affine=True"``: the settings a one-line ``repr`` shows after the fields."""
        bias = "" if not self.affine or self.bias is not None else ", bias=False"
        norm = "" if self.layout.normalization == "component" else f", normalization={self.layout.normalization!r}"
        centering = "" if self.layout.centering == "trivial" else f", centering={self.layout.centering!r}"
        return f"num_groups={self.num_groups}{centering}{norm}, eps={self.eps}, affine={self.affine}{bias}"

    def extra_repr(self) -> str:
        return f"{self.layout.num_fields} fields ({self.layout.num_channels} channels), {self.settings_repr()}"


class FieldNorm(PlainNorm):
    r"""Group normalization over the fields of a :class:`~eqnorm.FieldLayout`, on plain tensors.

    .. math::

        y_{ncp} = \frac{w_{\mathrm{field}(c)}}{\sqrt{\sigma^2_{n\gamma(c)} + \epsilon}}
                  \left(x_{ncp} - \mathrm{cen}_{nc}\right) + b_c

    with :math:`\mathrm{cen}` and :math:`\sigma^2` as in :func:`eqnorm.functional.field_group_norm`. This is what the
    escnn and e3nn layers compute and what their ``export()`` returns; it holds no escnn or e3nn object.

    Parameters
    ----------
    layout
        Fields, irreps and groups.
    eps
        Added to the variance.
    affine
        Learn ``weight`` ``(num_fields,)`` (init 1) and ``bias`` ``(num_trivial,)`` (init 0).
    bias
        With ``affine``, learn ``bias`` too (``torch.nn.GroupNorm``'s ``bias``).

    Examples
    --------
    >>> norm = FieldNorm(FieldLayout.scalars(8, num_groups=2))
    >>> norm(torch.randn(2, 8, 4, 4)).shape
    torch.Size([2, 8, 4, 4])
    """

    def __init__(self, layout: FieldLayout, eps: float = 1e-5, affine: bool = True, bias: bool = True) -> None:
        super().__init__(layout, eps, affine, bias)

    def forward(self, x: torch.Tensor, ptr: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(N, C, *spatial)``, or ``(positions, C)`` with segment offsets ``ptr``."""
        if torch.jit.is_scripting():
            return self.scripted_forward(x, ptr)
        return self.eager_forward(x, ptr)

    @torch.jit.unused
    def eager_forward(self, x: torch.Tensor, ptr: torch.Tensor | None = None) -> torch.Tensor:
        """``forward`` in Python: the input checked against the layout, then the fastest route to the op."""
        check_input(x, self.layout)
        params = self._parameters  # straight from the dict: this runs on every call
        return field_norm(x, params["weight"], params["bias"], self.index_tensors, self.eps, ptr=ptr)[0]

    def scripted_forward(self, x: torch.Tensor, ptr: torch.Tensor | None = None) -> torch.Tensor:
        """``forward`` as TorchScript runs it (LAMMPS, ``e3nn.util.jit``): the registered op, which checks its
        arguments itself."""
        return self.scripted_op(x, ptr, False)


class NormAttributes:
    """What the escnn and e3nn layers show of the plain :class:`PlainNorm` they hold as ``norm``: the attributes
    of ``torch.nn.GroupNorm`` (``num_groups``, ``num_channels``, ``eps``, ``affine``, ``weight``, ``bias``,
    ``reset_parameters()``) and the ``layout``."""

    # Python-side views of `norm`: TorchScript compiles a module's properties unless they are listed here
    __jit_unused_properties__: tuple[str, ...] = (
        "layout",
        "weight",
        "bias",
        "num_groups",
        "num_channels",
        "affine",
        "eps",
    )

    if TYPE_CHECKING:
        norm: PlainNorm

    @property
    def layout(self) -> FieldLayout:
        """The :class:`~eqnorm.FieldLayout`: fields (escnn representations or e3nn irrep copies), irreps, groups."""
        return self.norm.layout

    @property
    def weight(self) -> torch.nn.Parameter | None:
        """One scale per field, shape ``(num_fields,)``; ``None`` unless ``affine``."""
        return self.norm.weight

    @property
    def bias(self) -> torch.nn.Parameter | None:
        """One bias per trivial irrep copy (``0e`` in e3nn), shape ``(num_trivial,)``; ``None`` unless ``affine`` and
        ``bias``."""
        return self.norm.bias

    @property
    def num_groups(self) -> int:
        return self.norm.num_groups

    @property
    def num_channels(self) -> int:
        return self.norm.num_channels

    @property
    def affine(self) -> bool:
        return self.norm.affine

    @property
    def eps(self) -> float:
        return self.norm.eps

    @eps.setter
    def eps(self, value: float) -> None:
        self.norm.eps = check_eps(value)

    def reset_parameters(self) -> None:
        """``weight`` to ones, ``bias`` to zeros (and, in a batch norm, the running statistics)."""
        self.norm.reset_parameters()
