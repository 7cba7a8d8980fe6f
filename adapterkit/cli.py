"""The ``adapterkit`` command: a thin click layer over the library.

Conventions every command follows:
  * errors print one line, ``adapterkit: error: <file>: <key>: <what> [code]``, and exit 2
    (``--debug`` prints the traceback first, and still exits 2);
  * checks exit 0 when they pass and 1 when they fail;
  * an output that exists is refused unless ``--overwrite``, which replaces it whole;
    the form follows the name (``*.safetensors`` is one file, anything else a directory);
  * ``--help``, ``--version`` and usage errors never import torch (the library is
    imported inside the commands).
"""

from __future__ import annotations

import json
import sys
import traceback
from functools import wraps
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import AdapterkitError

CONSUMERS = ("vllm", "tgi", "llama.cpp", "peft")  # adapterkit.ops.export.CONSUMERS (not imported: no torch for --help)
USAGE_CODES = {"file-not-found", "not-an-adapter", "ambiguous-adapter", "adapter-not-found"}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"adapterkit: error: {message}", err=True)
    sys.exit(code)


def _debug() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get("debug"))


def handles_errors(func):
    """Turn AdapterkitError (and bad local state such as OSError) into one line and exit 2."""

    @wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (AdapterkitError, OSError, MemoryError) as exc:
            if _debug():
                traceback.print_exc()
            _fail(str(exc) if isinstance(exc, AdapterkitError) else f"{type(exc).__name__}: {exc}")

    return wrapper


def _require(text: str | Path) -> Path:
    """The input the user named, as a Path.  A missing local path is ``file-not-found`` before the
    library (and torch) is imported; a Hub repo id (``org/name[@revision]``, when no such local
    path exists and the text is not a path by its shape: ``./``, ``../``, ``/``, ``~``, or a first
    part that exists here) is fetched by the library (``adapterkit.hub.repo_id``).  Decided on the
    text as typed: ``Path`` would forget a leading ``./``."""
    from .hub.repo_id import missing_path

    missing = missing_path(text)
    if missing is not None:
        raise missing
    return Path(text)


def _guard(out: Path, *inputs: tuple[str, Path | None]) -> None:
    """The output guard (``adapterkit.io.outputs``) on the paths as the user named them, with the
    argument names as roles, before torch is imported; the library checks again what it read."""
    from .io.outputs import check_output

    check_output(out, inputs)


INPUT = click.Path()  # an input path or repo id, kept as typed (see _require)


