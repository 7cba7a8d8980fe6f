"""Looking inside adapters (``adapterkit.inspect``): the ``diff`` command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .conventions import INPUT, _require, handles_errors, print_json, threads_option


def _degrees(angles: Any) -> str:
    import math

    if not angles:
        return "-"
    lo, hi = math.degrees(min(angles)), math.degrees(max(angles))
    return f"{lo:.1f}-{hi:.1f}"


def _percent(x: float | None, bound: float | None = None) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}" + (f"±{100 * bound:.1f}" if bound else "")


@click.command("diff", short_help="Compare two adapters module by module: overlap, subspace angles, sign conflicts.")
@click.argument("a", type=INPUT)
@click.argument("b", type=INPUT)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (angles in radians).")
@click.option("--device", default=None, help="torch device for the math, e.g. cuda (default: cpu).")
@click.option("--conflict", type=click.Choice(["block", "sample", "off"]), default="block", show_default=True,
              help="Sign conflicts: counted exactly row block by row block, estimated from sampled rows (with a 95% bound), or skipped.")
@click.option("--sample-rows", type=click.IntRange(min=1), default=256, show_default=True, help="Rows per module for --conflict sample.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the row sample.")
@click.option("--top", type=click.IntRange(min=0), default=5, show_default=True, help="Name this many of the most conflicting modules in the summary.")
@handles_errors
@threads_option
def diff_command(a: Path, b: Path, as_json: bool, device: str | None, conflict: str, sample_rows: int, seed: int, top: int) -> None:
    """Compare the adapters A and B (same kind) module by module and report, for LoRA: ‖ΔW‖ of
    each, the cosine of ΔW_a and ΔW_b, the principal angles between their column spaces and
    between their row spaces, the share of ΔW_b's energy inside ΔW_a's column / row space, and
    the fraction of entries whose signs conflict (what TIES faces); all from the factors except
    the sign count, which works row block by row block.  IA3 compares l - 1, prompt-learning
    adapters their virtual-token embeddings (cosine per token).  Modules of one adapter only are
    listed.  The last line sums up: the energy-weighted cosine and the modules that conflict
    most.  Exit 0 (a report, not a check), 2 on error (different kinds: adapters-incompatible).

    \b
    Examples:
      adapterkit diff my-lora other-lora
      adapterkit diff my-lora other-lora --conflict sample --top 10
      adapterkit diff big-a big-b --device cuda --json
    """
    a = _require(a)
    b = _require(b)
    from ..inspect.compare import diff as run
    from ..io.array_store import ArrayStore, load_arrays
    from ..io.reader import load

    first = second = None
    if conflict == "off" and device is None:  # nothing torch-only to do: numpy arrays, no torch import
        first = load_arrays(a)  # a .bin is read into torch tensors: then both sides are torch's
        second = load_arrays(b) if isinstance(first.tensors, ArrayStore) else load(b)
        if isinstance(first.tensors, ArrayStore) and not isinstance(second.tensors, ArrayStore):
            first = load(a)  # the one re-read: b was a .bin
    report = run(first or load(a), second or load(b), device=device or "cpu", conflict=conflict, sample_rows=sample_rows, seed=seed)
    if as_json:
        print_json({**report.to_dict(), "summary": report.summary(top)})
        return
    rows = [("module", "‖ΔW_a‖", "‖ΔW_b‖", "cos", "θcol°", "θrow°", "E_col%", "E_row%", "conflict%")]
    for m in report.modules:
        if m.present != "both":
            norm = f"{m.norm_a if m.present == 'a' else m.norm_b:.4g}"
            rows.append((m.name, norm if m.present == "a" else "(absent)", norm if m.present == "b" else "(absent)",
                         "-", "-", "-", "-", "-", "-"))
            continue
        rows.append((m.name, f"{m.norm_a:.4g}", f"{m.norm_b:.4g}", "n/a" if m.cosine is None else f"{m.cosine:+.3f}",
                     _degrees(m.col_angles), _degrees(m.row_angles), _percent(m.energy_in_col), _percent(m.energy_in_row),
                     _percent(m.conflict, m.conflict_bound)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    if report.conflict_mode == "sample":
        click.echo(f"conflict: sampled {sample_rows} rows per module (seed {seed}); ± is the {report.confidence:.0%} bound (Serfling)")
    click.echo(report.summary(top))
