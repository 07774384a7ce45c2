"""An interatomic potential trained on energies and forces with eqnorm's e3nn norms, deployed with AOTInductor.

Data, made here with ASE and nothing downloaded: Langevin molecular dynamics of Cu-Au clusters (a 13-atom icosahedron
and a 19-atom octahedron, about 30% gold at random) under ASE's EMT potential at 300, 600 and 900 K, one frame every 25
steps of 2 fs after 200 steps of equilibration (20 frames per trajectory). For each temperature and cluster there are
four trajectories: two for training, one for validation and one for test, so the split is by trajectory.

The model is a small NequIP-style e3nn network: atom types, then two interactions, each a tensor product of the
neighbours' features with the spherical harmonics (l <= 2) of the bond direction, weighted by an MLP of a radial basis
that goes smoothly to zero at the 4 A cutoff, then a self-connection, the normalization under test and a gate (features
``8x0e + 6x0e + 4x1o + 2x2e``, the 6 scalars gating the 1o and 2e copies); per-atom energies are summed over each
cluster, and forces are minus the gradient of the energy with respect to the positions. Normalizations (the ``--norms``
flag):

* ``group``: ``IrrepsGroupNorm(over="graph")``, statistics per cluster (default groups: whole copies, about 16
  channels per group);
* ``layer``: ``IrrepsLayerNorm``, statistics per atom;
* ``batch``: ``e3nn.nn.BatchNorm``, statistics over every atom of the batch (running averages in eval mode);
* ``none``.

Each is trained (two seeds: initialization and order) on energies and forces (the force loss differentiates through the
gradient, so every layer is differentiated twice) at batch sizes 1, 4 and 16 for the same number of epochs (Adam,
learning rate scaled with the square root of the batch size, the epoch with the best validation loss kept). Reported on
the test trajectories: energy MAE per atom, force MAE, and the force equivariance error under random rotations and
reflections.

Deployment of the group-norm model trained at batch 4: its energy-and-forces function is traced (forces by
``torch.autograd.grad`` inside it), exported with ``torch.export`` with a dynamic number of atoms and edges, and
compiled into an AOTInductor package. The package is loaded in a fresh process and compared with eager on both
cluster sizes, drives 200 steps of NVE molecular dynamics through an ASE calculator (the energy drift is compared with
EMT's own under the same integrator), and one call is timed eager, compiled with ``torch.compile`` and packaged.

    python examples/forces_e3nn.py            # full run (about 17 minutes on 2 cores)
    python examples/forces_e3nn.py --quick    # a smoke run: one temperature, short trajectories, one epoch

``ase`` is an optional extra (``pip install eqnorm[examples]``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.benchmark
from _cli import distinct_style, finish, mean_std, parse_args, progress, save_figure, write_csv
from _geometry import random_orthogonal
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.cluster import Icosahedron, Octahedron
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet
from e3nn import o3
from e3nn.math import soft_one_hot_linspace
from e3nn.nn import BatchNorm, FullyConnectedNet, Gate

from eqnorm.e3nn import IrrepsGroupNorm, IrrepsLayerNorm

ELEMENTS = ("Cu", "Au")
CUTOFF = 4.0  # Angstrom: the first two neighbour shells of copper (2.55 and 3.6 A)
BASIS = 8
SH = o3.Irreps.spherical_harmonics(2)
NORMS = ("group", "layer", "batch", "none")
NEIGHBOURS = 8.0  # typical neighbours within the cutoff in these clusters: messages are summed, then divided by sqrt


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default: 5, 1 with --quick)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--norms", nargs="+", choices=NORMS, default=list(NORMS))


@dataclass
class Frame:
    species: torch.Tensor  # (atoms,) index into ELEMENTS
    pos: torch.Tensor  # (atoms, 3), Angstrom
    energy: float  # eV
    forces: torch.Tensor  # (atoms, 3), eV / Angstrom


def make_cluster(kind: str, rng: np.random.Generator) -> Atoms:
    atoms = Icosahedron("Cu", noshells=2) if kind == "ico13" else Octahedron("Cu", length=3)
    atoms.set_chemical_symbols(np.where(rng.random(len(atoms)) < 0.3, "Au", "Cu").tolist())
    atoms.center(vacuum=5.0)
    return atoms


def trajectory(kind: str, temperature: float, seed: int, frames: int, stride: int) -> list[Frame]:
    """Langevin dynamics under EMT: 200 steps to equilibrate, then a frame every ``stride`` steps."""
    rng = np.random.default_rng(seed)
    atoms = make_cluster(kind, rng)
    atoms.calc = EMT()
    atoms.set_constraint(FixCom())  # a cluster in vacuum: no drift of its centre of mass
    thermalize_momenta(atoms, temperature, rng=rng)
    dynamics = Langevin(atoms, 2 * units.fs, temperature_K=temperature, friction=0.02, fixcm=False, rng=rng)
    dynamics.run(200)
    species = torch.tensor([ELEMENTS.index(s) for s in atoms.get_chemical_symbols()])
    out = []
    for _ in range(frames):
        dynamics.run(stride)
        out.append(
            Frame(
                species,
                torch.tensor(atoms.positions, dtype=torch.float32),
                float(atoms.get_potential_energy()),
                torch.tensor(atoms.get_forces(), dtype=torch.float32),
            )
        )
    return out


def make_data(quick: bool) -> dict[str, list[Frame]]:
    """Train, validation and test frames, split by trajectory."""
    temperatures = (600.0,) if quick else (300.0, 600.0, 900.0)
    frames, stride = (6, 5) if quick else (20, 25)
    roles = {0: "train", 1: "train", 2: "val", 3: "test"}
    data: dict[str, list[Frame]] = {"train": [], "val": [], "test": []}
    jobs = [(t, kind, seed) for t in temperatures for kind in ("ico13", "oct19") for seed in roles]
    for t, kind, seed in progress(jobs, "EMT molecular dynamics"):
        data[roles[seed]] += trajectory(kind, t, seed + int(t), frames, stride)
    return data


def edges(pos: torch.Tensor, ptr: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Directed pairs of distinct atoms of the same structure closer than the cutoff."""
    dist = torch.cdist(pos, pos)
    close = (dist < CUTOFF) & (dist > 0)
    if ptr is not None:
        graph = torch.repeat_interleave(torch.arange(len(ptr) - 1), ptr.diff())
        close &= graph[:, None] == graph[None, :]
    src, dst = torch.nonzero(close, as_tuple=True)
    return src, dst


