"""The coefficient map of the compiled kernels (csrc/coefficient_map.h), run by each CPU executor, against the float64
pure-PyTorch map (eqnorm.coefficients) and its autograd; and the entries each phase reads."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import layout_of, specs

import eqnorm
from eqnorm.coefficients import affine_coefficients
from eqnorm.layout import FieldLayout

pytestmark = pytest.mark.skipif(eqnorm.kernel_backend("cpu") == "torch", reason="the compiled extension is not built")

EXECUTORS = ["rows", "parts", "aten"]


def statistics(layout, rows, ragged, seed):
    """Random (mean, m2, counts or None, positions, weight, bias, sum_dy_x, sum_dy), float64."""
    gen = torch.Generator().manual_seed(seed)
    C = layout.num_channels

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    mean, m2 = rand(rows, C) * 2 + 1, rand(rows, C).square() * 5
    counts = torch.randint(1, 9, (rows, 1), generator=gen).double() if ragged else None
    weight, bias = rand(layout.num_fields).abs() + 0.5, rand(layout.num_trivial)
    return mean, m2, counts, 7.0, weight, bias, rand(rows, C), rand(rows, C)


def reference(layout, mean, m2, counts, positions, weight, bias, sum_dy_x, sum_dy, eps):
    """(a, beta) and (a, u, v, dweight, dbias) from autograd through the pure-PyTorch map."""
    mean, m2, weight, bias = (t.clone().requires_grad_() for t in (mean, m2, weight, bias))
    P = counts if counts is not None else positions
    a, beta = affine_coefficients(mean, m2, P, weight, bias, layout.tensors, eps)
    gm, gm2, gw, gb = torch.autograd.grad((a, beta), (mean, m2, weight, bias), (sum_dy_x, sum_dy))
    u = 2 * gm2
    return (a.detach(), beta.detach()), (a.detach(), u, gm / P - u * mean.detach(), gw, gb)


def run(executor, layout, mean, m2, counts, positions, weight, bias, eps, cotangents=(None, None)):
    return torch.ops.eqnorm_testing.coefficient_map(
        executor, mean, m2, counts, positions, weight, bias, list(layout.tensors), eps, *cotangents
    )


@settings(max_examples=40, deadline=None)
@given(
    spec=specs(max_fields=6),
    centering=st.sampled_from(["trivial", "all", "none"]),
    ragged=st.booleans(),
    seed=st.integers(0, 99),
)
def test_every_executor_matches_the_reference(spec, centering, ragged, seed):
    layout = layout_of(spec, centering)
    mean, m2, counts, positions, weight, bias, gax, gb = statistics(layout, 3, ragged, seed)
    forward, backward = reference(layout, mean, m2, counts, positions, weight, bias, gax, gb, 1e-5)
    for executor in EXECUTORS:
        got = run(executor, layout, mean, m2, counts, positions, weight, bias, 1e-5)
        for g, r in zip(got, forward, strict=True):
            torch.testing.assert_close(g, r, atol=1e-12, rtol=1e-12, msg=f"{executor} forward")
        got = run(executor, layout, mean, m2, counts, positions, weight, bias, 1e-5, (gax, gb))
        for name, g, r in zip(("a", "u", "v", "dweight", "dbias"), got, backward, strict=True):
            torch.testing.assert_close(g, r, atol=1e-11, rtol=1e-11, msg=f"{executor} backward {name}")


def test_float32_rows_match_the_float64_reference():
    layout = FieldLayout.from_irreps(_irreps(), group_by="irrep")
    mean, m2, counts, positions, weight, bias, gax, gb = statistics(layout, 5, False, 0)
    _, backward = reference(layout, mean, m2, counts, positions, weight, bias, gax, gb, 1e-5)
    for executor in ("rows", "parts"):
        f32 = [t.float() for t in (mean, m2)]
        got = run(
            executor, layout, *f32, None, positions, weight.float(), bias.float(), 1e-5, (gax.float(), gb.float())
        )
        for g, r in zip(got, backward, strict=True):
            torch.testing.assert_close(g.double(), r, atol=1e-4, rtol=1e-4)


def _irreps():
    from e3nn import o3

    return o3.Irreps("6x0e+3x1o+2x2e")


LAYOUTS = {
    "e3nn trivial": lambda: FieldLayout.from_irreps(_irreps(), group_by="irrep"),
    "e3nn all, ir_mul": lambda: FieldLayout.from_irreps(_irreps(), 1, centering="all", layout="ir_mul"),
    "two-irrep fields, all": lambda: FieldLayout(
        6 * [["s", "v", "s"]], {"s": 1, "v": 2}, {"s"}, [0, 1, 2, 0, 1, 2], centering="all"
    ),
}


@pytest.mark.parametrize("make", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_each_phase_reads_only_its_own_entries(make):
    """Every sum of the map visits the entries of its outputs once: a row reads each entry of the centering and group
    operators once forward (twice backward), the channel biases and the parameter gradients read theirs once per
    call. A phase that scanned the whole layout for each output would read each entry many times."""
    layout = make()
    rows = 4
    mean, m2, _, positions, weight, bias, _, _ = statistics(layout, rows, False, 1)
    forward = torch.ops.eqnorm_testing.coefficient_visits(
        mean, m2, positions, weight, bias, list(layout.tensors), 1e-5, False
    )
    backward = torch.ops.eqnorm_testing.coefficient_visits(
        mean, m2, positions, weight, bias, list(layout.tensors), 1e-5, True
    )
    expected_forward = [rows, rows, rows, 1, 0, 0]  # the bias of each channel once per call
    expected_backward = [2 * rows, 2 * rows, 2 * rows, 1, 1, 1]
    for name, f, b, ef, eb in zip(
        ("class_sum", "center", "group_mean", "channel_bias", "bias_grad", "field_sum"),
        forward,
        backward,
        expected_forward,
        expected_backward,
        strict=True,
    ):
        assert torch.equal(f, torch.full_like(f, ef)), f"{name}: forward visits {f.tolist()}"
        assert torch.equal(b, torch.full_like(b, eb)), f"{name}: backward visits {b.tolist()}"


def test_an_unknown_executor_is_refused():
    layout = FieldLayout.scalars(4, 2)
    mean, m2, _, positions, weight, bias, _, _ = statistics(layout, 1, False, 0)
    with pytest.raises(RuntimeError, match="executor must be 'rows', 'parts' or 'aten', got 'gpu'"):
        run("gpu", layout, mean, m2, None, positions, weight, bias, 1e-5)