class Group(click.Group):
    """The command group; usage errors become one line with the ``usage`` code, exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # plain `adapterkit`: the help, not an error
            click.echo(exc.ctx.get_help() if exc.ctx else self.get_help(click.Context(self)))
            sys.exit(0)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else "adapterkit"
            _fail(f"{exc.format_message()} (see '{where} --help') [usage]")
        except click.ClickException as exc:
            _fail(f"{exc.format_message()} [usage]")
        except click.Abort:
            _fail("interrupted [interrupted]", 130)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Print the traceback of an error before its one-line message.")
@click.version_option(__version__, prog_name="adapterkit")
def main(debug: bool) -> None:
    """Inspect, validate, convert and merge parameter-efficient fine-tuning adapters
    (LoRA, IA3, prompt tuning, prefix tuning, P-tuning) in PEFT's layout or adapterkit's single file.

    \b
    Examples:
      adapterkit info my-lora
      adapterkit validate my-lora --json
      adapterkit convert my-lora my-lora.safetensors
      adapterkit merge base-model my-lora merged-model

    Exit status: 0 success, 1 a check failed, 2 error (one line: ... [code]).
    """


adapter_name_option = click.option(
    "--adapter-name", default=None, metavar="NAME", help="PEFT subfolder of a non-default adapter (e.g. multi/NAME).",
)


@main.command(short_help="Summarise an adapter: kind, format, variants, ranks, sizes, ‖ΔW‖.")
@click.argument("path", type=INPUT)
@adapter_name_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--no-modules", is_flag=True, help="Skip per-module statistics and value checks (no tensor data is read).")
@click.option("--device", default=None, help="torch device for per-module statistics, e.g. cuda.")
@click.option("--plot", type=click.Path(path_type=Path), default=None, metavar="OUT.png",
              help="Also draw every LoRA module's singular-value spectrum into this PNG (needs adapterkit[plot]).")
@click.option("--overwrite", is_flag=True, help="Replace the --plot file if it exists.")
@handles_errors
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
    from .hub.paths import local_path
    from .io.reader import open_adapter
    from .summary import describe, describe_checkpoint, render, render_checkpoint

    try:
        adapter = open_adapter(local := local_path(path, "adapter"), adapter_name=adapter_name)
    except AdapterkitError as exc:
        if exc.code != "not-an-adapter" or adapter_name:
            raise
        try:  # a model checkpoint (what `adapterkit merge` writes): summarise it instead
            summary = describe_checkpoint(local_path(path, "checkpoint"))
        except AdapterkitError as checkpoint_exc:
            if checkpoint_exc.code == "not-a-checkpoint":
                raise exc from None
            raise  # a checkpoint, broken: its own problem (a truncated or missing shard, naming the file)
        if plot is not None:
            raise click.UsageError("--plot draws an adapter's spectrum; PATH is a model checkpoint", ctx=click.get_current_context()) from None
        click.echo(json.dumps(summary, indent=2) if as_json else render_checkpoint(summary))
        return
    summary = describe(adapter, device=device, per_module=not no_modules, path=local)
    if plot is not None:
        summary["plot"] = _plot_spectrum(adapter, plot, device, overwrite)
    click.echo(json.dumps(summary, indent=2) if as_json else render(summary))
    if plot is not None and not as_json:
        click.echo(f"spectrum plot:   {plot} ({_plural(summary['plot']['modules'], 'module')})")
    sys.exit(1 if any(p["severity"] == "error" for p in summary["problems"]) else 0)


def _problem_json(p: Any) -> dict[str, Any]:
    return {
        "severity": p.severity, "code": p.code, "message": p.message, "path": p.path, "key": p.key,
        "expected": None if p.expected is None else str(p.expected),
        "actual": None if p.actual is None else str(p.actual),
    }


@main.command(short_help="Check every rule of the spec; report all problems at once.")
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
    from .api import validate as run_validate

    problems = run_validate(path, adapter_name=adapter_name)
    errors = [p for p in problems if p.severity == "error"]
    if len(errors) == 1 and errors[0].code in USAGE_CODES:
        _fail(str(errors[0].to_error()))
    if as_json:
        click.echo(json.dumps({"path": str(path), "valid": not errors, "problems": [_problem_json(p) for p in problems]}, indent=2))
    else:
        for p in problems:
            click.echo(str(p))
        verdict = "valid" if not errors else "INVALID"
        click.echo(f"{path}: {verdict} ({_plural(len(errors), 'error')}, {_plural(len(problems) - len(errors), 'warning')})")
    sys.exit(1 if errors else 0)


@main.command(short_help="Rewrite an adapter as a PEFT directory or one .safetensors file.")
@click.argument("src", type=INPUT)
@click.argument("out", type=click.Path(path_type=Path))
@adapter_name_option
@click.option("--form", type=click.Choice(["dir", "file"]), default=None,
              help="dir: PEFT's directory layout; file: one .safetensors with the config inside. "
                   "Default: from OUT's name (*.safetensors = file).")
@click.option("--overwrite", is_flag=True, help="Replace OUT whole if it exists (no file from before remains).")
@click.option("--for", "consumer", type=click.Choice(CONSUMERS), default=None,
              help="Rewrite for this consumer first (see `adapterkit check --help`); ΔW of every module unchanged.")
@handles_errors
def convert(src: Path, out: Path, adapter_name: str | None, form: str | None, overwrite: bool, consumer: str | None = None) -> None:
    """Rewrite the adapter at SRC to OUT, checked as strictly as `load` (an adapter that
    `validate` rejects is not written).  A PEFT directory in gives a PEFT-loadable directory or
    one .safetensors file out; SRC is never modified.

    \b
    Examples:
      adapterkit convert my-lora my-lora.safetensors      # one file, config inside
      adapterkit convert my-lora.safetensors my-lora-peft  # PEFT's directory layout
      adapterkit convert multi out --adapter-name second --overwrite
      adapterkit convert my-lora my-lora-vllm --for vllm   # scaling folded, r = the largest rank
    """
    from .io.forms import infer_form

    named = infer_form(out)
    if form is not None and form != named:
        raise click.UsageError(
            f"--form {form} contradicts the output name {out.name!r} (*.safetensors names one file; "
            f"anything else a directory); rename OUT or drop --form",
            ctx=click.get_current_context(),
        )
    src = _require(src)
    _guard(out, ("SRC", src))
    from .hub.paths import load
    from .io.writer import save

    adapter = load(src, adapter_name=adapter_name)
    if consumer is not None:
        adapter = _export_for(adapter, consumer, named)
    written = save(adapter, out, form=named, overwrite=overwrite)
    click.echo(f"wrote {written} ({adapter.peft_type}, {_plural(len(adapter.tensors), 'tensor')}, form={named})")


def _check_orientation(_ctx: Any, _param: Any, value: str) -> str:
    """--fan-in-fan-out's syntax, checked before torch is imported (ops.orientation reads it)."""
    bools = ("true", "false")
    if value.strip().lower() in ("auto", *bools):
        return value
    for item in value.split(","):
        name, sep, flag = item.partition("=")
        if not sep or not name.strip() or flag.strip().lower() not in bools:
            raise click.BadParameter(f"{item!r}: expected auto, true, false or MODULE=true|false,...", param_hint="--fan-in-fan-out")
    return value


