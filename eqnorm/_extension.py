"""The compiled extension ``eqnorm._C``: importing it registers ``torch.ops.eqnorm.*`` (C++ on the CPU, CUDA on
GPUs); the fake kernels that let tracers see through the ops; and which devices it has kernels for. Where it is
missing, a warning says why and how to build it (or ``EQNORM_BACKEND=torch`` chooses the pure-PyTorch kernels on
purpose, without the warning)."""

from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from ._pure_kernels import accumulation_dtype, statistics_shape

__all__ = ["COMPILED", "EXTENSION", "C"]

#: the pure-PyTorch kernels chosen on purpose
FORCE_TORCH = os.environ.get("EQNORM_BACKEND") == "torch"

try:
    C: Any = importlib.import_module("eqnorm._C")  # importing it registers torch.ops.eqnorm.*

    EXTENSION = True
except ImportError as error:
    C = None
    EXTENSION = False
    _note, _built = (Path(__file__).with_name(name) for name in ("_extension_missing.txt", "_built_with.txt"))
    _why = _note.read_text().strip() if _note.exists() else f"eqnorm._C does not import: {error}"
    if _built.exists() and _built.read_text().strip() != torch.__version__:
        _why += f"; it was compiled against torch {_built.read_text().strip()}, and this is torch {torch.__version__}"
    if not FORCE_TORCH:
        warnings.warn(
            f"eqnorm: the compiled kernels are missing ({_why}); the pure-PyTorch kernels run instead, slower. "
            "Reinstall with `pip install --no-build-isolation 'eqnorm-layers[...]'` to build them against the "
            "installed torch, or set EQNORM_BACKEND=torch to choose the pure-PyTorch kernels on purpose.",
            RuntimeWarning,
            stacklevel=2,
        )

#: device type -> name of the compiled implementation available for it
COMPILED = {
    device: name
    for device, key, name in (("cpu", "CPU", "cpp"), ("cuda", "CUDA", "cuda"))
    if EXTENSION and not FORCE_TORCH and torch._C._dispatch_has_kernel_for_dispatch_key("eqnorm::field_norm", key)
}


if EXTENSION:

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
        shape = statistics_shape(x, channels_last, ptr, batch)
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
