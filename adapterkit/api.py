"""The public functions that take what a user names — a local path or a Hub repo id
(``org/name[@revision]``) — one per command of the CLI, with the command's options.

This is where repo ids are resolved (``adapterkit.hub.paths.local_path``), as the CLI does:
below this layer every function takes local paths (or Adapters), so ``validation``, the
readers and the operations never reach the network.  Each function here resolves its inputs
and calls the library function that does the work:

  ``validate``  -> ``adapterkit.validation.validate``
  ``info``      -> ``adapterkit.summary.describe`` / ``describe_checkpoint`` (+ ``inspect.spectra``)
  ``convert``   -> ``load`` + ``adapterkit.ops.export.export`` + ``save``
  ``check``     -> ``adapterkit.ops.export.check``
  ``merge``, ``unmerge`` -> ``adapterkit.ops.merging.merge_checkpoint``
  ``extract``   -> ``adapterkit.ops.extract.extract``

The commands on adapters already in memory (``combine``, ``resize``, ``rebalance``, ``prune``,
``diff``, ``plot_spectrum``) take Adapters, so they are the operations themselves (see
``adapterkit/__init__.py``); ``push`` and ``pull`` are ``adapterkit.hub``'s.  Importing this
module does not import torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import AdapterkitError, ArgumentError, Problem

if TYPE_CHECKING:
    import torch

    from .adapter import Adapter
    from .ops.extract import ExtractReport
    from .ops.merging import MergeReport


def validate(path: str | Path, *, adapter_name: str | None = None) -> list[Problem]:
    """All problems of the adapter at ``path`` (or repo id ``org/name[@revision]``): errors
    (MUST violations) and warnings, every one at once; the content digest (§5.5) is checked.

    Args:
        path: an adapter directory (PEFT's layout), a weights file, a single-file adapter, or a
            repo id.
        adapter_name: a PEFT subfolder of a non-default adapter (``validate --adapter-name``).

    Returns:
        The problems (``Problem`` records); no error means the adapter is valid.  A local path
        that does not exist is one ``file-not-found`` problem.

    Raises:
        HubError: a repo id that cannot be fetched.
    """
    from .hub.paths import local_path
    from .validation import validate as validate_local

    try:
        local = local_path(path, "adapter")
    except AdapterkitError as exc:
        if exc.code != "file-not-found":  # the Hub's errors are raised
            raise
        return [Problem(exc.code, exc.message, "error", exc.path, exc.key, exc.expected, exc.actual)]
    return validate_local(local, adapter_name=adapter_name)


def info(path: str | Path, *, adapter_name: str | None = None, no_modules: bool = False, device: Any = None,
         plot: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """The summary ``adapterkit info`` prints (its ``--json``): of the adapter at ``path`` (a path
    or repo id), or of the model checkpoint there (what ``adapterkit merge`` writes; its
    ``kind`` is ``"model checkpoint"``).

    Args:
        adapter_name: a PEFT subfolder of a non-default adapter.
        no_modules: skip the per-module statistics and the value checks (no tensor data read).
        device: torch device for the per-module statistics.
        plot: also draw every LoRA module's singular-value spectrum into this PNG
            (``plot_spectrum``; needs ``adapterkit[plot]``); the summary's ``plot`` says what.
        overwrite: replace the ``plot`` file if it exists.

    Raises:
        AdapterkitError subclasses: the adapter's first structural error, the checkpoint's
            own problem, ``not-an-adapter`` for a path that is neither; ``argument-invalid``
            for ``plot`` of a checkpoint; the plot's output errors (see ``plot_spectrum``).
    """
    from .hub.paths import local_path
    from .io.outputs import check_output
    from .io.reader import open_adapter
    from .summary import describe, describe_checkpoint

    if plot is not None:
        check_output(plot, [("PATH", path)])  # before anything is read
    try:
        adapter = open_adapter(local := local_path(path, "adapter"), adapter_name=adapter_name)
    except AdapterkitError as exc:
        if exc.code != "not-an-adapter" or adapter_name:
            raise
        try:  # a model checkpoint: summarise it instead
            summary = describe_checkpoint(local_path(path, "checkpoint"))
        except AdapterkitError as checkpoint_exc:
            if checkpoint_exc.code == "not-a-checkpoint":
                raise exc from None
            raise  # a checkpoint, broken: its own problem (a truncated or missing shard, naming the file)
        if plot is not None:
            raise ArgumentError("plot draws an adapter's spectrum; the path is a model checkpoint", path=path, key="plot",
                                expected="an adapter", actual="a model checkpoint") from None
        return summary
    summary = describe(adapter, device=device, per_module=not no_modules, path=local)
    if plot is not None:
        summary["plot"] = _plot(adapter, Path(plot), device, overwrite)
    return summary


def _plot(adapter: Adapter, out: Path, device: Any, overwrite: bool) -> dict[str, Any]:
    """``info(plot=...)``: draw the spectrum; what the summary reports about it."""
    from .inspect.spectra import plot_spectrum

    data = plot_spectrum(adapter, out, device=device or "cpu", overwrite=overwrite)
    return {"path": str(out), "modules": len(data.modules),
            "ranks_keeping": {f"{level:.0%}": [m.ranks[level] for m in data.modules] for level in (0.90, 0.95, 0.99)},
            "rebalance": [{"average_rank": avg, "budget": budget, "ranks": list(ranks)} for avg, budget, ranks in data.budgets]}


@dataclass(frozen=True)
class Converted:
    """What :func:`convert` wrote: the path, its form (``"dir"`` or ``"file"``), the adapter
    as written (the input, its LoRA form, or its export for a consumer) and the LoRA form's report."""

    path: Path
    form: str
    adapter: Adapter
    to_lora: Any = None  # ops.to_lora.ToLora, for convert(to="lora")


def convert(src: str | Path, out: str | Path, *, adapter_name: str | None = None, form: str | None = None,
            overwrite: bool = False, consumer: str | None = None, to: str | None = None,
            lora: dict[str, Any] | None = None) -> Converted:
    """Rewrite the adapter at ``src`` (a path or repo id) to ``out``, checked as strictly as
    ``load``; ``src`` is never modified.

    Args:
        form: ``"dir"`` (PEFT's layout) or ``"file"`` (one .safetensors, config inside); it must
            agree with ``out``'s name (``*.safetensors`` is a file), which decides by default.
        overwrite: replace ``out`` whole if it exists.
        consumer: rewrite for this serving engine first (``export``: ``vllm``, ``tgi``,
            ``llama.cpp``, ``peft``); every module's ΔW is unchanged.  Engines other than PEFT
            read the directory layout only.
        to: ``"lora"``: the adapter as the LoRA it equals first (``adapterkit.to_lora``, with
            ``lora``'s keyword arguments: ``rank`` / ``energy`` / ``sv_ratio``, ``base``,
            ``dtype``, ``device``); ``Converted.to_lora`` is its report.

    Raises:
        ArgumentError: ``argument-invalid`` for a ``form`` that contradicts ``out``'s name, or a
            one-file ``out`` for an engine that reads directories.
        AdapterkitError subclasses: what ``load``, ``export`` and ``save`` raise.
    """
    from dataclasses import replace

    from .hub.paths import load
    from .io.forms import infer_form
    from .io.outputs import check_output
    from .io.writer import save

    named = infer_form(out)
    if form is not None and form not in ("dir", "file"):
        raise ArgumentError("unknown form", path=out, key="form", expected="dir | file", actual=form)
    if form is not None and form != named:
        raise ArgumentError(f"form {form!r} contradicts the output name {Path(out).name!r} (*.safetensors names one file; "
                            "anything else a directory)", path=out, key="form", expected=named, actual=form)
    check_output(out, [("SRC", src)])  # before anything is read
    adapter = load(src, adapter_name=adapter_name)
    report = None
    if to is not None:
        if to != "lora":
            raise ArgumentError("the kind to convert to", path=out, key="to", expected="lora", actual=to)
        from .ops.to_lora import to_lora

        adapter, report = to_lora(adapter, **(lora or {}))
    elif lora:
        raise ArgumentError("rank, energy, sv_ratio, base and dtype go with to='lora'", path=out, key="lora",
                            expected="to='lora'", actual=sorted(lora))
    if consumer is not None:
        from .ops.export import export

        if consumer != "peft" and named == "file":
            raise ArgumentError(f"{consumer} reads PEFT's directory layout; name the output without .safetensors", path=out,
                                key="consumer", expected="a directory output", actual="one .safetensors file")
        adapter = replace(export(adapter, consumer), source=adapter.source)  # saved as coming from the input
    written = save(adapter, out, form=named, overwrite=overwrite)
    return Converted(Path(written), named, adapter, report)


def check(adapter: Adapter | str | Path, consumer: str, *, adapter_name: str | None = None,
          max_rank: int | None = None) -> list[Problem]:
    """Every rule of the serving engine ``consumer`` (``vllm``, ``tgi``, ``llama.cpp``, ``peft``)
    that the adapter breaks: errors are violations, warnings do not fail (see
    ``adapterkit.ops.export.check``).

    Args:
        adapter: an Adapter, or a path or repo id to load (``adapter_name``: its PEFT subfolder).
        max_rank: the engine's maximum rank (vLLM's ``--max-lora-rank``).
    """
    from .adapter import Adapter
    from .ops.export import check as check_adapter

    if not isinstance(adapter, Adapter):  # checked as load checks it, on numpy (no torch to import)
        from .hub.paths import local_path
        from .io.array_store import load_arrays

        adapter = load_arrays(local_path(adapter, "adapter"), adapter_name=adapter_name)
    return check_adapter(adapter, consumer, max_rank=max_rank)


def merge(
    base: str | Path,
    adapters: Sequence[str | Path | Adapter],
    out: str | Path,
    *,
    weights: Sequence[float] | None = None,
    device: Any = None,
    dtype: str | torch.dtype | None = None,
    max_shard_size: int | None = None,
    safe: bool = True,
    overwrite: bool = False,
    durable: bool = True,
    unmerge: bool = False,
    tied_embeddings: str | None = None,
    fan_in_fan_out: bool | str | dict[str, bool] | None = "auto",
    again: bool = False,
    force: bool = False,
    as_trained: Any = None,
) -> MergeReport:
    """Merge ``adapters`` into the model checkpoint ``base`` and write ``out``, streaming
    (``adapterkit merge``): ``adapterkit.ops.merging.merge_checkpoint`` with ``base`` and the
    adapters named by path accepted as repo ids too.  The arguments and what they mean are
    ``merge_checkpoint``'s; ``unmerge=True`` is :func:`unmerge`.

    Merging adapters attached to a live model is :func:`adapterkit.merge_attached`.
    """
    from .hub.paths import local_path
    from .ops.merging import merge_checkpoint

    return merge_checkpoint(
        base, adapters, out, weights=weights, device=device, dtype=dtype, max_shard_size=max_shard_size, safe=safe,
        overwrite=overwrite, durable=durable, unmerge=unmerge, tied_embeddings=tied_embeddings,
        fan_in_fan_out=fan_in_fan_out, again=again, force=force, as_trained=as_trained, locate=local_path,
    )


def unmerge(
    merged: str | Path,
    adapters: Sequence[str | Path | Adapter],
    out: str | Path,
    *,
    weights: Sequence[float] | None = None,
    device: Any = None,
    dtype: str | torch.dtype | None = None,
    max_shard_size: int | None = None,
    safe: bool = True,
    overwrite: bool = False,
    durable: bool = True,
    tied_embeddings: str | None = None,
    fan_in_fan_out: bool | str | dict[str, bool] | None = "auto",
    force: bool = False,
) -> MergeReport:
    """Take ``adapters`` back out of the checkpoint ``merged`` and write ``out`` (``adapterkit
    unmerge``): the weights come from its merge record unless ``weights`` is given; what the
    record does not hold, or holds in another order, is refused unless ``force``.  See
    ``merge_checkpoint`` (``unmerge=True``) for the rest.

    Unmerging adapters merged into a live model is :func:`adapterkit.unmerge_attached`.
    """
    return merge(merged, adapters, out, weights=weights, device=device, dtype=dtype, max_shard_size=max_shard_size, safe=safe,
                 overwrite=overwrite, durable=durable, unmerge=True, tied_embeddings=tied_embeddings,
                 fan_in_fan_out=fan_in_fan_out, force=force)


def extract(base: str | Path, finetuned: str | Path, *, rank: int | None = None, energy: float | None = None,
            targets: str | None = None, save_changed: bool = False, device: Any = "cpu") -> tuple[Adapter, ExtractReport]:
    """A LoRA adapter approximating ``finetuned − base`` (``adapterkit extract``, which then saves
    it): ``adapterkit.ops.extract.extract`` with the checkpoints accepted as repo ids too.
    Returns (the adapter, an ``ExtractReport``); raises as that function."""
    from .hub.paths import local_path
    from .ops.extract import extract as extract_local

    return extract_local(base, finetuned, rank=rank, energy=energy, targets=targets, save_changed=save_changed,
                         device=device, locate=local_path)