def _merge_inputs(paths: tuple[Path, ...], adapters: tuple[Path, ...], weights: tuple[float, ...], what: str) -> tuple[Path, list[Path], list[float], Path]:
    """(base, adapters, weights, out) from ``BASE [ADAPTER] OUT`` plus ``--adapter``/``--weight``."""
    if len(paths) not in (2, 3):
        raise click.UsageError(f"expected {what} [ADAPTER] OUT (got {len(paths)} paths)", ctx=click.get_current_context())
    base, out = paths[0], paths[-1]
    given = ([paths[1]] if len(paths) == 3 else []) + list(adapters)
    if not given:
        raise click.UsageError("name an adapter: a positional ADAPTER or --adapter PATH", ctx=click.get_current_context())
    if weights and len(weights) != len(given):
        from .errors import ArgumentError

        raise ArgumentError(f"{len(weights)} --weight for {len(given)} adapters: give one per adapter (positional first), or none for 1.0 each",
                            key="--weight", expected=f"{len(given)} or none", actual=len(weights))
    return base, given, list(weights) or [1.0] * len(given), out


def _merge_command(direction: str):
    def decorate(func):
        options = [
            click.argument("paths", nargs=-1, required=True, type=click.Path(),
                           metavar=f"{'MERGED' if direction == 'unmerge' else 'BASE'} [ADAPTER] OUT"),
            click.option("--adapter", "adapters", multiple=True, type=INPUT, help="An adapter (repeatable), after the positional one."),
            click.option("--weight", "weights", multiple=True, type=float, help="Its weight (repeatable, one per adapter in order; default 1, or for unmerge the one the merge record holds)."),
            click.option("--device", default=None, help="torch device for the fp32 math, e.g. cuda."),
            click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32", "fp64"]), default=None, help="Store floating-point tensors in this dtype (default: as in the base)."),
            click.option("--max-shard-size", default=None, help="Reshard: e.g. 5GB, 500MB (default: the base's sharding)."),
            click.option("--safe/--no-safe", default=True, show_default=True,
                         help="Refuse NaN or Inf in an adapter or a merged tensor (PEFT's safe_merge); --no-safe writes them."),
            click.option("--tied-embeddings", type=click.Choice(["untie", "shared"]), default=None,
                         help="When the base ties lm_head to its input embeddings and an adapter changes either: untie them "
                              "(exact: lm_head gets its own tensor, config.json tie_word_embeddings false; the default where "
                              "config.json says tied) or merge into the shared matrix (PEFT's merge_and_unload: changes the "
                              "other embedding too).  Without a config.json the tie is unknown: giving either says it is tied."),
            click.option("--fan-in-fan-out", "fan_in_fan_out", default="auto", show_default=True, metavar="auto|true|false|MODULE=BOOL,...",
                         callback=_check_orientation,
                         help="How square 2-D base weights are stored, as PEFT decides per layer: true = (in, out) as "
                              "transformers' Conv1D (GPT-2), false = (out, in) as nn.Linear; MODULE=BOOL per module (name or "
                              "suffix). auto decides from config.json and the shapes, and refuses where they cannot tell."),
            click.option("--overwrite", is_flag=True, help="Replace OUT whole if it exists."),
            click.option("--json", "as_json", is_flag=True, help="Print the report as JSON."),
        ]
        if direction == "merge":
            options.append(click.option("--again", is_flag=True, help="Merge an adapter the base's merge record already holds "
                                                                       "(or one listed twice): it is then applied twice."))
        else:
            options.append(click.option("--force", is_flag=True, help="Unmerge what the merge record does not hold: an adapter "
                                                                       "not recorded, other weights than recorded, or out of order."))
        for option in reversed(options):
            func = option(func)
        return func
    return decorate


_DTYPE_NAMES = {"bf16": "BF16", "fp16": "F16", "fp32": "F32", "fp64": "F64"}


def _run_merge(direction: str, paths, adapters, weights, device, dtype, max_shard_size, safe, tied_embeddings, overwrite, as_json,
               push: dict[str, Any] | None = None, fan_in_fan_out: str = "auto", again: bool = False,
               force: bool = False) -> Any:
    explicit = bool(weights)  # unmerge: without --weight, the weights come from the merge record
    base, given, weights, out = _merge_inputs(paths, adapters, weights, "MERGED" if direction == "unmerge" else "BASE")
    from .arguments import parse_size

    size = parse_size(max_shard_size)
    base, given, out = _require(base), [_require(p) for p in given], Path(out)
    _guard(out, ("MERGED" if direction == "unmerge" else "BASE", base), *(("ADAPTER", p) for p in given))
    if push is not None:
        _check_push_to(push["repo_id"], out)
    from .api import merge as merge_checkpoint

    report = merge_checkpoint(
        base, given, out, weights=weights if explicit else None, device=device, dtype=_DTYPE_NAMES.get(dtype) if dtype else None,
        max_shard_size=size, safe=safe, overwrite=overwrite, unmerge=direction == "unmerge", tied_embeddings=tied_embeddings,
        fan_in_fan_out=fan_in_fan_out, again=again, force=force,
    )
    if as_json:
        click.echo(json.dumps({
            "out": str(report.out), "adapters": report.adapters, "tensors": report.tensors, "changed": report.changed,
            "replaced": report.replaced, "copied": report.copied, "lossy": report.lossy, "notes": report.notes,
            "bytes": report.bytes, "seconds": round(report.seconds, 3),
        }, indent=2))
    else:
        names = ", ".join(f"{a['kind']} {a['adapter']} x{a['weight']:g}" for a in report.adapters)
        note = f"; lossy: {', '.join(report.lossy)}" if report.lossy else ""
        note += "".join(f"; {n}" for n in report.notes)
        click.echo(f"{direction}d {names} into {report.out}: {report.changed} tensors changed, {report.replaced} replaced, "
                   f"{report.copied} copied unchanged, {report.tensors} in all; {report.bytes / 1e9:.2f} GB in {report.seconds:.1f} s{note}")
    if push is not None:
        _push_merged(base, report, push, as_json)
    return report


