"""The commands over model checkpoints: ``merge``, ``unmerge`` (and ``merge --push-to``) and ``extract``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from .as_trained import AS_TRAINED_OPTIONS, as_trained_settings
from .conventions import (
    INPUT,
    _count,
    _guard,
    _one_of,
    _plural,
    _require,
    _span,
    handles_errors,
    print_json,
    threads_option,
)


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
        from ..errors import ArgumentError

        raise ArgumentError(f"{len(weights)} --weight for {len(given)} adapters: give one per adapter (positional first), or none for 1.0 each",
                            key="--weight", expected=f"{len(given)} or none", actual=len(weights))
    if not all(math.isfinite(w) for w in weights):  # before torch's import, as the library refuses it after
        from ..errors import ArgumentError

        raise ArgumentError("weights must be finite numbers", key="--weight", expected="finite numbers", actual=list(weights))
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
            options += AS_TRAINED_OPTIONS
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
               force: bool = False, as_trained: dict[str, Any] | None = None) -> Any:
    explicit = bool(weights)  # unmerge: without --weight, the weights come from the merge record
    base, given, weights, out = _merge_inputs(paths, adapters, weights, "MERGED" if direction == "unmerge" else "BASE")
    from ..arguments import parse_size

    size = parse_size(max_shard_size)
    base, given, out = _require(base), [_require(p) for p in given], Path(out)
    _guard(out, ("MERGED" if direction == "unmerge" else "BASE", base), *(("ADAPTER", p) for p in given))
    if push is not None:
        _check_push_to(push["repo_id"], out)
    from ..api import merge as merge_checkpoint
    from ..summary import render_survival

    report = merge_checkpoint(
        base, given, out, weights=weights if explicit else None, device=device, dtype=_DTYPE_NAMES.get(dtype) if dtype else None,
        max_shard_size=size, safe=safe, overwrite=overwrite, unmerge=direction == "unmerge", tied_embeddings=tied_embeddings,
        fan_in_fan_out=fan_in_fan_out, again=again, force=force, as_trained=as_trained,
    )
    if as_json:
        print_json({
            "out": str(report.out), "adapters": report.adapters, "tensors": report.tensors, "changed": report.changed,
            "replaced": report.replaced, "copied": report.copied, "lossy": report.lossy, "notes": report.notes,
            "bytes": report.bytes, "seconds": round(report.seconds, 3), "quantized": report.quantized,
        })
    else:
        names = ", ".join(f"{a['kind']} {a['adapter']} x{a['weight']:g}" for a in report.adapters)
        note = f"; lossy: {', '.join(report.lossy)}" if report.lossy else ""
        note += "".join(f"; {n}" for n in report.notes if not n.startswith("WARNING"))
        click.echo(f"{direction}d {names} into {report.out}: {report.changed} tensors changed, {report.replaced} replaced, "
                   f"{report.copied} copied unchanged, {report.tensors} in all; {report.bytes / 1e9:.2f} GB in {report.seconds:.1f} s{note}")
        if report.quantized and report.quantized.get("survival"):
            click.echo(render_survival(report.quantized))
    for warning in (n for n in report.notes if n.startswith("WARNING")):
        click.echo(warning, err=True)
    if push is not None:
        _push_merged(base, report, push, as_json)
    return report


@click.command(short_help="Merge adapters into a model checkpoint, streaming, shard by shard.")
@_merge_command("merge")
@click.option("--push-to", default=None, metavar="REPO_ID",
              help="Then publish OUT (a folder) to this Hub repo with a card marked base_model_relation: merge.")
@click.option("--token", default=None, envvar=None, help="Hub token for --push-to (default: HF_TOKEN or the stored login).")
@click.option("--private", is_flag=True, help="With --push-to: create the repo private.")
@handles_errors
@threads_option
def merge(paths, adapters, weights, device, dtype, max_shard_size, safe, tied_embeddings, overwrite, as_json, again=False,
          push_to=None, token=None, private=False, fan_in_fan_out="auto", as_trained=None, as_trained_blocksize=64,
          as_trained_double_quant=True, as_trained_skip=(), as_trained_compute_dtype="bf16") -> None:
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

    A quantized BASE (bnb, GPTQ, AWQ, FP8) merges as the model it stands for: dense with --dtype;
    else re-quantized in its format, with how much of each ΔW survived (docs/quantized.md).

    \b
    Examples:
      adapterkit merge base-model my-lora merged-model
      adapterkit merge qlora-base-nf4 my-lora merged --dtype bf16     # dense from a 4-bit base
      adapterkit merge base-model-bf16 my-qlora merged --as-trained nf4
      adapterkit merge base-model merged --adapter a --weight 0.7 --adapter b --weight 0.3
      adapterkit merge base-model my-lora merged --dtype bf16 --max-shard-size 5GB --device cuda
      adapterkit merge org/base org/my-lora merged --push-to me/merged-model   # Hub repo ids in and out
    """
    push = None if push_to is None else {"repo_id": push_to, "token": token, "private": private}
    settings = as_trained_settings(as_trained, as_trained_blocksize, as_trained_double_quant, as_trained_skip, as_trained_compute_dtype)
    _run_merge("merge", paths, adapters, weights, device, dtype, max_shard_size, safe, tied_embeddings, overwrite, as_json, push,
               fan_in_fan_out, again=again, as_trained=settings)


@click.command(short_help="Take merged adapters back out of a checkpoint (the inverse of merge).")
@_merge_command("unmerge")
@handles_errors
@threads_option
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


@click.command(short_help="Extract a LoRA from a fine-tuned checkpoint (truncated SVD of the difference).")
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
@threads_option
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
    from ..arguments import check_resize

    check_resize(rank, energy, None)
    base = _require(base)
    finetuned = _require(finetuned)
    _guard(out, ("BASE", base), ("FINETUNED", finetuned))
    import time

    from ..api import extract as run
    from ..io.writer import save

    start = time.perf_counter()
    adapter, report = run(base, finetuned, rank=rank, energy=energy, targets=targets, save_changed=save_changed, device=device or "cpu")
    written = save(adapter, out, overwrite=overwrite)
    if as_json:
        print_json({"base": str(base), "finetuned": str(finetuned), "out": str(written), **report.to_dict()})
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


def _check_push_to(repo_id: str, out: Path) -> None:
    """Before merging: --push-to names a repo and OUT is a folder (what is published)."""
    from ..hub.repo_id import parse_repo_id

    ref = parse_repo_id(repo_id)
    if ref is None or ref.revision is not None:
        raise click.BadParameter(f"{repo_id!r} is not a repo id such as org/name", param_hint="--push-to")
    if out.suffix == ".safetensors":
        raise click.UsageError("--push-to publishes a folder; name OUT without .safetensors", ctx=click.get_current_context())


def _push_merged(base: Path, report: Any, push: dict[str, Any], as_json: bool) -> None:
    """Publish the merged checkpoint folder with a card marked base_model_relation: merge."""
    from ..hub.publish import push_merged

    result = push_merged(base, report, push["repo_id"], token=push["token"], private=push["private"])
    if as_json:
        print_json({"pushed": result.to_dict()})
    else:
        click.echo(f"pushed {report.out} to {result.repo_id}@{result.revision} (commit {result.commit[:12]}): {result.url}")
