import torch
from escnn import gspaces, nn

from eqnorm import FieldGroupNorm


def test_compiled_model_matches_eager():
    """torch.compile(fullgraph=True) of a small escnn model traces through the custom ops, forward and backward."""
    torch._dynamo.reset()
    gs = gspaces.rot2dOnR2(4)
    t_in = nn.FieldType(gs, [gs.trivial_repr])
    hidden = nn.FieldType(gs, 4 * [gs.regular_repr] + 2 * [gs.irrep(1)])
    model = nn.SequentialModule(nn.R2Conv(t_in, hidden, 3, padding=1), FieldGroupNorm(hidden, 2, centering="all"))
    # eval: R2Conv uses its cached filter (expanding the filter basis in the graph is escnn's business, not ours)
    model.eval()

    def run(t: torch.Tensor) -> torch.Tensor:
        return model(nn.GeometricTensor(t, t_in)).tensor

    x = torch.randn(2, 1, 9, 9, requires_grad=True)
    compiled = torch.compile(run, fullgraph=True)
    y, y_ref = compiled(x), run(x)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, model[1].weight), dy)
    grads_ref = torch.autograd.grad(y_ref, (x, model[1].weight), dy)
    for g, r in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)