@main.command(short_help="Merge adapters into a model checkpoint, streaming, shard by shard.")
@_merge_command("merge")
@click.option("--push-to", default=None, metavar="REPO_ID",
              help="Then publish OUT (a folder) to this Hub repo with a card marked base_model_relation: merge.")
@click.option("--token", default=None, envvar=None, help="Hub token for --push-to (default: HF_TOKEN or the stored login).")
@click.option("--private", is_flag=True, help="With --push-to: create the repo private.")
@handles_errors
def merge(paths, adapters, weights, device, dtype, max_shard_size, safe, tied_embeddings, overwrite, as_json, again=False,
          push_to=None, token=None, private=False, fan_in_fan_out="auto") -> None:
    """Merge adapters into the model checkpoint BASE (a folder with model.safetensors or a
    sharded index, or one .safetensors file) and write OUT: the same sharding and index, every
    other file of BASE (config, tokenizer, ...) copied, and what was merged recorded in each
    shard's metadata and in README.md.  One tensor is in memory at a time; each changed tensor
    is computed in fp32 (on --device) and cast once.  BASE is never modified; OUT appears whole
    or not at all.  LoRA (incl. DoRA, lora_bias, Conv1D, embeddings, convolutions), IA3 and
    modules_to_save merge; prompt-learning adapters have no weights to merge into.

    Several adapters give PEFT's model with them all active, in the order named
    (set_adapter([a, b])): DoRA's norm is over the base weight and its own change only.  Two
    merge commands one after the other differ there (the second DoRA's norm then includes the
    first merge).  What PEFT cannot activate together is refused (two modules_to_save of one
    module, a module saved whole by one and adapted by the other).  An adapter the base's
    merge record already holds is refused unless --again.

    \b
    Examples:
      adapterkit merge base-model my-lora merged-model
      adapterkit merge base-model merged --adapter a --weight 0.7 --adapter b --weight 0.3
      adapterkit merge base-model my-lora merged --dtype bf16 --max-shard-size 5GB --device cuda
      adapterkit merge org/base org/my-lora merged --push-to me/merged-model   # Hub repo ids in and out
    """
    push = None if push_to is None else {"repo_id": push_to, "token": token, "private": private}
    _run_merge("merge", paths, adapters, weights, device, dtype, max_shard_size, safe, tied_embeddings, overwrite, as_json, push,
               fan_in_fan_out, again=again)


@main.command(short_help="Take merged adapters back out of a checkpoint (the inverse of merge).")
@_merge_command("unmerge")
@handles_errors
def unmerge(paths, adapters, weights, device, dtype, max_shard_size, safe, tied_embeddings, overwrite, as_json, force=False,
            fan_in_fan_out="auto") -> None:
    """Take adapters back out of the merged checkpoint MERGED and write OUT: the inverse of
    `adapterkit merge`.  The weights come from MERGED's merge record (each adapter known by
    its content digest); an adapter the record does not hold, other weights, or a merge that
    a later one still merged does not commute with (IA3 or DoRA after it on a shared tensor)
    are refused unless --force; adapters are taken out newest first.  Exact up to rounding
    for LoRA; IA3 (division by the scaling) and modules_to_save (the base tensor is gone) are
    lossy and reported so; DoRA cannot be unmerged from a checkpoint (the norm it divided by is gone).

    \b
    Examples:
      adapterkit unmerge merged-model my-lora base-again
      adapterkit unmerge merged base-again --adapter a --adapter b
    """
    _run_merge("unmerge", paths, adapters, weights, device, dtype, max_shard_size, safe, tied_embeddings, overwrite, as_json,
               fan_in_fan_out=fan_in_fan_out, force=force)



# ----------------------------------------------------------------------------- combine

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


