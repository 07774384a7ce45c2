import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import layout_of, specs

from eqnorm.coefficients import affine_coefficients, affine_coefficients_backward


@given(
    spec=specs(), centering=st.sampled_from(["trivial", "all", "none"]), ragged=st.booleans(), seed=st.integers(0, 999)
)
def test_closed_form_vjp_matches_autograd(spec, centering, ragged, seed):
    ops = layout_of(spec, centering).operators()
    gen = torch.Generator().manual_seed(seed)
    n, c = 3, ops.center_in.shape[0]

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    positions = torch.tensor([[1.0], [4.0], [9.0]], dtype=torch.float64) if ragged else 7
    mean, m2, w, b = rand(n, c), rand(n, c).abs(), rand(c), rand(c)
    grad_a, grad_beta = rand(n, c), rand(n, c)

    def f(mean, m2, w, b):
        return affine_coefficients(mean, m2, w, b, ops, positions, 1e-5)

    (a_ref, _), vjp = torch.func.vjp(f, mean, m2, w, b)
    want = vjp((grad_a, grad_beta))
    a, *got = affine_coefficients_backward(grad_a, grad_beta, mean, m2, w, ops, positions, 1e-5)
    torch.testing.assert_close(a, a_ref, atol=1e-12, rtol=1e-12)
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=1e-10)
