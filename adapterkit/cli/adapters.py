"""The commands about one adapter: ``info``, ``validate``, ``convert`` and ``check``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .conventions import (
    CONSUMERS,
    INPUT,
    USAGE_CODES,
    _fail,
    _guard,
    _plural,
    _problem_json,
    _require,
    adapter_name_option,
    handles_errors,
    print_json,
    threads_option,
)


@click.command(short_help="Summarise an adapter: kind, format, variants, ranks, sizes, ‖ΔW‖.")
@click.argument("path", type=INPUT)
@adapter_name_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--no-modules", is_flag=True, help="Skip per-module statistics and value checks (no tensor data is read).")
@click.option("--device", default=None, help="torch device for per-module statistics, e.g. cuda.")
@click.option("--plot", type=click.Path(path_type=Path), default=None, metavar="OUT.png",
              help="Also draw every LoRA module's singular-value spectrum into this PNG (needs adapterkit[plot]).")
@click.option("--overwrite", is_flag=True, help="Replace the --plot file if it exists.")
@handles_errors
@threads_option
def info(path: Path, adapter_name: str | None, as_json: bool, no_modules: bool, device: str | None,
         plot: Path | None = None, overwrite: bool = False) -> None:
    """Summarise the adapter at PATH: kind, format (adapterkit version or PEFT profile), base model,
    variants (DoRA, rsLoRA, lora_bias, fan_in_fan_out), targets, rank histogram, parameters and
    bytes (adapter tensors and modules_to_save apart), other adapters in the same folder, and
    per-module ‖ΔW‖ computed from the factors, and how adapterkit made it (the recipe its
    operations record: combine, resize, ...).  Problems found on the way (NaN/Inf, warnings)
    are listed; exit 1 when one is an error.  Given a model checkpoint instead (what `adapterkit
    merge` writes), it summarises that: shards, tensors, dtypes, sizes, and what was merged.

    \b
    Examples:
      adapterkit info my-lora
      adapterkit info multi --adapter-name second --json
      adapterkit info big-lora --no-modules
      adapterkit info merged-model
      adapterkit info my-lora --plot spectrum.png
    """
    path = _require(path)
    if plot is not None:
        _guard(plot, ("PATH", path))
    from ..api import info as run_info
    from ..errors import ArgumentError
    from ..summary import render, render_checkpoint

    try:
        summary = run_info(path, adapter_name=adapter_name, no_modules=no_modules, device=device, plot=plot, overwrite=overwrite)
    except ArgumentError as exc:
        if exc.key != "plot":
            raise
        raise click.UsageError("--plot draws an adapter's spectrum; PATH is a model checkpoint", ctx=click.get_current_context()) from None
    if as_json:
        print_json(summary)
    elif summary.get("kind") == "model checkpoint":
        click.echo(render_checkpoint(summary))
    else:
        click.echo(render(summary))
    if plot is not None and not as_json:
        click.echo(f"spectrum plot:   {plot} ({_plural(summary['plot']['modules'], 'module')})")
    sys.exit(1 if any(p["severity"] == "error" for p in summary.get("problems", [])) else 0)


@click.command(short_help="Check every rule of the spec; report all problems at once.")
@click.argument("path", type=INPUT)
@adapter_name_option
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
@handles_errors
def validate(path: Path, adapter_name: str | None, as_json: bool) -> None:
    """Check the adapter at PATH against every rule of the spec (config, shapes, partners,
    dtypes, content digest, NaN/Inf) and report every problem at once.  Exit 0 valid, 1 invalid,
    2 usage error.  A recorded digest that disagrees is `digest-mismatch`, naming the config or
    the first tensor (sorted key order) that differs.

    \b
    Examples:
      adapterkit validate my-lora
      adapterkit validate adapter.safetensors --json
    """
    path = _require(path)
    from ..api import validate as run_validate

    problems = run_validate(path, adapter_name=adapter_name)
    errors = [p for p in problems if p.severity == "error"]
    if len(errors) == 1 and errors[0].code in USAGE_CODES:
        _fail(str(errors[0].to_error()))
    if as_json:
        print_json({"path": str(path), "valid": not errors, "problems": [_problem_json(p) for p in problems]})
    else:
        for p in problems:
            click.echo(str(p))
        verdict = "valid" if not errors else "INVALID"
        click.echo(f"{path}: {verdict} ({_plural(len(errors), 'error')}, {_plural(len(problems) - len(errors), 'warning')})")
    sys.exit(1 if errors else 0)


@click.command(short_help="Rewrite an adapter as a PEFT directory or one .safetensors file.")
@click.argument("src", type=INPUT)
@click.argument("out", type=click.Path(path_type=Path))
@adapter_name_option
@click.option("--form", type=click.Choice(["dir", "file"]), default=None,
              help="dir: PEFT's directory layout; file: one .safetensors with the config inside. "
                   "Default: from OUT's name (*.safetensors = file).")
@click.option("--overwrite", is_flag=True, help="Replace OUT whole if it exists (no file from before remains).")
@click.option("--for", "consumer", type=click.Choice(CONSUMERS), default=None,
              help="Rewrite for this consumer first (see `adapterkit check --help`); ΔW of every module unchanged.")
@click.option("--to", "to", type=click.Choice(["lora"]), default=None,
              help="The adapter as the LoRA it equals (LoHa: exactly, rank r², F64 factors unless truncated or --dtype).")
@click.option("--rank", type=click.IntRange(min=1), default=None, help="With --to lora: truncate every module to this rank.")
@click.option("--energy", type=float, default=None, help="With --to lora: per module, the smallest rank keeping this fraction of ‖ΔW‖².")
@click.option("--sv-ratio", type=float, default=None, help="With --to lora: per module, the singular values within this ratio of the largest.")
@click.option("--base", type=INPUT, default=None, help="With --to lora: the base checkpoint, whose layers decide a convolution's layout.")
@click.option("--dtype", type=click.Choice(["F64", "F32", "BF16", "F16"]), default=None, help="With --to lora: the factors' dtype.")
@handles_errors
def convert(src: Path, out: Path, adapter_name: str | None, form: str | None, overwrite: bool, consumer: str | None = None,
            to: str | None = None, rank: int | None = None, energy: float | None = None, sv_ratio: float | None = None,
            base: Path | None = None, dtype: str | None = None) -> None:
    """Rewrite the adapter at SRC to OUT, checked as strictly as `load` (an adapter that
    `validate` rejects is not written).  A PEFT directory in gives a PEFT-loadable directory or
    one .safetensors file out; SRC is never modified.

    \b
    Examples:
      adapterkit convert my-lora my-lora.safetensors      # one file, config inside
      adapterkit convert my-lora.safetensors my-lora-peft  # PEFT's directory layout
      adapterkit convert multi out --adapter-name second --overwrite
      adapterkit convert my-lora my-lora-vllm --for vllm   # scaling folded, r = the largest rank
      adapterkit convert my-loha my-lora --to lora --energy 0.99  # LoHa as LoRA, truncated
    """
    from ..io.forms import infer_form

    named = infer_form(out)
    if form is not None and form != named:
        raise click.UsageError(
            f"--form {form} contradicts the output name {out.name!r} (*.safetensors names one file; "
            f"anything else a directory); rename OUT or drop --form",
            ctx=click.get_current_context(),
        )
    if consumer is not None and consumer != "peft" and named == "file":
        raise click.UsageError(f"{consumer} reads PEFT's directory layout; name OUT without .safetensors",
                               ctx=click.get_current_context())
    src = _require(src)
    _guard(out, ("SRC", src), ("--base", base))
    from ..api import convert as run_convert

    given = {"rank": rank, "energy": energy, "sv_ratio": sv_ratio, "base": base, "dtype": dtype}
    lora = {k: v for k, v in given.items() if v is not None}
    if lora and to is None:
        raise click.UsageError(f"--{next(iter(lora)).replace('_', '-')} goes with --to lora", ctx=click.get_current_context())
    done = run_convert(src, out, adapter_name=adapter_name, form=named, overwrite=overwrite, consumer=consumer, to=to, lora=lora)
    click.echo(f"wrote {done.path} ({done.adapter.peft_type}, {_plural(len(done.adapter.tensors), 'tensor')}, form={done.form})")
    if done.to_lora is not None:
        _echo_to_lora(done.to_lora)


def _echo_to_lora(report) -> None:
    ranks = sorted(set(report.ranks.values()))
    click.echo(f"exact LoRA form of the {report.source_kind} adapter: rank {'/'.join(map(str, ranks))}, {report.dtype} factors")
    if report.assumed_linear:
        click.echo(f"written as Linear LoRA (no --base to say otherwise): {', '.join(report.assumed_linear)}")
    if report.truncated is not None:
        t = report.truncated
        click.echo(f"truncated ({t.rule}): {t.energy_kept:.2%} of ‖ΔW‖² kept; per module:")
        for m in t.modules:
            click.echo(f"  {m.name}  rank {m.rank_after}  {(m.kept / m.energy if m.energy else 1.0):.2%}")


@click.command("check", short_help="Check an adapter against a serving engine's rules (vLLM, TGI, llama.cpp, PEFT).")
@click.argument("path", type=INPUT)
@click.option("--for", "consumer", type=click.Choice(CONSUMERS), required=True, help="The consumer whose rules apply.")
@adapter_name_option
@click.option("--max-rank", type=click.IntRange(min=1), default=None, help="The engine's maximum rank (vLLM's --max-lora-rank).")
@click.option("--json", "as_json", is_flag=True, help="Print the violations as JSON.")
@handles_errors
def check_command(path: Path, consumer: str, adapter_name: str | None, max_rank: int | None, as_json: bool) -> None:
    """List every rule of the consumer that the adapter at PATH breaks: vLLM and TGI ignore
    rank_pattern/alpha_pattern (one lora_alpha/r scales every module; vLLM takes each module's
    rank from its tensors, so ranks may differ where every module's scaling is that one) and
    reject DoRA, modules_to_save and lora_B.bias, TGI needs one rank per module type,
    llama.cpp keeps one global alpha and ignores rsLoRA, PEFT needs a valid adapter.  Warnings
    (e.g. the --max-lora-rank vLLM needs) are listed but do not fail the check.
    Exit 0 complies, 1 violations listed, 2 error.  `adapterkit convert SRC OUT --for CONSUMER`
    writes a compliant copy with the same ΔW.

    \b
    Examples:
      adapterkit check my-lora --for vllm
      adapterkit check my-lora --for tgi --json
      adapterkit check my-lora --for vllm --max-rank 16
    """
    path = _require(path)
    from ..api import check

    problems = check(path, consumer, adapter_name=adapter_name, max_rank=max_rank)
    violations = [p for p in problems if p.severity == "error"]
    if as_json:
        print_json({"path": str(path), "for": consumer, "complies": not violations,
                    "problems": [_problem_json(p) for p in problems]})
    else:
        for p in problems:
            click.echo(str(p))
        verdict = "complies" if not violations else "does NOT comply"
        warned = f", {_plural(len(problems) - len(violations), 'warning')}" if len(problems) > len(violations) else ""
        click.echo(f"{path}: {verdict} with {consumer} ({_plural(len(violations), 'violation')}{warned})")
    sys.exit(1 if violations else 0)