@main.command("combine", options_metavar="-o OUT [OPTIONS]", short_help="Combine adapters into one (PEFT's add_weighted_adapter methods).")
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
@click.option("--overwrite", is_flag=True, help="Replace OUT whole if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@handles_errors
def combine_command(adapters: tuple[Path, ...], out: Path, weights: str | None, method: str, rank: int | None, density: float | None,
                    majority_sign: str, seed: int, svd_clamp: float | None, device: str, overwrite: bool, as_json: bool,
                    fan_in_fan_out: str | None = None) -> None:
    """Combine the LoRA (or IA3) ADAPTERS with weights into one adapter written to OUT, with
    the methods of PEFT's add_weighted_adapter: cat and linear (exactly the weighted sum of the
    ΔW's), svd (its best rank-k approximation, from the factors), ties, dare_linear, dare_ties,
    magnitude_prune (on the A's and B's apart, as PEFT) and their *_svd forms (on the dense ΔW's,
    then an SVD).  The modules are the union of the adapters'; the result has scaling 1 and loads
    in PEFT.  Unlike PEFT: results with rank patterns reload and modules_to_save is refused
    (adapterkit/differences.py lists every difference); DoRA is refused, as in PEFT.  IA3
    combines by linear only.

    \b
    Examples:
      adapterkit combine a b --weights 0.7,0.3 --method svd --rank 16 -o ab
      adapterkit combine a b --method cat -o ab.safetensors
      adapterkit combine a b c --weights 1,1,-0.5 --method dare_ties --density 0.3 --seed 7 -o abc
    """
    given = _parse_weights(weights, len(adapters))
    from .arguments import check_combine

    check_combine(len(adapters), given, method, rank, density, svd_clamp)
    adapters = tuple(_require(p) for p in adapters)
    _guard(out, *(("ADAPTERS", p) for p in adapters))
    import time

    from .hub.paths import load
    from .io.writer import save
    from .ops.combining import combine

    start = time.perf_counter()
    inputs = [load(p) for p in adapters]
    orient = None if fan_in_fan_out is None else fan_in_fan_out == "true"
    result = combine(inputs, given, method, rank=rank, density=density, majority_sign=majority_sign, seed=seed, fan_in_fan_out=orient,
                     svd_clamp=svd_clamp, device=device, names=[str(p) for p in adapters])
    written = save(result, out, overwrite=overwrite)
    seconds = time.perf_counter() - start
    if as_json:
        click.echo(json.dumps({
            "out": str(written), "method": method, "kind": result.peft_type,
            "adapters": [{"path": str(p), "weight": w, "modules": len(a.modules), "ranks": _rank_text(a)} for p, w, a in zip(adapters, given, inputs)],
            "modules": len(result.modules), "ranks": _rank_text(result), "tensors": len(result.tensors), "seconds": round(seconds, 3),
        }, indent=2))
    else:
        names = ", ".join(f"{p} x{w:g}" for p, w in zip(adapters, given))
        before = " + ".join(_rank_text(a) for a in inputs)
        click.echo(f"combined {names} by {method} into {written}: {_plural(len(result.modules), 'module')}, "
                   f"ranks {before} -> {_rank_text(result)}; {seconds:.1f} s")

# ----------------------------------------------------------------------------- low-rank surgery: resize, rebalance, prune


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


def _one_of(**given: Any) -> None:
    named = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None]
    if len(named) != 1:
        names = " | ".join(f"--{k.replace('_', '-')}" for k in given)
        raise click.UsageError(f"give exactly one of {names} (got {', '.join(named) or 'none'})", ctx=click.get_current_context())


def _surgery(src: Path, out: Path, adapter_name: str | None, overwrite: bool, operation: Any) -> tuple[Any, Any, Path]:
    """Load IN (checked as strictly as `load`), run ``operation(adapter)`` and save its adapter to
    OUT; returns (input, report, path written).  The result is saved as coming from IN, so that
    the writer refuses to replace the input even with --overwrite."""
    from dataclasses import replace

    from .hub.paths import load
    from .io.writer import save

    given = load(src, adapter_name=adapter_name)
    result, report = operation(given)
    return given, report, save(replace(result, source=given.source), out, overwrite=overwrite)


def _span(values: list[int]) -> str:
    """``16``, or ``4-40 (mean 16.0)`` for differing ranks."""
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}-{hi} (mean {sum(values) / len(values):.1f})"


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 10**6 else f"{n / 1e3:.1f}k" if n >= 10**4 else str(n)


def _print_resize(verb: str, src: Path, written: Path, report: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"in": str(src), "out": str(written), **report.to_dict()}, indent=2))
        return
    mods = report.modules
    click.echo(
        f"{verb} {src} -> {written}: {_plural(len(mods), 'module')} ({report.rule}), "
        f"rank {_span([m.rank_before for m in mods])} -> {_span([m.rank_after for m in mods])}, "
        f"energy kept {100 * report.energy_kept:.2f}%, ‖ΔW - ΔW'‖_F {report.error:.3g}, "
        f"params {_count(report.params_before)} -> {_count(report.params_after)}"
    )


