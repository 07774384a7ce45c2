"""eqnorm inside a real MACE model (mace-torch, built with its own constructors): a per-node layer norm after each
product block; energies and forces of Cu/Au cells from ASE's EMT. Training steps give the pure-PyTorch kernels'
gradients, forces are equivariant, and the model scripts the way MACE's LAMMPS export does and compiles with MACE's
compile helper. Needs mace-torch (its own environment: it pins e3nn 0.4.4): `scripts/dev.sh clients`."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

mace = pytest.importorskip("mace")
ase_build = pytest.importorskip("ase.build")

from ase.calculators.emt import EMT  # noqa: E402
from e3nn import o3  # noqa: E402
from e3nn.util import jit  # noqa: E402
from mace import data, modules, tools  # noqa: E402
from mace.calculators.lammps_mace import LAMMPS_MACE  # noqa: E402
from mace.tools import torch_geometric  # noqa: E402

import eqnorm  # noqa: E402
from eqnorm import _ops  # noqa: E402
from eqnorm.e3nn import GraphIndex, IrrepsGroupNorm, IrrepsLayerNorm  # noqa: E402

pytestmark = pytest.mark.skipif(eqnorm.kernel_backend("cpu") == "torch", reason="the compiled extension is not built")

HIDDEN = o3.Irreps("8x0e+8x1o")
Z_TABLE = tools.AtomicNumberTable([29, 79])
KEYS = data.KeySpecification(info_keys={"energy": "REF_energy"}, arrays_keys={"forces": "REF_forces"})


@pytest.fixture(autouse=True)
def _float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # MACE builds its model in the default dtype
    yield
    torch.set_default_dtype(before)


class NormedProduct(torch.nn.Module):
    """A MACE product block followed by an eqnorm layer norm of its output (per node)."""

    def __init__(self, product: torch.nn.Module, irreps: o3.Irreps, index: GraphIndex | None = None) -> None:
        super().__init__()
        self.product = product
        # per graph when given the model's GraphIndex (the block itself never sees the graph index), else per node
        self.norm = (
            IrrepsLayerNorm(irreps) if index is None else IrrepsGroupNorm(irreps, 1, over="graph", graph_index=index)
        )

    def forward(self, node_feats: torch.Tensor, sc: torch.Tensor | None, node_attrs: torch.Tensor) -> torch.Tensor:
        return self.norm(self.product(node_feats=node_feats, sc=sc, node_attrs=node_attrs))


def make_model(index: GraphIndex | None = None) -> torch.nn.Module:
    interaction = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    model = modules.MACE(
        r_max=4.0,
        num_bessel=4,
        num_polynomial_cutoff=5,
        max_ell=2,
        interaction_cls=interaction,
        interaction_cls_first=interaction,
        num_interactions=2,
        num_elements=2,
        hidden_irreps=HIDDEN,
        MLP_irreps=o3.Irreps("8x0e"),
        gate=torch.nn.functional.silu,
        atomic_energies=np.array([-3.5, -3.8]),
        avg_num_neighbors=8.0,
        atomic_numbers=Z_TABLE.zs,
        correlation=2,
    )
    for i, product in enumerate(model.products):
        irreps = HIDDEN if i < len(model.products) - 1 else o3.Irreps(str(HIDDEN[0]))  # MACE's last layer: scalars
        model.products[i] = NormedProduct(product, irreps, index)
    return model


def cells(count: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        atoms = ase_build.bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.symbols[rng.choice(len(atoms), 2, replace=False)] = "Au"
        atoms.rattle(0.1, seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        atoms.info["REF_energy"] = atoms.get_potential_energy()
        atoms.arrays["REF_forces"] = atoms.get_forces()
        out.append(atoms)
    return out


def batch_of(atoms_list: list) -> dict[str, torch.Tensor]:
    configs = [data.config_from_atoms(a, key_specification=KEYS) for a in atoms_list]
    atomic = [data.AtomicData.from_config(c, z_table=Z_TABLE, cutoff=4.0) for c in configs]
    loader = torch_geometric.dataloader.DataLoader(atomic, batch_size=len(atomic), shuffle=False)
    return next(iter(loader)).to_dict()


def loss_of(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    for module in model.modules():  # the per-graph norms' GraphIndex, set before each call
        if isinstance(module, GraphIndex):
            module.set(batch["batch"], batch["ptr"].numel() - 1)
    out = model(dict(batch), training=True, compute_force=True)
    return (out["energy"] - batch["energy"]).square().mean() + (out["forces"] - batch["forces"]).square().mean()


@pytest.mark.parametrize("over", ["node", "graph"])
def test_training_steps_match_the_pure_pytorch_kernels(monkeypatch, over):
    torch.manual_seed(0)
    model, batch = make_model(GraphIndex() if over == "graph" else None), batch_of(cells(3, 0))
    twin = copy.deepcopy(model)
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (model, twin)]
    for _ in range(3):
        losses = []
        for m, opt, pure in ((model, optimizers[0], False), (twin, optimizers[1], True)):
            with monkeypatch.context() as patch:
                if pure:
                    patch.setattr(_ops, "_COMPILED", {})
                opt.zero_grad()
                loss = loss_of(m, batch)
                loss.backward()  # through the forces: second derivatives of the norm
                opt.step()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[0], losses[1], atol=1e-10, rtol=1e-10)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-9, rtol=1e-9)
    assert torch.isfinite(losses[0])


def test_forces_are_equivariant():
    torch.manual_seed(1)
    model, atoms = make_model(), cells(1, 1)[0]
    rotation = o3.rand_matrix().numpy()
    turned = atoms.copy()
    turned.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    turned.positions = atoms.positions @ rotation.T
    for a in (atoms, turned):
        a.calc = EMT()
        a.info["REF_energy"] = a.get_potential_energy()
        a.arrays["REF_forces"] = a.get_forces()
    f = model(batch_of([atoms]), training=False, compute_force=True)["forces"]
    f_turned = model(batch_of([turned]), training=False, compute_force=True)["forces"]
    torch.testing.assert_close(f_turned, f @ torch.from_numpy(rotation).T, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("over", ["node", "graph"])
def test_lammps_export_scripts_and_matches(over):
    """What mace's create_lammps_model does: LAMMPS_MACE around the model, compiled by e3nn.util.jit. LAMMPS hands
    the model one configuration: per-graph norms with their GraphIndex cleared pool over all of it."""
    torch.manual_seed(2)
    model, batch = make_model(GraphIndex() if over == "graph" else None), batch_of(cells(1, 2))
    energy = model(dict(batch), training=False, compute_force=True)["energy"]
    scripted = jit.compile(LAMMPS_MACE(copy.deepcopy(model)))
    local = torch.ones(batch["positions"].shape[0], dtype=torch.bool)
    out = scripted(dict(batch), local, False)
    torch.testing.assert_close(out["total_energy_local"], energy, atol=1e-10, rtol=1e-10)


def test_compiles_with_the_mace_compile_helper():
    """The model built through mace.tools.compile.prepare and compiled; forces by autograd through the compiled
    graph's backward (under torch 2.13 the forces a compiled MACE computes inside itself come out zero, with or
    without eqnorm, so they are taken outside)."""
    from mace.tools import compile as mace_compile

    torch.manual_seed(3)
    model = mace_compile.prepare(make_model)()
    compiled = torch.compile(copy.deepcopy(model))
    batch = batch_of(cells(2, 3))
    results = []
    for m in (model, compiled):
        positions = batch["positions"].clone().requires_grad_()
        energy = m({**batch, "positions": positions}, training=True, compute_force=False)["energy"]
        results.append((energy, -torch.autograd.grad(energy.sum(), positions)[0]))
    (e0, f0), (e1, f1) = results
    torch.testing.assert_close(e1, e0, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(f1, f0, atol=1e-10, rtol=1e-10)
    assert f0.abs().max() > 1e-3


def test_per_graph_norms_through_a_graph_index_keep_graphs_apart():
    """A configuration's energy and forces are the same alone and in a batch: its norms pooled over it only."""
    torch.manual_seed(4)
    index = GraphIndex()
    model, atoms = make_model(index), cells(3, 4)
    results = []
    for batch in (batch_of(atoms), batch_of(atoms[1:2])):
        index.set(batch["batch"], batch["ptr"].numel() - 1)
        out = model(dict(batch), training=False, compute_force=True)
        results.append((out["energy"], out["forces"], batch["ptr"]))
    (e, f, ptr), (e1, f1, _) = results
    torch.testing.assert_close(e[1:2], e1, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(f[ptr[1] : ptr[2]], f1, atol=1e-10, rtol=1e-10)
    index.set(batch_of(atoms)["batch"], 3)
    with pytest.raises(ValueError, match="graph indices"):  # a stale index is refused, never applied
        model(batch_of(atoms[:1]), training=False, compute_force=True)