@dataclass
class Batch:
    species: torch.Tensor
    pos: torch.Tensor
    src: torch.Tensor
    dst: torch.Tensor
    graph: torch.Tensor  # (atoms,) structure index, sorted
    num_graphs: int
    atoms: torch.Tensor  # (structures,) atoms per structure
    energy: torch.Tensor
    forces: torch.Tensor


def collate(frames: list[Frame], rotations: torch.Tensor | None = None) -> Batch:
    """Concatenate structures; ``rotations`` (n, 3, 3) moves each one (positions and reference forces) first."""
    pos = [f.pos if rotations is None else f.pos @ rotations[i].T for i, f in enumerate(frames)]
    forces = [f.forces if rotations is None else f.forces @ rotations[i].T for i, f in enumerate(frames)]
    atoms = torch.tensor([len(f.species) for f in frames])
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), atoms.cumsum(0)])
    all_pos = torch.cat(pos)
    src, dst = edges(all_pos, ptr)
    graph = torch.repeat_interleave(torch.arange(len(frames)), atoms)
    energy = torch.tensor([f.energy for f in frames])
    return Batch(
        torch.cat([f.species for f in frames]), all_pos, src, dst, graph, len(frames), atoms, energy, torch.cat(forces)
    )


def make_norm(norm: str, irreps: o3.Irreps) -> torch.nn.Module:
    if norm == "group":
        return IrrepsGroupNorm(irreps, over="graph")
    if norm == "layer":
        return IrrepsLayerNorm(irreps)
    if norm == "batch":
        return BatchNorm(irreps)
    return torch.nn.Identity()


