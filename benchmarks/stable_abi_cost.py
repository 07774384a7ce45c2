"""What moving the op to PyTorch's stable ABI would cost per call: the stable ABI (torch/csrc/stable) registers
kernels but no autograd, so the backward would be attached from Python (torch.library.register_autograd) and calls
would go through torch.ops. This times, on the small case of benchmarks/one_op_cpu.py (1, 16, 2, 2), forward and
forward + backward of:

- ``binding``: today's route (the pybind binding into the dispatcher, autograd in C++);
- ``torch.ops``: the same op through torch.ops (the argument parsing a stable-ABI build would have);
- ``python autograd``: torch.ops for the kernels inside a Python autograd.Function, as register_autograd builds
  (a lower bound of its cost: register_autograd adds its own checks);

each as a ratio to torch.nn.GroupNorm measured in the same run (torch.utils.benchmark, median of blocked runs).

    .venv/bin/python benchmarks/stable_abi_cost.py
"""

from __future__ import annotations

import torch
import torch.utils.benchmark as tb

from eqnorm import FieldLayout, _extension


class PythonAutograd(torch.autograd.Function):
    """The kernels through torch.ops, the backward attached in Python: a stable-ABI build's only way to autograd."""

    @staticmethod
    def forward(ctx, x, weight, bias, layout, eps):  # type: ignore[no-untyped-def]
        with torch._C._AutoDispatchBelowAutograd():
            y, mean, m2 = torch.ops.eqnorm.field_norm(x, weight, bias, layout, None, False, False, eps)
        ctx.save_for_backward(x, mean, m2, weight, bias)
        ctx.layout, ctx.eps = layout, eps
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[no-untyped-def]
        x, mean, m2, weight, bias = ctx.saved_tensors
        dx, dw, db = torch.ops.eqnorm.field_norm_backward(
            dy, x, mean, m2, weight, bias, ctx.layout, None, False, False, ctx.eps, [True, True, True]
        )
        return dx, dw, db, None, None


def main() -> None:
    torch.set_num_threads(1)
    layout = FieldLayout.scalars(16, 4)
    t = list(layout.tensors)
    x = torch.randn(1, 16, 4, requires_grad=True)
    w = torch.ones(16, requires_grad=True)
    b = torch.zeros(16, requires_grad=True)
    gn = torch.nn.GroupNorm(4, 16)
    xg = x.detach().view(1, 16, 2, 2).requires_grad_()
    routes = {
        "torch GroupNorm": lambda: gn(xg),
        "binding": lambda: _extension.C.field_norm(x, w, b, t, None, False, False, 1e-5)[0],
        "torch.ops": lambda: torch.ops.eqnorm.field_norm(x, w, b, t, None, False, False, 1e-5)[0],
        "python autograd": lambda: PythonAutograd.apply(x, w, b, t, 1e-5),
    }
    results = {}
    for name, fn in routes.items():
        for what, stmt in (("forward", "fn()"), ("fwd+bwd", "fn().sum().backward()")):
            timer = tb.Timer(stmt, globals={"fn": fn}, label="one small call", sub_label=name, description=what)
            results[(name, what)] = timer.blocked_autorange(min_run_time=1.0).median * 1e6
    print(f"{'route':<18} {'forward us':>11} {'ratio':>7} {'fwd+bwd us':>11} {'ratio':>7}")
    for name in routes:
        f, fb = results[(name, "forward")], results[(name, "fwd+bwd")]
        base_f, base_fb = results[("torch GroupNorm", "forward")], results[("torch GroupNorm", "fwd+bwd")]
        print(f"{name:<18} {f:>11.1f} {f / base_f:>6.2f}x {fb:>11.1f} {fb / base_fb:>6.2f}x")


if __name__ == "__main__":
    main()