@main.command(short_help="Change a LoRA's ranks: fixed, by kept energy or by σ ratio.")
@_surgery_options
@click.option("--rank", type=int, default=None, help="This rank for every module (at or above a module's rank: lossless).")
@click.option("--energy", type=float, default=None, help="Per module, the smallest rank keeping this fraction of ‖ΔW‖² (0-1].")
@click.option("--sv-ratio", type=float, default=None, help="Per module, the singular values within this ratio of the largest (>= 1).")
@click.option("--balanced/--no-balanced", default=True, show_default=True,
              help="Canonical factors B = U·√Σ, A = √Σ·Vᵀ (--no-balanced: B = U·Σ, A = Vᵀ).")
@handles_errors
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
    from .arguments import check_resize

    check_resize(rank, energy, sv_ratio)
    src = _require(src)
    _guard(out, ("IN", src))
    from .ops.resizing import resize as run

    _, report, written = _surgery(src, out, adapter_name, overwrite,
                                  lambda a: run(a, rank=rank, energy=energy, sv_ratio=sv_ratio, balanced=balanced, device=device or "cpu"))
    _print_resize("resized", src, written, report, as_json)


@main.command(short_help="Spread a parameter budget over a LoRA's modules by energy.")
@_surgery_options
@click.option("--budget", type=int, default=None, help="Total factor parameters, Σ rank·(out + in).")
@click.option("--rank", type=int, default=None, help="Average rank instead: the budget of a uniform --rank resize.")
@click.option("--balanced/--no-balanced", default=True, show_default=True,
              help="Canonical factors B = U·√Σ, A = √Σ·Vᵀ (--no-balanced: B = U·Σ, A = Vᵀ).")
@handles_errors
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
    from .arguments import positive_int

    positive_int("--budget", budget)
    positive_int("--rank", rank)
    src = _require(src)
    _guard(out, ("IN", src))
    from .ops.rebalancing import rebalance as run

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


@main.command(short_help="Drop modules from an adapter by name, layer or energy.")
@_surgery_options
@click.option("--modules", default=None, metavar="REGEX", help="Drop modules whose name contains a match (re.search).")
@click.option("--layers", default=None, metavar="LIST", help="Drop the modules of these layers, e.g. 0,1,5-7 (PEFT's layer index).")
@click.option("--min-energy", type=float, default=None, help="Drop modules holding less than this fraction of Σ‖ΔW‖² (LoRA).")
@click.option("--keep-fraction", type=float, default=None, help="Keep this fraction of the modules, the largest ‖ΔW‖ first (LoRA).")
@handles_errors
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
    from .arguments import fraction

    fraction("--min-energy", min_energy, zero=True)
    fraction("--keep-fraction", keep_fraction)
    src = _require(src)
    _guard(out, ("IN", src))
    from .ops.pruning import prune as run

    adapter, report, written = _surgery(src, out, adapter_name, overwrite, lambda a: run(
        a, modules=modules, layers=wanted, min_energy=min_energy, keep_fraction=keep_fraction, device=device or "cpu"))
    if as_json:
        click.echo(json.dumps({"in": str(src), "out": str(written), **report.to_dict()}, indent=2))
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


# ---- serving-engine profiles: `check` and `convert --for` (adapterkit.ops.export) ----

def _export_for(adapter: Any, consumer: str, form: str) -> Any:
    """``export(adapter, consumer)``, saved as coming from the input (never overwrites it)."""
    from dataclasses import replace

    from .ops.export import export

    if consumer != "peft" and form == "file":
        raise click.UsageError(f"{consumer} reads PEFT's directory layout; name OUT without .safetensors",
                               ctx=click.get_current_context())
    return replace(export(adapter, consumer), source=adapter.source)


@main.command("check", short_help="Check an adapter against a serving engine's rules (vLLM, TGI, llama.cpp, PEFT).")
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
    from .hub.paths import load
    from .ops.export import check

    problems = check(load(path, adapter_name=adapter_name), consumer, max_rank=max_rank)
    violations = [p for p in problems if p.severity == "error"]
    if as_json:
        click.echo(json.dumps({"path": str(path), "for": consumer, "complies": not violations,
                               "problems": [_problem_json(p) for p in problems]}, indent=2))
    else:
        for p in problems:
            click.echo(str(p))
        verdict = "complies" if not violations else "does NOT comply"
        warned = f", {_plural(len(problems) - len(violations), 'warning')}" if len(problems) > len(violations) else ""
        click.echo(f"{path}: {verdict} with {consumer} ({_plural(len(violations), 'violation')}{warned})")
    sys.exit(1 if violations else 0)


# ----------------------------------------------------------------------------- extracting a LoRA from a fine-tuned checkpoint


