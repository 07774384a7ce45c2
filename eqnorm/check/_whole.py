"""``WholeModel``: a plain ``torch.nn.Module`` (an escnn trunk inside, plain tensors in and out, a torch head) given
to the checker with what its input and output are, and the adapters that make it look like an escnn or e3nn module
to the checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["WholeModel"]


@dataclass
class WholeModel:
    r"""A model on plain tensors, with the symmetry of its input and output, for ``eqnorm-check``:

    - escnn: ``in_type`` the ``FieldType`` of the input tensor, ``out_type`` the ``FieldType`` of the output tensor
      or ``"invariant"`` (class scores, energies: :math:`f(g x) = f(x)` for every :math:`g`);
    - e3nn: ``irreps_in`` and ``irreps_out`` (``"invariant"``: scalars unchanged by rotation and inversion), and
      ``inputs``, keyword inputs of every call (``batch``, ``ptr``, ``num_graphs``).

    ``input`` is an input tensor the model accepts (needed where the checker's default would not fit, such as a
    ``MaskModule``'s grid size). A factory returns one of these instead of a module.
    """

    model: torch.nn.Module
    in_type: Any = None
    out_type: Any = "invariant"
    irreps_in: Any = None
    irreps_out: Any = "invariant"
    input: torch.Tensor | None = None
    inputs: dict[str, Any] = field(default_factory=dict)

    def adapted(self) -> torch.nn.Module:
        """The model as the checks call an escnn or an e3nn module."""
        if (self.in_type is None) == (self.irreps_in is None):
            raise ValueError("a WholeModel needs in_type (escnn) or irreps_in (e3nn), not both")
        if self.in_type is not None:
            return EscnnView(self.model, self.in_type, self.out_type)
        return E3nnView(self.model, self.irreps_in, self.irreps_out)


class Invariant:
    """The output of an invariant model where the checks read a ``GeometricTensor``'s ``.tensor``; the group acts on
    it as the identity (:func:`eqnorm.check._actions.act` with no field type)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


class EscnnView(torch.nn.Module):
    """A plain model seen as an escnn module from ``in_type`` to ``out_type`` (or to invariant outputs)."""

    is_whole_model = True  # its own submodules are the layers; it is no escnn parent of them

    def __init__(self, model: torch.nn.Module, in_type: Any, out_type: Any) -> None:
        super().__init__()
        self.model, self.in_type = model, in_type
        self.out_type = None if isinstance(out_type, str) and out_type == "invariant" else out_type

    def forward(self, x: Any) -> Any:
        from escnn.nn import GeometricTensor

        y = self.model(x.tensor)
        return Invariant(y) if self.out_type is None else GeometricTensor(y, self.out_type)


class E3nnView(torch.nn.Module):
    """A plain model seen as an e3nn module from ``irreps_in`` to ``irreps_out`` (``"invariant"``: scalars)."""

    is_whole_model = True

    def __init__(self, model: torch.nn.Module, irreps_in: Any, irreps_out: Any) -> None:
        super().__init__()
        from e3nn import o3

        self.model, self.irreps_in = model, o3.Irreps(irreps_in)
        self.invariant = isinstance(irreps_out, str) and irreps_out == "invariant"
        self.irreps_out = None if self.invariant else o3.Irreps(irreps_out)

    def forward(self, x: torch.Tensor, **inputs: Any) -> torch.Tensor:
        return self.model(x, **inputs)