class Interaction(torch.nn.Module):
    r"""``h_i' = gate(norm(W h_i + sum_j TP(h_j, Y(r_ij); R(|r_ij|)) / sqrt(neighbours)))``."""

    def __init__(self, irreps_in: o3.Irreps, norm: str) -> None:
        super().__init__()
        self.gate = Gate("8x0e", [F.silu], "6x0e", [torch.sigmoid], "4x1o+2x2e")
        hidden = self.gate.irreps_in
        self.tp = o3.FullyConnectedTensorProduct(irreps_in, SH, hidden, shared_weights=False)
        self.radial = FullyConnectedNet([BASIS, 32, self.tp.weight_numel], F.silu)
        self.self_connection = o3.Linear(irreps_in, hidden)
        self.norm = make_norm(norm, hidden)
        self.per_graph = norm == "group"

    def forward(
        self, h: torch.Tensor, y: torch.Tensor, basis: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
        graph: torch.Tensor, num_graphs: int,
    ) -> torch.Tensor:  # fmt: skip
        messages = self.tp(h[src], y, self.radial(basis))
        summed = torch.zeros(h.shape[0], messages.shape[1], dtype=h.dtype).index_add(0, dst, messages)
        h = self.self_connection(h) + summed / math.sqrt(NEIGHBOURS)
        h = self.norm(h, batch=graph, num_graphs=num_graphs) if self.per_graph else self.norm(h)
        return self.gate(h)