@main.command(short_help="Extract a LoRA from a fine-tuned checkpoint (truncated SVD of the difference).")
@click.argument("base", type=INPUT)
@click.argument("finetuned", type=INPUT)
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--rank", type=int, default=None, help="This rank for every extracted module.")
@click.option("--energy", type=float, default=None, help="Per module, the smallest rank keeping this fraction of ‖ΔW‖² (0-1].")
@click.option("--targets", default=None, metavar="REGEX",
              help="Extract the 2-D weights of modules matching this (re.search); default: all but embeddings and lm_head.")
@click.option("--save-changed", is_flag=True, help="Store changed tensors that are not extracted (norms, biases, embeddings) whole.")
@click.option("--device", default=None, help="torch device for the fp32 math, e.g. cuda (default: cpu).")
@click.option("--overwrite", is_flag=True, help="Replace OUT whole if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (per module: rank, energy kept, relative error).")
@click.option("--modules", "per_module", is_flag=True, help="Also print one line per extracted module: shape, rank, energy kept, relative error.")
@handles_errors
def extract(base: Path, finetuned: Path, out: Path, rank: int | None, energy: float | None, targets: str | None,
            save_changed: bool, device: str | None, overwrite: bool, as_json: bool, per_module: bool = False) -> None:
    """Extract a LoRA adapter from the difference FINETUNED - BASE of two model checkpoints
    (same keys, shapes and dtypes) and write OUT.  Both are streamed tensor by tensor; each
    changed 2-D weight is decomposed by a truncated SVD (randomized for large matrices) into
    balanced factors at scaling 1.  Changed tensors that are not extracted are listed, or stored
    whole with --save-changed.  Factors are stored in the base's dtype.

    \b
    Examples:
      adapterkit extract llama-7b llama-7b-chat chat-lora --rank 16
      adapterkit extract base ft ft-lora.safetensors --energy 0.99 --targets 'self_attn' --device cuda
    """
    _one_of(rank=rank, energy=energy)
    from .arguments import check_resize

    check_resize(rank, energy, None)
    base = _require(base)
    finetuned = _require(finetuned)
    _guard(out, ("BASE", base), ("FINETUNED", finetuned))
    import time

    from .api import extract as run
    from .io.writer import save

    start = time.perf_counter()
    adapter, report = run(base, finetuned, rank=rank, energy=energy, targets=targets, save_changed=save_changed, device=device or "cpu")
    written = save(adapter, out, overwrite=overwrite)
    if as_json:
        click.echo(json.dumps({"base": str(base), "finetuned": str(finetuned), "out": str(written), **report.to_dict()}, indent=2))
        return
    left = sum(report.not_extracted.values())
    whole = sum(t.numel() * t.element_size() for k, t in adapter.tensors.items() if adapter.kind.parse_key(k) is None)
    if per_module:
        for m in report.modules:
            click.echo(f"  {m.name}  {m.shape[0]}x{m.shape[1]}  rank {m.rank}  energy kept {100 * m.energy_kept:.4f}%  "
                       f"relative error {100 * m.error:.3g}%  ({m.method})")
    click.echo(
        f"extracted {finetuned} - {base} -> {written}: {_plural(len(report.modules), 'module')} ({report.rule}), "
        f"rank {_span([m.rank for m in report.modules])}, energy kept {100 * report.energy_kept:.2f}%, "
        f"relative error {100 * report.error:.3g}%, params {_count(report.params)}; "
        f"{len(report.unchanged)} unchanged, {len(report.saved_whole)} saved whole ({whole / 1e6:.2f} MB), "
        f"{len(report.not_extracted)} changed not extracted ({left / 1e6:.2f} MB); {time.perf_counter() - start:.1f} s"
    )
    for note in report.notes:
        click.echo(f"note: {note}")



# ----------------------------------------------------------------------------- the Hugging Face Hub: push, pull, merge --push-to


def _check_push_to(repo_id: str, out: Path) -> None:
    """Before merging: --push-to names a repo and OUT is a folder (what is published)."""
    from .hub.repo_id import parse_repo_id

    ref = parse_repo_id(repo_id)
    if ref is None or ref.revision is not None:
        raise click.BadParameter(f"{repo_id!r} is not a repo id such as org/name", param_hint="--push-to")
    if out.suffix == ".safetensors":
        raise click.UsageError("--push-to publishes a folder; name OUT without .safetensors", ctx=click.get_current_context())


def _push_merged(base: Path, report: Any, push: dict[str, Any], as_json: bool) -> None:
    """Publish the merged checkpoint folder with a card marked base_model_relation: merge."""
    from .hub.card import merged_card
    from .hub.publish import upload_merged
    from .hub.repo_id import as_repo

    ref = as_repo(base)
    trained_on = [a["base_model"] for a in report.adapters if a.get("base_model")]
    base_model = ref.repo_id if ref is not None else (trained_on[0] if trained_on else None)
    card = merged_card(base_model, report.adapters, push["repo_id"], _read_text(Path(report.out) / "README.md"))
    result = upload_merged(Path(report.out), push["repo_id"], card, token=push["token"], private=push["private"])
    if as_json:
        click.echo(json.dumps({"pushed": result.to_dict()}, indent=2))
    else:
        click.echo(f"pushed {report.out} to {result.repo_id}@{result.revision} (commit {result.commit[:12]}): {result.url}")


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.is_file() else ""


