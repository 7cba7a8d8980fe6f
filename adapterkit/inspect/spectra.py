"""The singular-value spectrum of every LoRA module, and a picture of it: ``spectrum`` and
``plot_spectrum``.

Each module's singular values are those of ΔW = scaling·B·A, exact from the factors (two thin
QRs and an r×r SVD, :func:`adapterkit.linalg.factored_svd`; never the dense matrix).  For each
module the cumulative energy curve Σ_{i≤k} σᵢ² / Σ σᵢ² and the smallest rank keeping 90, 95
and 99% of the energy; for the adapter, the ranks :func:`adapterkit.rebalance` would give each
module at a few budgets (average ranks R/8, R/4, R/2 for the largest rank R: the budget of a
uniform ``resize`` at that rank).

``plot_spectrum`` draws these numbers (matplotlib's Agg canvas, no display) into one PNG with
three panels and returns them, so that what is drawn can be checked.  matplotlib is the
optional extra ``plot``: ``pip install 'adapterkit[plot]'``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..adapter import Adapter
from ..devices import resolve_device
from ..errors import UnsupportedError, WriteError
from ..io.atomic import write_new
from ..io.outputs import adapter_inputs, check_output
from ..linalg import select_rank
from ..ops.lowrank import _lora_only
from ..ops.rebalancing import allocate
from ..ops.resizing import decompose

ENERGY_LEVELS = (0.90, 0.95, 0.99)


@dataclass(frozen=True)
class ModuleSpectrum:
    """One module: its singular values (descending, min(m, n, r) of them, zeros included), the
    cumulative energy fraction after each, the smallest rank keeping each of
    :data:`ENERGY_LEVELS` (``ranks[0.95]``), and the parameters one rank costs (m + n)."""

    name: str
    singular_values: tuple[float, ...]
    cumulative_energy: tuple[float, ...]
    ranks: dict[float, int]
    rank_cost: int


@dataclass(frozen=True)
class Spectrum:
    """Every module's spectrum, and ``budgets``: (average rank, budget in parameters, the rank
    rebalance gives each module in ``modules`` order)."""

    modules: tuple[ModuleSpectrum, ...]
    budgets: tuple[tuple[int, int, tuple[int, ...]], ...]


def spectrum(adapter: Adapter, *, device: Any = "cpu", average_ranks: tuple[int, ...] | None = None) -> Spectrum:
    """The numbers ``plot_spectrum`` draws (see the module doc).

    Args:
        adapter: a LoRA adapter (not DoRA).
        device: where the factored SVDs run.
        average_ranks: the rebalance budgets as average ranks (default R/8, R/4, R/2, at least 1).

    Raises:
        UnsupportedError: ``not-supported`` for a non-LoRA or DoRA adapter.
    """
    _lora_only(adapter, "spectrum")
    dev = resolve_device(device)
    out, spectra = [], []
    for name in adapter.modules:
        f, svd = decompose(adapter, name, device=dev, what="spectrum")
        S = svd.S.double().cpu()
        sq = S.square()
        total = float(sq.sum())
        cum = (sq.cumsum(0) / total).tolist() if total > 0 else [1.0] * int(S.numel())
        ranks = {level: select_rank(S, energy=level) for level in ENERGY_LEVELS}
        out.append(ModuleSpectrum(name, tuple(S.tolist()), tuple(cum), ranks, f.shape[0] + f.shape[1]))
        spectra.append(S)
    budgets = []
    if out:
        top = max(len(m.singular_values) for m in out)
        wanted = average_ranks if average_ranks is not None else tuple(sorted({max(1, top // d) for d in (8, 4, 2)}))
        costs = [m.rank_cost for m in out]
        for avg in wanted:
            budget = avg * sum(costs)
            ranks, _ = allocate(spectra, costs, budget)
            budgets.append((avg, budget, tuple(ranks)))
    return Spectrum(tuple(out), tuple(budgets))


def _matplotlib() -> Any:
    try:
        import matplotlib  # noqa: F401  (the package first: a hidden one must fail here)
        from matplotlib.figure import Figure
    except ImportError:
        raise UnsupportedError("plotting needs matplotlib: pip install 'adapterkit[plot]'", code="extra-missing",
                               key="matplotlib", expected="installed", actual="not importable") from None
    return Figure


def _draw(data: Spectrum, title: str) -> bytes:
    Figure = _matplotlib()
    fig = Figure(figsize=(15, 4.4), dpi=80, layout="constrained")
    ax_s, ax_e, ax_r = fig.subplots(1, 3)
    many = len(data.modules) > 12
    style = {"linewidth": 0.8, "alpha": 0.45} if many else {"linewidth": 1.2, "marker": "o", "markersize": 3}
    colors = {0.90: "tab:green", 0.95: "tab:orange", 0.99: "tab:red"}
    for m in data.modules:
        ks = range(1, len(m.singular_values) + 1)
        shown = [(k, s) for k, s in zip(ks, m.singular_values) if s > 0]
        if shown:
            ax_s.plot(*zip(*shown), label=None if many else m.name, **style)
        ax_e.plot(list(ks), m.cumulative_energy, color="tab:blue", **style)
        for level, k in m.ranks.items():
            if k <= len(m.cumulative_energy):
                ax_e.plot([k], [m.cumulative_energy[k - 1]], "o", color=colors[level], markersize=4, alpha=0.7)
    ax_s.set_yscale("log")
    ax_s.set(title="singular values of ΔW per module", xlabel="index", ylabel="σ")
    if not many and data.modules:
        ax_s.legend(fontsize=6)
    for level, color in colors.items():
        ax_e.axhline(level, color=color, linestyle="--", linewidth=0.8, label=f"{level:.0%} (dots: rank keeping it)")
    ax_e.set(title="cumulative energy Σσ²", xlabel="rank", ylabel="fraction of ‖ΔW‖²")
    ax_e.legend(fontsize=7, loc="lower right")
    x = list(range(len(data.modules)))
    for avg, budget, ranks in data.budgets:
        ax_r.step(x, ranks, where="mid", label=f"average rank {avg} ({budget:,} params)")
    ax_r.set(title="ranks rebalance chooses per module", xlabel="module (file order)", ylabel="rank")
    if data.budgets:
        ax_r.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_spectrum(adapter: Adapter, path: str | Path, *, device: Any = "cpu", average_ranks: tuple[int, ...] | None = None,
                  overwrite: bool = False) -> Spectrum:
    """Draw the adapter's spectrum (see the module doc) into the PNG file ``path`` (staged in a
    hidden folder beside it and renamed into place, never over a file that appeared meanwhile
    unless ``overwrite``) and return the numbers drawn.

    Raises:
        UnsupportedError: ``extra-missing`` without matplotlib (``pip install 'adapterkit[plot]'``);
            ``not-supported`` for a non-LoRA or DoRA adapter.
        WriteError: ``output-exists`` when ``path`` exists and not ``overwrite``;
            ``overwrite-input`` when it is, holds or lies inside the adapter's files; ``write-failed``.
    """
    path = Path(path)
    _matplotlib()
    check_output(path, adapter_inputs(adapter, "adapter shown"))  # never over, into or around it
    if path.is_dir():
        raise WriteError("the plot's path is a directory", code="write-failed", path=path, expected="a file name", actual="directory")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise WriteError("output exists; pass overwrite=True (--overwrite) to replace it", code="output-exists", path=path,
                         expected="a path that does not exist", actual="existing file")
    data = spectrum(adapter, device=device, average_ranks=average_ranks)
    source = adapter.source
    label = "adapter" if source is None else source.parent.name if source.name.startswith("adapter_model") else source.name
    title = f"{label}: {len(data.modules)} LoRA modules, singular values of ΔW = scaling·B·A (exact, from the factors)"
    write_new(path, [_draw(data, title)], overwrite=overwrite, durable=False)  # refuses a file another writer made meanwhile
    return data