class Potential(torch.nn.Module):
    """Per-atom energies ``E_i = s * head(h_i) + e_{Z_i}``; a structure's energy is their sum."""

    def __init__(self, norm: str, reference: torch.Tensor, scale: float, layers: int = 2) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(len(ELEMENTS), 8)
        irreps = o3.Irreps("8x0e")
        self.interactions = torch.nn.ModuleList()
        for _ in range(layers):
            self.interactions.append(Interaction(irreps, norm))
            irreps = self.interactions[-1].gate.irreps_out
        self.head = o3.Linear(irreps, "1x0e")
        self.register_buffer("reference", reference)  # least-squares energy per element
        self.scale = scale

    def atomic_energies(
        self, pos: torch.Tensor, species: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
        graph: torch.Tensor, num_graphs: int,
    ) -> torch.Tensor:  # fmt: skip
        vec = pos[src] - pos[dst]
        basis = soft_one_hot_linspace(vec.norm(dim=1), 0.0, CUTOFF, BASIS, basis="smooth_finite", cutoff=True)
        y = o3.spherical_harmonics(SH, vec, normalize=True, normalization="component")
        h = self.embed(species)
        for interaction in self.interactions:
            h = interaction(h, y, basis * math.sqrt(BASIS), src, dst, graph, num_graphs)
        return self.scale * self.head(h).squeeze(1) + self.reference[species]

    def forward(self, batch: Batch, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies ``(structures,)`` and forces ``(atoms, 3)``; ``create_graph`` for a loss on the forces."""
        pos = batch.pos.detach().requires_grad_(True)
        with torch.enable_grad():
            atomic = self.atomic_energies(pos, batch.species, batch.src, batch.dst, batch.graph, batch.num_graphs)
            energy = torch.zeros(batch.num_graphs, dtype=atomic.dtype).index_add(0, batch.graph, atomic)
            (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=create_graph)
        return energy, -grad


class EnergyAndForces(torch.nn.Module):
    """The deployed function: one structure's energy and forces from positions, species and its edges."""

    def __init__(self, potential: Potential) -> None:
        super().__init__()
        self.potential = potential

    def forward(
        self, pos: torch.Tensor, species: torch.Tensor, src: torch.Tensor, dst: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pos = pos.detach().requires_grad_(True)
        with torch.enable_grad():
            # one structure: the atomic energies are summed directly, not index_added into a (1,) tensor as in
            # Potential.forward, which AOTInductor's CPU code generation fails on (a scatter into one element)
            graph = torch.zeros_like(species)
            energy = self.potential.atomic_energies(pos, species, src, dst, graph, 1).sum()
            (grad,) = torch.autograd.grad(energy, pos)
        return energy, -grad


def reference_energies(frames: list[Frame]) -> torch.Tensor:
    """Least-squares energy per element: ``E ~ sum_Z n_Z e_Z``."""
    counts = torch.stack([torch.bincount(f.species, minlength=len(ELEMENTS)).double() for f in frames])
    energy = torch.tensor([f.energy for f in frames], dtype=torch.float64)
    return torch.linalg.lstsq(counts, energy.unsqueeze(1)).solution.squeeze(1).float()


@dataclass
class Scales:
    energy: float  # std of the energy per atom over the training set, eV
    forces: float  # RMS of a force component, eV / A


def loss_terms(
    energy: torch.Tensor, forces: torch.Tensor, batch: Batch, scales: Scales
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, |energy error| per atom, |force error|)``: the loss weighs the energy per atom and the force
    components by their spread over the training set."""
    energy_error = (energy - batch.energy) / batch.atoms
    loss = energy_error.square().mean() / scales.energy**2 + (forces - batch.forces).square().mean() / scales.forces**2
    return loss, energy_error.abs(), (forces - batch.forces).abs()


def evaluate(model: Potential, frames: list[Frame], scales: Scales) -> dict[str, float]:
    """Loss, energy MAE (meV/atom) and force MAE (meV/A) on ``frames``, and the largest force change under random
    rotations and reflections, relative to the largest force."""
    model.eval()
    losses, energy_errors, force_errors, changes, peaks = [], [], [], [], []
    gen = torch.Generator().manual_seed(7)
    for start in range(0, len(frames), 32):
        chunk = frames[start : start + 32]
        batch = collate(chunk)
        energy, forces = model(batch, create_graph=False)
        loss, de, df = loss_terms(energy, forces, batch, scales)
        losses.append(float(loss.detach()) * len(chunk))
        energy_errors.append(de.detach())
        force_errors.append(df.detach().flatten())
        rotations = random_orthogonal(len(chunk), gen)
        _, moved = model(collate(chunk, rotations), create_graph=False)
        turned = torch.cat([f @ rotations[i].T for i, f in enumerate(forces.detach().split(batch.atoms.tolist()))])
        changes.append(float((moved - turned).abs().max()))
        peaks.append(float(forces.abs().max()))
    return {
        "loss": sum(losses) / len(frames),
        "energy_mae_mev_atom": 1000 * float(torch.cat(energy_errors).mean()),
        "force_mae_mev_a": 1000 * float(torch.cat(force_errors).mean()),
        "force_equivariance_rel": max(changes) / max(peaks),
    }


def train(
    norm: str, batch_size: int, data: dict[str, list[Frame]], epochs: int, seed: int
) -> tuple[Potential, dict[str, Any]]:
    torch.manual_seed(seed)
    train_frames = data["train"]
    per_atom = torch.tensor([f.energy / len(f.species) for f in train_frames])
    scales = Scales(float(per_atom.std()), float(torch.cat([f.forces for f in train_frames]).square().mean().sqrt()))
    model = Potential(norm, reference_energies(train_frames), scales.forces)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3 * math.sqrt(batch_size / 16))
    gen = torch.Generator().manual_seed(seed)
    best: tuple[float, dict[str, torch.Tensor]] = (math.inf, {})
    step_losses: list[float] = []
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(train_frames), generator=gen).tolist()
        steps = range(0, len(order), batch_size)
        for start in progress(steps, f"{norm} norm, batch {batch_size}"):
            batch = collate([train_frames[i] for i in order[start : start + batch_size]])
            loss, _, _ = loss_terms(*model(batch, create_graph=True), batch, scales)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step_losses.append(float(loss.detach()))
        val = evaluate(model, data["val"], scales)["loss"]
        if val < best[0]:
            best = (val, {k: v.clone() for k, v in model.state_dict().items()})
    seconds = time.perf_counter() - started
    model.load_state_dict(best[1])
    tenth = max(1, len(step_losses) // 10)
    result = {
        "norm": norm,
        "batch_size": batch_size,
        "epochs": epochs,
        "first_loss": statistics.fmean(step_losses[:tenth]),
        "last_loss": statistics.fmean(step_losses[-tenth:]),
        "val_loss": best[0],
        **evaluate(model, data["test"], scales),
        "train_seconds": seconds,
    }
    return model, result


def structure_inputs(frame: Frame) -> tuple[torch.Tensor, ...]:
    src, dst = edges(frame.pos)
    return frame.pos, frame.species, src, dst


def export_package(model: Potential, example: tuple[torch.Tensor, ...], path: Path) -> torch.fx.GraphModule:
    """Trace the energy-and-forces function, export it with dynamic atoms and edges, compile it with AOTInductor.

    ``torch.export`` cannot trace ``torch.autograd.grad`` through e3nn's spherical harmonics and radial basis here
    (a backward formula leaves a fake constant in the program), so the function is traced first with ``make_fx``, which
    records the backward as ordinary operations; the traced graph exports like any other."""
    from torch.fx.experimental.proxy_tensor import make_fx

    function = EnergyAndForces(model).eval()
    for p in function.parameters():
        p.requires_grad_(False)  # deployed weights are constants
    traced = make_fx(function, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*example)
    atoms, pairs = torch.export.Dim("atoms", min=2, max=4096), torch.export.Dim("edges", min=2, max=1 << 20)
    program = torch.export.export(traced, example, dynamic_shapes=({0: atoms}, {0: atoms}, {0: pairs}, {0: pairs}))
    torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    return traced


FRESH_PROCESS = """
import sys, torch
import eqnorm  # registers the eqnorm ops the package calls
runner = torch._inductor.aoti_load_package(sys.argv[1])
inputs = torch.load(sys.argv[2])
torch.save([runner(*x) for x in inputs], sys.argv[3])
"""


def compare_in_fresh_process(package: Path, model: Potential, frames: list[Frame], out: Path) -> tuple[float, float]:
    """The package, run in a new Python process, against eager on ``frames``: the largest force difference relative
    to the largest force, and the largest energy difference in eV."""
    inputs = [structure_inputs(f) for f in frames]
    torch.save(inputs, out / "inputs.pt")
    subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(package), str(out / "inputs.pt"), str(out / "outputs.pt")],
        check=True,
    )
    packaged = torch.load(out / "outputs.pt")
    eager = EnergyAndForces(model).eval()
    force_difference = energy_difference = 0.0
    for x, (energy, forces) in zip(inputs, packaged, strict=True):
        e, f = (t.detach() for t in eager(*x))
        force_difference = max(force_difference, float((forces - f).abs().max() / f.abs().max()))
        energy_difference = max(energy_difference, float((energy - e).abs()))
    (out / "inputs.pt").unlink()
    (out / "outputs.pt").unlink()
    return force_difference, energy_difference


class PackageCalculator(Calculator):
    """An ASE calculator whose energy and forces come from an AOTInductor package."""

    implemented_properties = ["energy", "forces"]  # noqa: RUF012 (ASE's own class attribute)

    def __init__(self, runner: Any) -> None:
        super().__init__()
        self.runner = runner

    def calculate(self, atoms: Any = None, properties: Any = None, system_changes: Any = all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        pos = torch.tensor(self.atoms.positions, dtype=torch.float32)
        species = torch.tensor([ELEMENTS.index(s) for s in self.atoms.get_chemical_symbols()])
        energy, forces = self.runner(pos, species, *edges(pos))
        self.results = {"energy": float(energy), "forces": forces.double().numpy()}


def nve(calculator: Any, frame: Frame, steps: int) -> list[float]:
    """Total energy (eV) along ``steps`` of velocity Verlet at 1 fs from ``frame`` with 600 K velocities."""
    atoms = Atoms([ELEMENTS[int(z)] for z in frame.species], positions=frame.pos.double().numpy())
    thermalize_momenta(atoms, 600, rng=np.random.default_rng(0))
    atoms.calc = calculator
    dynamics = VelocityVerlet(atoms, 1 * units.fs)
    totals = [atoms.get_total_energy()]
    for _ in range(steps):
        dynamics.run(1)
        totals.append(atoms.get_total_energy())
    return totals


def median_seconds(call: Any, repeats: int) -> float:
    """Median seconds per ``call()`` over ``repeats`` timed calls after one warm-up (``torch.utils.benchmark``)."""
    timer = torch.utils.benchmark.Timer("call()", globals={"call": call}, num_threads=torch.get_num_threads())
    call()
    return statistics.median(timer.timeit(1).mean for _ in range(max(1, repeats)))


def deploy(model: Potential, data: dict[str, list[Frame]], out: Path, quick: bool) -> tuple[list[dict], list[dict]]:
    small = next(f for f in data["test"] if len(f.species) == 13)
    large = next(f for f in data["test"] if len(f.species) == 19)
    package = out / "potential.pt2"
    started = time.perf_counter()
    traced = export_package(model, structure_inputs(large), package)
    compile_seconds = time.perf_counter() - started
    force_difference, energy_difference = compare_in_fresh_process(package, model, [small, large], out)
    runner = torch._inductor.aoti_load_package(str(package))

    steps = 200
    totals = {"package": nve(PackageCalculator(runner), large, steps), "EMT": nve(EMT(), large, steps)}
    md_rows = [  # the change from t = 0 in meV: the CSV keeps 6 digits, too few for totals of tens of eV
        {
            "step": i,
            "time_fs": float(i),
            "package_change_mev": 1000 * (totals["package"][i] - totals["package"][0]),
            "emt_change_mev": 1000 * (totals["EMT"][i] - totals["EMT"][0]),
        }
        for i in range(steps + 1)
    ]

    x = structure_inputs(large)
    eager = EnergyAndForces(model).eval()
    repeats = 10 if quick else 50
    timings = {"eager": median_seconds(lambda: eager(*x), repeats)}
    if not quick:  # another minute of compilation: the smoke run times eager and the package only
        compiled = torch.compile(traced, dynamic=True)
        timings["torch.compile"] = median_seconds(lambda: compiled(*x), repeats)
    timings["AOTInductor package"] = median_seconds(lambda: runner(*x), repeats)
    atoms = len(large.species)
    drift = {k: (v[-1] - v[0]) / atoms for k, v in totals.items()}
    spread = {k: (max(v) - min(v)) / atoms for k, v in totals.items()}
    deploy_rows = [
        {"what": "package vs eager, max force difference / max force (13 and 19 atoms)", "value": force_difference},
        {"what": "package vs eager, max energy difference, meV (13 and 19 atoms)", "value": 1000 * energy_difference},
        {"what": "export and AOTInductor compile, seconds", "value": compile_seconds},
        *({"what": f"NVE 200 fs energy drift, {k}, meV/atom", "value": 1000 * v} for k, v in drift.items()),
        *({"what": f"NVE 200 fs total-energy spread, {k}, meV/atom", "value": 1000 * v} for k, v in spread.items()),
        *({"what": f"one energy+forces call, {k}, ms", "value": 1000 * v} for k, v in timings.items()),
    ]
    return deploy_rows, md_rows


def plot(
    summary: list[dict[str, Any]],
    md_rows: list[dict[str, Any]],
    norms: list[str],
    batch_sizes: list[int],
    seeds: int,
    path: Path,
) -> None:
    """Test errors against batch size per norm, and the total energy along the NVE run."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for i, norm in enumerate(norms):
        mine = [r for r in summary if r["norm"] == norm]
        sizes = [r["batch_size"] for r in mine]
        for ax, value, spread in (
            (axes[0], "energy_mae_mev_atom", "energy_std"),
            (axes[1], "force_mae_mev_a", "force_std"),
        ):
            values, errors = [r[value] for r in mine], [r[spread] for r in mine]
            ax.errorbar(sizes, values, yerr=errors, capsize=3, label=f"{norm} norm", **distinct_style(i))
    for ax, label in ((axes[0], "test energy MAE (meV/atom)"), (axes[1], r"test force MAE (meV/$\AA$)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
        ax.set_xlabel(f"batch size (clusters per step), mean and std over {seeds} seed(s)")
        ax.set_ylabel(label)
        ax.set_yscale("log")  # batch norm at batch 1 is ten times off; the others differ by tens of percent
        ax.legend(fontsize=8)
    curves = (("package_change_mev", "model (AOTInductor package)", "-"), ("emt_change_mev", "EMT", "--"))
    for key, label, style in curves:
        axes[2].plot([r["time_fs"] for r in md_rows], [r[key] for r in md_rows], style, label=label)
    axes[2].set_xlabel("time (fs), velocity Verlet, 1 fs steps")
    axes[2].set_ylabel(r"$E_{\mathrm{total}}(t) - E_{\mathrm{total}}(0)$ (meV)")
    axes[2].legend(fontsize=8)
    save_figure(fig, path)


def main() -> None:
    args = parse_args("forces_e3nn", __doc__, options, seeds=2)
    epochs = args.epochs or (1 if args.quick else 5)
    data = make_data(args.quick)
    print(f"frames: {len(data['train'])} train, {len(data['val'])} validation, {len(data['test'])} test")
    runs, kept = [], None
    for norm in args.norms:
        for batch_size in args.batch_sizes:
            for seed in range(args.seeds):
                model, result = train(norm, batch_size, data, epochs, seed)
                runs.append({"seed": seed, **result})
                print(
                    f"{norm:>5} norm, batch {batch_size:>2}, seed {seed}: energy MAE "
                    f"{result['energy_mae_mev_atom']:.2f} meV/atom, force MAE {result['force_mae_mev_a']:.1f} meV/A, "
                    f"equivariance {result['force_equivariance_rel']:.1e}",
                    flush=True,
                )
                if seed == 0 and (kept is None or (norm == "group" and batch_size == 4)):
                    kept = model  # deployed: group norm at batch 4 (or the first model trained)
    write_csv(args.out / "runs.csv", runs)
    summary = []
    for norm in args.norms:
        for batch_size in args.batch_sizes:
            mine = [r for r in runs if r["norm"] == norm and r["batch_size"] == batch_size]
            energy, energy_std = mean_std([r["energy_mae_mev_atom"] for r in mine])
            forces, forces_std = mean_std([r["force_mae_mev_a"] for r in mine])
            summary.append(
                {
                    "norm": norm,
                    "batch_size": batch_size,
                    "energy_mae_mev_atom": energy,
                    "energy_std": energy_std,
                    "force_mae_mev_a": forces,
                    "force_std": forces_std,
                    "force_equivariance_rel": max(r["force_equivariance_rel"] for r in mine),
                    "train_seconds": sum(r["train_seconds"] for r in mine) / len(mine),
                }
            )
    write_csv(args.out / "summary.csv", summary)

    assert kept is not None
    deploy_rows, md_rows = deploy(kept, data, args.out, args.quick)
    write_csv(args.out / "deployment.csv", deploy_rows)
    write_csv(args.out / "nve.csv", md_rows)

    plot(summary, md_rows, args.norms, args.batch_sizes, args.seeds, args.out / "forces_e3nn.png")

    print("\n| norm | batch | energy MAE (meV/atom) | force MAE (meV/A) | force equivariance (rel.) | train s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in summary:
        print(
            f"| {r['norm']} | {r['batch_size']} | {r['energy_mae_mev_atom']:.1f} ± {r['energy_std']:.1f} | "
            f"{r['force_mae_mev_a']:.0f} ± {r['force_std']:.0f} | {r['force_equivariance_rel']:.1e} | "
            f"{r['train_seconds']:.0f} |"
        )
    print("\n| deployment | value |\n|---|---:|")
    for r in deploy_rows:
        print(f"| {r['what']} | {r['value']:.3g} |")
    finish(args)


if __name__ == "__main__":
    main()