@main.command(short_help="Publish an adapter to the Hugging Face Hub: validate, write a card, upload.")
@click.argument("adapter", type=INPUT)
@click.argument("repo_id")
@adapter_name_option
@click.option("--private", is_flag=True, help="Create the repo private (an existing repo keeps its visibility).")
@click.option("--revision", default=None, metavar="BRANCH", help="Commit to this branch (created from main if missing).")
@click.option("--commit-message", default=None, help="The commit message (default: Upload <KIND> adapter with adapterkit).")
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing to the branch.")
@click.option("--token", default=None, help="Hub token (default: HF_TOKEN or the stored login); never printed.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handles_errors
def push(adapter: Path, repo_id: str, adapter_name: str | None, private: bool, revision: str | None, commit_message: str | None,
         create_pr: bool, token: str | None, as_json: bool) -> None:
    """Validate the adapter at ADAPTER (a path, or a repo id to copy), write a model card
    (README.md: library_name peft, base_model, base_model_relation adapter, tags; kind, targets,
    ranks, parameters) and upload both to the Hub repo REPO_ID in one commit, creating the repo
    if needed.  An invalid adapter uploads nothing.  HF_ENDPOINT selects the server.

    \b
    Examples:
      adapterkit push my-lora me/my-lora
      adapterkit push my-lora.safetensors me/my-lora --private --revision dev
      adapterkit push my-lora me/my-lora --create-pr --commit-message "rank 16" --json
    """
    adapter = _require(adapter)
    from .hub.publish import push as run
    from .hub.publish import target_repo

    target_repo(repo_id)  # a bad repo id is refused before the adapter is read
    result = run(adapter, repo_id, private=private, revision=revision, commit_message=commit_message, create_pr=create_pr,
                 token=token, adapter_name=adapter_name)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        where = f"pull request {result.pr_url}" if result.pr_url else result.url
        click.echo(f"pushed {adapter} to {result.repo_id}@{result.revision} ({_plural(len(result.files), 'file')}, "
                   f"commit {result.commit[:12]}): {where}")


@main.command(short_help="Download an adapter or checkpoint from the Hub into a plain folder, checked.")
@click.argument("repo")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace OUT whole if it exists.")
@click.option("--token", default=None, help="Hub token (default: HF_TOKEN or the stored login); never printed.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handles_errors
def pull(repo: str, out: Path, overwrite: bool, token: str | None, as_json: bool) -> None:
    """Download the adapter (or model checkpoint) of the Hub repo REPO (org/name or
    org/name@revision) into the folder OUT: only the files needed (adapter files; or the index,
    its shards and the non-weight files), as plain files, validated before OUT appears.
    HF_HUB_OFFLINE=1 reads the standard cache only.

    \b
    Examples:
      adapterkit pull org/my-lora my-lora
      adapterkit pull org/my-lora@v2 my-lora --overwrite --json
      adapterkit pull org/merged-model merged
    """
    from .hub.repo_id import parse_repo_id

    if parse_repo_id(repo) is None:
        raise click.BadParameter(f"{repo!r} is not a repo id such as org/name or org/name@revision", param_hint="REPO")
    from .hub.download import pull as run

    result = run(repo, out, overwrite=overwrite, token=token)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(f"pulled {result.repo} (commit {result.commit[:12]}, {result.kind}) into {result.out}: "
                   f"{_plural(len(result.files), 'file')}")
# ----------------------------------------------------------------------------- looking inside adapters: diff, spectrum plots (adapterkit.inspect)


def _plot_spectrum(adapter: Any, out: Path, device: str | None, overwrite: bool) -> dict[str, Any]:
    """`info --plot`: draw the spectrum; returns what --json reports about it."""
    from .inspect.spectra import plot_spectrum

    data = plot_spectrum(adapter, out, device=device or "cpu", overwrite=overwrite)
    return {"path": str(out), "modules": len(data.modules),
            "ranks_keeping": {f"{level:.0%}": [m.ranks[level] for m in data.modules] for level in (0.90, 0.95, 0.99)},
            "rebalance": [{"average_rank": avg, "budget": budget, "ranks": list(ranks)} for avg, budget, ranks in data.budgets]}


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


@main.command("diff", short_help="Compare two adapters module by module: overlap, subspace angles, sign conflicts.")
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
    from .inspect.compare import diff as run
    from .io.reader import load

    report = run(load(a), load(b), device=device or "cpu", conflict=conflict, sample_rows=sample_rows, seed=seed)
    if as_json:
        click.echo(json.dumps({**report.to_dict(), "summary": report.summary(top)}, indent=2))
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


if __name__ == "__main__":
    main()
