"""The commands that make a new adapter from adapters: ``combine``, ``resize``, ``rebalance`` and ``prune``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .conventions import (
    INPUT,
    _count,
    _guard,
    _one_of,
    _plural,
    _require,
    _span,
    adapter_name_option,
    handles_errors,
    print_json,
    threads_option,
)

# adapterkit.ops.combining.METHODS, spelled out here so that --help does not import torch (a test keeps them equal)
COMBINE_METHODS = ("svd", "linear", "cat", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd",
                   "magnitude_prune", "magnitude_prune_svd")


def _parse_weights(text: str | None, count: int) -> list[float]:
    """``0.7,0.3`` -> [0.7, 0.3]; None -> 1.0 for each adapter."""
    if text is None:
        return [1.0] * count
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers such as 0.7,0.3", param_hint="--weights") from None


def _rank_text(adapter: Any) -> str:
    ranks = sorted({m.rank for m in adapter.modules.values() if hasattr(m, "rank")})
    if not ranks:
        return "-"
    return str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}..{ranks[-1]}"


@click.command("combine", options_metavar="-o OUT [OPTIONS]", short_help="Combine adapters into one (PEFT's add_weighted_adapter methods).")
@click.argument("adapters", nargs=-1, required=True, type=INPUT)
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Where to write the result (*.safetensors = one file, else a PEFT directory).")
@click.option("--weights", default=None, metavar="W1,W2,...", help="One weight per adapter, comma-separated, any sign (default: 1 each).")
@click.option("--method", type=click.Choice(COMBINE_METHODS), default="svd", show_default=True, help="How to combine (see the description above).")
@click.option("--rank", type=int, default=None, help="Rank of the result for svd, *_svd (default: the largest input rank) and linear (default: exact).")
@click.option("--density", type=float, default=None, help="Fraction of entries kept, in (0, 1]; required by ties, dare_* and magnitude_prune*.")
@click.option("--majority-sign", type=click.Choice(["total", "frequency"]), default="total", show_default=True, help="TIES' sign election.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of DARE's random masks (one generator per module).")
@click.option("--svd-clamp", type=float, default=None, metavar="Q", help="Clamp the SVD factors at their Q-quantile, as PEFT does.")
@click.option("--device", default="cpu", show_default=True, help="torch device for the math, e.g. cuda.")
@click.option("--fan-in-fan-out", "fan_in_fan_out", type=click.Choice(["true", "false"]), default=None,
              help="The result's fan_in_fan_out (true: the 2-D modules' base weights are (in, out), as transformers' "
                   "Conv1D); needed where the adapters' saved flags disagree on a module.")
@click.option("--base", type=INPUT, default=None, help="LoHa/LoKr inputs: the base checkpoint, whose layers give a convolution's LoRA layout.")
@click.option("--overwrite", is_flag=True, help="Replace OUT whole if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@handles_errors
@threads_option
def combine_command(adapters: tuple[Path, ...], out: Path, weights: str | None, method: str, rank: int | None, density: float | None,
                    majority_sign: str, seed: int, svd_clamp: float | None, device: str, overwrite: bool, as_json: bool,
                    fan_in_fan_out: str | None = None, base: Path | None = None) -> None:
    """Combine the LoRA (or IA3) ADAPTERS with weights into one adapter written to OUT, with
    the methods of PEFT's add_weighted_adapter: cat and linear (exactly the weighted sum of the
    ΔW's), svd (its best rank-k approximation, from the factors), ties, dare_linear, dare_ties,
    magnitude_prune (on the A's and B's apart, as PEFT) and their *_svd forms (on the dense ΔW's,
    then an SVD).  The modules are the union of the adapters'; the result has scaling 1 and loads
    in PEFT.  Unlike PEFT: results with rank patterns reload and modules_to_save is refused
    (adapterkit/differences.py lists every difference); DoRA is refused, as in PEFT.  IA3
    combines by linear only; LoHa and LoKr combine as the LoRA each equals.

    \b
    Examples:
      adapterkit combine a b --weights 0.7,0.3 --method svd --rank 16 -o ab
      adapterkit combine a b --method cat -o ab.safetensors
      adapterkit combine a b c --weights 1,1,-0.5 --method dare_ties --density 0.3 --seed 7 -o abc
    """
    given = _parse_weights(weights, len(adapters))
    from ..arguments import check_combine

    check_combine(len(adapters), given, method, rank, density, svd_clamp)
    adapters = tuple(_require(p) for p in adapters)
    _guard(out, *(("ADAPTERS", p) for p in adapters), ("--base", base))
    import time

    from ..hub.paths import load
    from ..io.writer import save
    from ..ops.combining import combine

    start = time.perf_counter()
    inputs = [load(p) for p in adapters]
    orient = None if fan_in_fan_out is None else fan_in_fan_out == "true"
    result = combine(inputs, given, method, rank=rank, density=density, majority_sign=majority_sign, seed=seed, fan_in_fan_out=orient,
                     svd_clamp=svd_clamp, device=device, names=[str(p) for p in adapters], base=base)
    written = save(result, out, overwrite=overwrite)
    seconds = time.perf_counter() - start
    if as_json:
        print_json({
            "out": str(written), "method": method, "kind": result.peft_type,
            "adapters": [{"path": str(p), "weight": w, "modules": len(a.modules), "ranks": _rank_text(a)} for p, w, a in zip(adapters, given, inputs)],
            "modules": len(result.modules), "ranks": _rank_text(result), "tensors": len(result.tensors), "seconds": round(seconds, 3),
        })
    else:
        names = ", ".join(f"{p} x{w:g}" for p, w in zip(adapters, given))
        before = " + ".join(_rank_text(a) for a in inputs)
        click.echo(f"combined {names} by {method} into {written}: {_plural(len(result.modules), 'module')}, "
                   f"ranks {before} -> {_rank_text(result)}; {seconds:.1f} s")


def _surgery_options(func):
    """IN OUT plus the options resize, rebalance and prune share."""
    options = [
        click.argument("src", metavar="IN", type=INPUT),
        click.argument("out", type=click.Path(path_type=Path)),
        adapter_name_option,
        click.option("--device", default=None, help="torch device for the fp32 math, e.g. cuda (default: cpu)."),
        click.option("--overwrite", is_flag=True, help="Replace OUT whole if it exists."),
        click.option("--json", "as_json", is_flag=True, help="Print the report as JSON."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _surgery(src: Path, out: Path, adapter_name: str | None, overwrite: bool, operation: Any) -> tuple[Any, Any, Path]:
    """Load IN (checked as strictly as `load`), run ``operation(adapter)`` and save its adapter to
    OUT; returns (input, report, path written).  The result is saved as coming from IN, so that
    the writer refuses to replace the input even with --overwrite."""
    from dataclasses import replace

    from ..hub.paths import load
    from ..io.writer import save

    given = load(src, adapter_name=adapter_name)
    result, report = operation(given)
    return given, report, save(replace(result, source=given.source), out, overwrite=overwrite)


def _print_resize(verb: str, src: Path, written: Path, report: Any, as_json: bool) -> None:
    if as_json:
        print_json({"in": str(src), "out": str(written), **report.to_dict()})
        return
    mods = report.modules
    click.echo(
        f"{verb} {src} -> {written}: {_plural(len(mods), 'module')} ({report.rule}), "
        f"rank {_span([m.rank_before for m in mods])} -> {_span([m.rank_after for m in mods])}, "
        f"energy kept {100 * report.energy_kept:.2f}%, ‖ΔW - ΔW'‖_F {report.error:.3g}, "
        f"params {_count(report.params_before)} -> {_count(report.params_after)}"
    )


@click.command(short_help="Change a LoRA's ranks: fixed, by kept energy or by σ ratio.")
@_surgery_options
@click.option("--rank", type=int, default=None, help="This rank for every module (at or above a module's rank: lossless).")
@click.option("--energy", type=float, default=None, help="Per module, the smallest rank keeping this fraction of ‖ΔW‖² (0-1].")
@click.option("--sv-ratio", type=float, default=None, help="Per module, the singular values within this ratio of the largest (>= 1).")
@click.option("--balanced/--no-balanced", default=True, show_default=True,
              help="Canonical factors B = U·√Σ, A = √Σ·Vᵀ (--no-balanced: B = U·Σ, A = Vᵀ).")
@handles_errors
@threads_option
def resize(src: Path, out: Path, adapter_name: str | None, device: str | None, overwrite: bool, as_json: bool,
           rank: int | None, energy: float | None, sv_ratio: float | None, balanced: bool) -> None:
    """Rewrite the LoRA adapter IN with new ranks and write OUT.  Each module's ΔW is decomposed
    exactly from its factors (never the dense matrix) and truncated: the best approximation of
    that rank.  The result has scaling 1 (alpha = r, differing ranks as rank_pattern/alpha_pattern),
    loads in PEFT, and keeps modules_to_save and trained biases.  Not for DoRA.

    \b
    Examples:
      adapterkit resize my-lora small-lora --rank 16
      adapterkit resize my-lora lean.safetensors --energy 0.95 --device cuda
      adapterkit resize my-lora canonical --rank 64      # at its own rank: lossless, balanced factors
    """
    _one_of(rank=rank, energy=energy, sv_ratio=sv_ratio)
    from ..arguments import check_resize

    check_resize(rank, energy, sv_ratio)
    src = _require(src)
    _guard(out, ("IN", src))
    from ..ops.resizing import resize as run

    _, report, written = _surgery(src, out, adapter_name, overwrite,
                                  lambda a: run(a, rank=rank, energy=energy, sv_ratio=sv_ratio, balanced=balanced, device=device or "cpu"))
    _print_resize("resized", src, written, report, as_json)


@click.command(short_help="Spread a parameter budget over a LoRA's modules by energy.")
@_surgery_options
@click.option("--budget", type=int, default=None, help="Total factor parameters, Σ rank·(out + in).")
@click.option("--rank", type=int, default=None, help="Average rank instead: the budget of a uniform --rank resize.")
@click.option("--balanced/--no-balanced", default=True, show_default=True,
              help="Canonical factors B = U·√Σ, A = √Σ·Vᵀ (--no-balanced: B = U·Σ, A = Vᵀ).")
@handles_errors
@threads_option
def rebalance(src: Path, out: Path, adapter_name: str | None, device: str | None, overwrite: bool, as_json: bool,
              budget: int | None, rank: int | None, balanced: bool) -> None:
    """Give each module of the LoRA adapter IN its own rank so that a total budget of factor
    parameters keeps the most of Σ‖ΔW‖² (largest σ² per parameter first, one rank per module at
    least), and write OUT.  Never keeps less energy than a uniform resize with the same budget.

    \b
    Examples:
      adapterkit rebalance my-lora balanced-lora --rank 16
      adapterkit rebalance my-lora out --budget 20000000 --json
    """
    _one_of(budget=budget, rank=rank)
    from ..arguments import positive_int

    positive_int("--budget", budget)
    positive_int("--rank", rank)
    src = _require(src)
    _guard(out, ("IN", src))
    from ..ops.rebalancing import rebalance as run

    _, report, written = _surgery(src, out, adapter_name, overwrite,
                                  lambda a: run(a, budget=budget, rank=rank, balanced=balanced, device=device or "cpu"))
    _print_resize("rebalanced", src, written, report, as_json)


def _parse_layers(text: str | None) -> list[int] | None:
    """``0,1,5-7`` -> [0, 1, 5, 6, 7]."""
    if text is None:
        return None
    import re

    layers: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m or (m[2] is not None and int(m[2]) < int(m[1])):
            raise click.BadParameter(f"{text!r} is not a list of layers such as 0,1,5-7", param_hint="--layers")
        layers += range(int(m[1]), int(m[2] or m[1]) + 1)
    return layers


@click.command(short_help="Drop modules from an adapter by name, layer or energy.")
@_surgery_options
@click.option("--modules", default=None, metavar="REGEX", help="Drop modules whose name contains a match (re.search).")
@click.option("--layers", default=None, metavar="LIST", help="Drop the modules of these layers, e.g. 0,1,5-7 (PEFT's layer index).")
@click.option("--min-energy", type=float, default=None, help="Drop modules holding less than this fraction of Σ‖ΔW‖² (LoRA).")
@click.option("--keep-fraction", type=float, default=None, help="Keep this fraction of the modules, the largest ‖ΔW‖ first (LoRA).")
@handles_errors
@threads_option
def prune(src: Path, out: Path, adapter_name: str | None, device: str | None, overwrite: bool, as_json: bool,
          modules: str | None, layers: str | None, min_energy: float | None, keep_fraction: float | None) -> None:
    """Drop modules from the adapter IN (LoRA incl. DoRA, or IA3) and write OUT: a module is
    dropped when any rule given drops it.  The dropped names go to exclude_modules, so PEFT does
    not re-create them on load, and rank/alpha pattern keys left matching nothing are removed.

    \b
    Examples:
      adapterkit prune my-lora out --layers 0,1,30-31
      adapterkit prune my-lora out --modules 'mlp\\.' --min-energy 0.001
      adapterkit prune my-lora out --keep-fraction 0.5 --json
    """
    wanted = _parse_layers(layers)
    if modules is None and wanted is None and min_energy is None and keep_fraction is None:
        raise click.UsageError("give at least one of --modules, --layers, --min-energy, --keep-fraction", ctx=click.get_current_context())
    from ..arguments import fraction

    fraction("--min-energy", min_energy, zero=True)
    fraction("--keep-fraction", keep_fraction)
    src = _require(src)
    _guard(out, ("IN", src))
    from ..ops.pruning import prune as run

    adapter, report, written = _surgery(src, out, adapter_name, overwrite, lambda a: run(
        a, modules=modules, layers=wanted, min_energy=min_energy, keep_fraction=keep_fraction, device=device or "cpu"))
    if as_json:
        print_json({"in": str(src), "out": str(written), **report.to_dict()})
        return
    why: dict[str, int] = {}
    for rule in report.dropped.values():
        why[rule] = why.get(rule, 0) + 1
    energy = "" if report.energy_kept is None else f", energy kept {100 * report.energy_kept:.2f}%"
    click.echo(
        f"pruned {src} -> {written}: dropped {len(report.dropped)} of {len(adapter.modules)} modules "
        f"({', '.join(f'{rule}: {n}' for rule, n in why.items()) or 'none matched'}){energy}, "
        f"params {_count(report.params_before)} -> {_count(report.params_after)}"
    )
