"""Merging adapters into a model checkpoint, and taking them out again, one tensor at a time.

``merge_checkpoint(base, adapters, out)`` streams the base checkpoint: every tensor an
adapter touches is read alone, changed in fp32 on ``device`` (ΔW added, IA3 scaling
applied, a ``modules_to_save`` tensor swapped in), cast once to its stored dtype (or
``dtype``) and written; every other tensor is copied as bytes.  Peak memory is a few
tensors, whatever the model's size.  The output keeps the base's sharding and index,
carries every other file of the base, records what was merged in each shard's metadata
and in ``README.md``, and appears whole or not at all (``CheckpointWriter``).

Several adapters.  ``merge_checkpoint(base, [a, b], out)`` computes PEFT's model with ``a``
and ``b`` loaded and active in that order (``set_adapter([a, b])``; PEFT 0.22.0's layer
forward, which its ``merge_and_unload`` follows): on one module each LoRA adds its ΔW, IA3
scales what the layer computes so far (weight and bias; a feedforward IA3 its input), and
DoRA takes its norm over the *base* weight plus its own ΔW only and scales what came before
it: W' = m/‖W₀ + ΔW‖·(W + ΔW), b' = b₀ + m/‖W₀ + ΔW‖·(b − b₀).  LoRA-family and IA3 adapters,
which PEFT cannot hold in one ``PeftModel``, are taken as PEFT's layers injected one inside
the other in the listed order (``inject_adapter_in_model``, the first innermost), which is the
same rule.  Merging one after the other (two ``merge`` commands) gives the same except for
DoRA: the second command's DoRA takes its norm over what the first wrote,
‖W + ΔW_first + ΔW_dora‖.  What PEFT cannot activate together is refused by name
(``_refuse_conflicts``).  tests/test_merge_multi.py checks every pairing against PEFT.

The merge record (``merge_record``) is read before anything is written: merging an adapter
it holds needs ``again=True``; ``unmerge=True`` takes each adapter's weight from it, refuses
what it does not hold (``force=True`` goes past) and takes adapters out newest first.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..adapter import Adapter
from ..checkpoint import CheckpointWriter, open_checkpoint
from ..checkpoint.layout import nbytes
from ..devices import resolve_device
from ..dtypes import DTYPE_NAMES, DTYPES
from ..errors import ArgumentError, FormatError, TensorError, UnsupportedError
from ..io.outputs import adapter_inputs, check_output, checkpoint_inputs
from ..io.reader import load
from ..kinds.features import require_all, require_separable
from ..kinds.patterns import matches_modules_to_save
from ..linalg.norms import nonfinite_count
from ..progress import progress_bytes
from ..threads import intra_op
from . import merge_record, orientation
from .merge_plan import TIE_CHANGES_MATH, TiedEmbeddings, find_tied_embeddings, plan_merge
from .merge_quantized import (
    AsTrained,
    QuantJob,
    as_trained_keys,
    dense_config,
    lost_warning,
    most_rows,
    open_quantized,
    output_plan,
    refuse_requantize,
    row_blocks,
    survival_summary,
)
from .pipeline import Pipeline

FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
ROW_DTYPES = ("F16", "BF16", "F32")  # stored dtypes merged a block of rows at a time (fp32 math)
MERGED_KEY = merge_record.MERGED_KEY
CHUNK_ELEMENTS = 1 << 20  # elements in a block of rows: a few MB, which stay in the CPU's cache
# Blocks are a multiple of this many rows, so that they start on the row tiles of the sgemm
# kernels (MKL, OpenBLAS: 1, 2, 3, 4, 6, 8, 12, 16, 24, 32 or 48 rows): each block's B·A is then
# bit for bit those rows of the whole product that PEFT computes (blocks of other heights can
# differ in the last bit; tests/test_merge_stream.py checks this on the kernels at hand).
ROW_ALIGN = 96
OPS_PER_ELEMENT = 64  # a merged element's work for the thread policy: a row·column of B·A at rank 32, adds, cast
DEPTH = 3  # blocks read ahead of the computation, and blocks waiting for the writer
TIED_POLICIES = ("untie", "shared")


@dataclass
class MergeReport:
    """What a merge did: the output, the adapters and weights, and tensor counts."""

    out: Path
    adapters: list[dict[str, Any]]
    tensors: int = 0
    changed: int = 0
    replaced: int = 0
    copied: int = 0
    changed_keys: list[str] = field(default_factory=list)
    bytes: int = 0  # the output's tensor bytes
    seconds: float = 0.0
    lossy: list[str] = field(default_factory=list)  # why an unmerge cannot give the base back exactly
    notes: list[str] = field(default_factory=list)  # what else changed (embeddings untied)
    quantized: dict[str, Any] | None = None  # a quantized base or output: format, output form, how much of ΔW survived


Locate = Callable[[str | Path, str], Path]
"""What an operation calls to turn an input as named into a local path, with what it must hold
(``"adapter"`` or ``"checkpoint"``).  The operations take local paths (:func:`local`); the public
functions (``adapterkit.api``) pass the Hub's ``local_path``, so that a repo id is fetched where
the input is first needed, as the operation names it."""


def local(path: str | Path, want: str) -> Path:
    """The :data:`Locate` of local paths: ``path`` itself."""
    return Path(path)


def _as_adapter(item: str | Path | Adapter, safe: bool = True, locate: Locate = local) -> Adapter:
    """``safe=False`` reads NaN/Inf values too: PEFT's ``safe_merge=False`` merges them."""
    return item if isinstance(item, Adapter) else load(locate(item, "adapter"), finite=safe)


def _touches(adapters: list[Adapter], keys: dict[str, tuple[str, tuple[int, ...]]]):
    """checkpoint key -> [(adapter index, module target)], checkpoint key -> (adapter index, adapter key)
    for tensors stored whole, and per adapter its targets (module -> role -> checkpoint key).

    Several adapters on one module compose as PEFT's layer with them all active, in the listed
    order: a target whose module an earlier adapter's target changed the bias of reads the bias
    too (DoRA scales what came before, bias included).  Combinations PEFT cannot activate
    together are refused (:func:`_refuse_conflicts`)."""
    plans = [plan_merge(adapter, keys) for adapter in adapters]
    _refuse_conflicts(adapters, plans)
    touched: dict[str, list[tuple[int, Any]]] = {}
    replaced: dict[str, tuple[int, str]] = {}
    bias_of: dict[str, str] = {}  # weight key -> bias key, once an adapter before has changed the bias
    per_adapter: list[dict[str, dict[str, str]]] = []
    for i, plan in enumerate(plans):
        mine: dict[str, dict[str, str]] = {}
        for target in plan.targets:
            roles = dict(target.roles)
            weight_key = roles.get("weight")
            if weight_key in bias_of and "bias" not in roles:
                roles["bias"] = bias_of[weight_key]
                target = type(target)(target.module, roles)
            if weight_key is not None and "bias" in roles:
                bias_of[weight_key] = roles["bias"]
            mine[target.module] = roles
            for ckpt_key in roles.values():
                touched.setdefault(ckpt_key, []).append((i, target))
        for ckpt_key, adapter_key in plan.replacements.items():
            replaced[ckpt_key] = (i, adapter_key)
        per_adapter.append(mine)
    return touched, replaced, per_adapter


def _saved_whole(adapter: Adapter, adapter_key: str) -> bool:
    """Whether a tensor stored whole is a ``modules_to_save`` copy (PEFT wraps the module, one
    active adapter at a time) rather than a base tensor PEFT saves beside the adapter (a trained
    bias, an adapted embedding's base layer), which it loads into the one shared base module."""
    name = adapter.kind.whole_module_tensors(adapter).get(adapter_key)
    return name is not None and matches_modules_to_save(getattr(adapter.config, "modules_to_save", None), "." + name, ".")


def _refuse_conflicts(adapters: list[Adapter], plans: list) -> None:
    """Refuse, by name, adapters that PEFT cannot hold active together on one module.

    - two adapters that save one module whole (``modules_to_save``): PEFT's wrapper activates
      one adapter at a time (``set_adapter`` raises);
    - one adapter saving a module whole that another adapts: PEFT refuses to load the second
      (either order);
    - two adapters replacing one base tensor (trained biases, saved base layers) with different
      values: PEFT keeps one copy, the one loaded last, which a merge cannot know;
    - two IA3 adapters that disagree on whether a module is feedforward: PEFT's layer keeps the
      first adapter's flag for every adapter.

    Raises:
        UnsupportedError: ``not-supported``, naming both adapters, the module and why.
    """
    def refuse(i: int, j: int, key: str, why: str) -> UnsupportedError:
        return UnsupportedError(
            f"adapters `{adapters[i].source}` and `{adapters[j].source}` cannot be merged together: {why}; "
            "merge them one after the other (two merge commands) if that is what you mean",
            key=key, expected="adapters PEFT can hold active together", actual=f"both change `{key}`",
        )

    saved: dict[str, tuple[int, str]] = {}  # checkpoint key -> (adapter, adapter key) of a tensor stored whole
    for i, plan in enumerate(plans):
        for ckpt_key, akey in plan.replacements.items():
            if ckpt_key in saved:
                j, other = saved[ckpt_key]
                whole = _saved_whole(adapters[j], other) or _saved_whole(adapters[i], akey)
                if whole:
                    raise refuse(j, i, ckpt_key, f"both save the module of `{ckpt_key}` whole (modules_to_save), and PEFT "
                                                "activates one adapter at a time on such a module (set_adapter raises)")
                if not torch.equal(adapters[j].tensors[other], adapters[i].tensors[akey]):
                    raise refuse(j, i, ckpt_key, f"both store the base tensor `{ckpt_key}` (a trained bias or a saved base layer) "
                                                "with different values, and PEFT keeps one copy: whichever adapter it loaded last")
            saved[ckpt_key] = (i, akey)
    modules: dict[str, list[tuple[int, str]]] = {}  # a module's weight key -> (adapter, module name)
    for i, plan in enumerate(plans):
        for target in plan.targets:
            if "weight" in target.roles:
                modules.setdefault(target.roles["weight"], []).append((i, target.module))
    for i, plan in enumerate(plans):
        for ckpt_key, akey in plan.replacements.items():
            if not _saved_whole(adapters[i], akey):
                continue
            owner = ckpt_key.rsplit(".", 1)[0]
            for j, module in (t for k, ts in modules.items() if k.rsplit(".", 1)[0] == owner for t in ts):
                if j != i:
                    raise refuse(i, j, ckpt_key, f"one saves `{owner}` whole (modules_to_save) and the other adapts it "
                                                f"(`{module}`); PEFT refuses to load the second of them")
    for key, users in modules.items():
        flags = {i: getattr(adapters[i].module(m), "is_feedforward", None) for i, m in users}
        seen = {(adapters[i].peft_type, f): i for i, f in flags.items() if f is not None}
        for (kind, flag), i in seen.items():
            j = seen.get((kind, not flag))
            if j is not None:
                raise refuse(min(i, j), max(i, j), key, f"they disagree on whether `{key.rsplit('.', 1)[0]}` is a feedforward module "
                                                        "(IA3 scales its input or its output); PEFT's layer keeps the first adapter's choice for all")


class _Tensors:
    """The fp32 values of the base tensors a merge has touched but not yet written.

    A module's roles may lie anywhere in the file (a bias before its weight): when the first
    of them comes up, every module touching it or its other roles is applied (each exactly
    once, adapters in order — reversed for unmerge), reading its other roles early and keeping
    their new values here until their turn to be written.  Memory: the roles of the modules in
    flight.
    """

    def __init__(self, direction: str, adapters: list[Adapter], weights: list[float], touched, replaced, read, device) -> None:
        self.direction, self.adapters, self.weights = direction, adapters, weights
        self.touched, self.replaced, self.read, self.device = touched, replaced, read, device
        self.values: dict[str, torch.Tensor] = {}
        self.changed: set[str] = set()
        self.applied: set[tuple[int, str]] = set()
        # a merged key's value before any module changed it, where several adapters change it:
        # PEFT's DoRA takes its norm over the base weight, whatever the adapters before it did
        self.originals: dict[str, torch.Tensor] = {}

    def _current(self, key: str) -> torch.Tensor:
        if key not in self.values:
            if key in self.replaced and self.direction == "merge":  # on unmerge the base's is gone: left as merged
                i, adapter_key = self.replaced[key]
                self.values[key] = self.adapters[i].tensors[adapter_key].to(device=self.device, dtype=torch.float32)
                self.changed.add(key)
            else:
                self.values[key] = self.read(key).to(device=self.device, dtype=torch.float32)
            if self.direction == "merge" and len(self.touched.get(key, ())) > 1:
                self.originals[key] = self.values[key]
        return self.values[key]

    def _module_group(self, key: str) -> list[tuple[int, Any]]:
        """Every (adapter, target) touching ``key`` or, in turn, another role of those targets
        (a bias that comes before its weight in the file), in adapter order: the adapters on one
        module apply in the order listed, whichever of its tensors comes up first."""
        found: list[tuple[int, Any]] = []
        seen: set[tuple[int, str]] = set()
        pending = [key]
        while pending:
            for i, target in self.touched.get(pending.pop(0), []):
                if (i, target.module) not in seen:
                    seen.add((i, target.module))
                    found.append((i, target))
                    pending.extend(target.roles.values())
        return sorted(found, key=lambda item: item[0])  # stable: one adapter's targets as listed

    def take(self, key: str) -> torch.Tensor | None:
        """The new fp32 value of ``key`` (None: unchanged, copy the base's bytes)."""
        order = self._module_group(key)
        for i, target in (reversed(order) if self.direction == "unmerge" else order):
            if (i, target.module) in self.applied:
                continue
            self.applied.add((i, target.module))
            roles = {role: self._current(ck) for role, ck in target.roles.items()}
            kind = self.adapters[i].kind
            if self.direction == "merge":
                base = {role: self.originals[ck] for role, ck in target.roles.items() if ck in self.originals}
                new = kind.merge_module(self.adapters[i], target.module, roles, weight=self.weights[i], device=self.device,
                                        base=base or None)
            else:
                new = kind.unmerge_module(self.adapters[i], target.module, roles, weight=self.weights[i], device=self.device)
            for role, ck in target.roles.items():
                if role in new:
                    self.values[ck] = new[role]
                    self.changed.add(ck)
        if key in self.replaced:
            self._current(key)
        value = self.values.pop(key, None)
        self.originals.pop(key, None)
        if key in self.changed:
            self.changed.discard(key)
            return value
        return None


def merge_checkpoint(
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
    locate: Locate = local,
    as_trained: Any = None,
) -> MergeReport:
    """Merge ``adapters`` (each scaled by its weight, default 1) into the checkpoint ``base`` and
    write ``out``; with ``unmerge=True`` take them out instead (exact up to rounding for LoRA;
    IA3 and DoRA are lossy).  Several adapters give PEFT's model with them all active, in the
    order given (see the module docstring for what that means and what two merges one after
    the other give instead).

    The merge record: ``merge`` refuses an adapter the base's record already holds (or one
    listed twice) unless ``again``; ``unmerge`` takes the weights from the record when
    ``weights`` is None, and refuses an adapter the record does not hold, other weights, or one
    a later merge still in place does not commute with, unless ``force``.  ``dtype`` is also
    written into ``config.json`` (``dtype``/``torch_dtype``); integer and bool tensors keep
    their dtype.

    ``tied_embeddings`` says what happens when the checkpoint ties its output embedding
    (``lm_head``) to its input embedding and an adapter changes either: ``"untie"`` (the
    default) writes the output embedding as a tensor of its own and sets
    ``tie_word_embeddings: false`` in ``config.json``, so the merged model computes what the
    adapter-attached model does; ``"shared"`` merges both into the one shared matrix, as
    PEFT's ``merge_and_unload`` does (which changes the other embedding too).  None (the
    default) is ``"untie"`` where ``config.json`` says the embeddings are tied; where no config
    says either way (an input embedding and no output embedding stored) the tie is unknown,
    and a merge that changes either is refused (``tied-embeddings``) unless a policy is given,
    which then takes the model as tied.  Where the adapters replace both embeddings by equal
    tensors and change them no other way (``extract --save-changed`` of a fine-tune that kept
    the tie), the tie is kept under either policy.

    ``fan_in_fan_out`` says how 2-D base weights are stored, per module as PEFT decides it (a
    transformers Conv1D is (in, out) whatever the adapter's saved flag): ``"auto"`` (the default)
    decides from ``config.json`` and the shapes, and refuses (``orientation-unknown``) where they
    cannot tell; True / False, or {module name or suffix: bool}, say it (``ops.orientation``).

    A quantized base (``config.json`` names a ``quantization_config``; ``adapterkit.quant``) is
    merged as the dense model it stands for: with ``dtype`` the output is dense (every packed
    weight dequantized, ΔW added in fp32, rounded once; ``quantization_config`` removed), without
    it the changed modules are quantized again in the base's format and the report says how much
    of each ΔW survived (``ops.merge_quantized``).  ``as_trained`` (an ``AsTrained``, or a dict
    of its fields) rounds a dense base's linear weights through bitsandbytes' 4-bit quantizer
    first, as the QLoRA run that trained the adapter saw them.

    ``safe`` (PEFT's ``safe_merge``): refuse NaN/Inf in an adapter read here or in a merged
    tensor; ``safe=False`` checks neither and writes what the sums give, as PEFT's unsafe merge.

    ``base`` and the adapters named by path are local paths; ``locate`` (:data:`Locate`) turns
    them into local paths otherwise (``adapterkit.merge`` passes the Hub's, for repo ids).

    Raises:
        AdapterkitError subclasses: an adapter that cannot be merged (prompt kinds), modules
        with no or mismatched base tensors (all listed at once), non-float base tensors,
        NaN/Inf in a merged tensor with ``safe`` (naming it), output rules as ``save``;
        ``not-supported`` for adapters PEFT cannot hold active together; ``merge-record``
        (ArgumentError) for what the merge record refuses.
    """
    started = time.perf_counter()
    direction = "unmerge" if unmerge else "merge"
    device = resolve_device(device) or torch.device("cpu")
    ckpt = open_checkpoint(locate(base, "checkpoint"))
    config = _read_config(ckpt)
    view = open_quantized(ckpt, config)
    settings = _as_trained(as_trained, view, unmerge)
    loaded = [_as_adapter(a, safe, locate) for a in adapters]
    require_all(loaded, direction, what=direction)  # a PEFT feature merging does not implement: by name
    check_output(out, [*checkpoint_inputs(ckpt, "merged checkpoint" if unmerge else "base checkpoint"),  # before any work
                       *(i for n, a in enumerate(loaded, 1) for i in adapter_inputs(a, f"adapter {n}"))])
    if weights is not None and len(weights) != len(loaded):
        raise UnsupportedError("one weight per adapter", key="weights", expected=len(loaded), actual=len(weights))
    if weights is not None and not all(_finite_number(w) for w in weights):
        raise ArgumentError("weights must be finite numbers (a NaN or infinite weight would write a NaN checkpoint, or pass "
                            "safe=False unnoticed)", key="weights", expected="finite numbers", actual=list(weights))
    history = merge_record.read(ckpt)
    digests = [merge_record.adapter_digest(a) for a in loaded]
    notes: list[str] = []
    if unmerge:  # the record gives the weights and the order (newest merge taken out first)
        undo = merge_record.plan_unmerge(history, digests, loaded, weights, force=force, path=ckpt.path)
        loaded, digests = [loaded[i] for i in undo.order], [digests[i] for i in undo.order]
        weights, kept = [undo.weights[i] for i in undo.order], undo.remaining
        notes += undo.notes
    else:
        weights = [1.0] * len(loaded) if weights is None else [float(w) for w in weights]
        notes += merge_record.check_merge(history, digests, loaded, again=again, path=ckpt.path)
    if tied_embeddings is not None and tied_embeddings not in TIED_POLICIES:
        raise UnsupportedError("unknown tied_embeddings policy", key="tied_embeddings", expected=" | ".join(TIED_POLICIES), actual=tied_embeddings)
    keys = view.keys() if view is not None else {k: (ckpt.info(k).dtype, tuple(ckpt.info(k).shape)) for k in ckpt.keys()}
    tie = find_tied_embeddings(keys, config)
    planned = dict(keys)
    if tie is not None and not tie.stored:  # plan as if the output embedding were there
        planned[tie.output_key] = keys[tie.input_key]
    loaded = orientation.for_checkpoints(loaded, planned, config=config, fan_in_fan_out=fan_in_fan_out, where=ckpt.path)
    touched, replaced, targets = _touches(loaded, planned)
    sources: dict[str, str] = {}  # output key -> the base key its bytes come from
    files: dict[str, bytes] = {}
    if tie is not None and any(k in touched or k in replaced for k in (tie.input_key, tie.output_key)):
        if not tie.known and tied_embeddings is None:
            raise _unknown_tie(ckpt, tie)
        if _replaced_alike(tie, touched, replaced, loaded):
            _keep_tie(tie, replaced, notes)
        elif (tied_embeddings or "untie") == "untie":
            for i, target in touched.get(tie.input_key, []) + touched.get(tie.output_key, []):
                require_separable(loaded[i], target.module)  # trainable tokens change the tied rows of both
            keys = _untie(ckpt, keys, tie, replaced, sources, files, notes)
        else:
            _share(tie, touched, replaced, notes)
    out_dtype = None if dtype is None else (dtype if isinstance(dtype, str) else DTYPE_NAMES.get(dtype, str(dtype)))
    if out_dtype is not None and out_dtype not in FLOAT_DTYPES:
        raise UnsupportedError("--dtype must be a floating-point dtype", key="dtype", expected=" | ".join(FLOAT_DTYPES), actual=out_dtype)
    placement, dropped = dict(sources), []
    if view is not None:
        if out_dtype is None:
            refuse_requantize(view, ckpt.path)
        plan, placed, dropped = output_plan(view, keys, out_dtype, FLOAT_DTYPES, set(touched) | set(replaced))
        placement.update(placed)
    else:
        plan = {k: (out_dtype if out_dtype and dt in FLOAT_DTYPES else dt, shape) for k, (dt, shape) in keys.items()}
    if out_dtype is not None:
        _config_dtype(ckpt, files, out_dtype, notes)
        if view is not None:
            dense_config(config, files, notes)
    rounded = frozenset(as_trained_keys(keys, settings, FLOAT_DTYPES)) if settings is not None else frozenset()
    if settings is not None:
        notes.append(f"{len(rounded)} linear weights rounded through bitsandbytes' {settings.quant_type} quantizer "
                     f"(blocksize {settings.blocksize}, double quantization {'on' if settings.double_quant else 'off'}) "
                     "before merging, as the QLoRA run saw them")
    entries = []
    for a, w, d, mine in zip(loaded, weights, digests, targets):
        plan_keys = {ck for ck, (i, _) in replaced.items() if loaded[i] is a}
        added, changed = merge_record.effects(a, mine, plan_keys)
        entries.append(merge_record.Entry(str(a.source) if a.source else None, a.peft_type, w, a.config.base_model_name_or_path,
                                          d, added, changed))
    record = [{k: v for k, v in e.to_json().items() if k not in ("added", "changed")} for e in entries]
    after = kept if unmerge else [*history, *entries]
    metadata = {"format": "pt"}
    if after:
        metadata[MERGED_KEY] = merge_record.dumps(after)
    if unmerge:
        metadata[merge_record.UNMERGED_KEY] = merge_record.dumps(entries)
    if notes:
        metadata["adapterkit.notes"] = json.dumps(notes)
    report = MergeReport(Path(out), record, notes=notes)
    if unmerge:
        if replaced:
            report.lossy.append(f"{len(replaced)} tensors stored whole in the adapter (modules_to_save) stay as merged: the base's are gone")
        report.lossy += sorted({f"{a.peft_type} scaling divided back out (rounding)" for a in loaded if a.peft_type == "IA3"})
    report.bytes = sum(nbytes(*v) for v in plan.values())
    quantized = view is not None or settings is not None
    if quantized:
        job = QuantJob(direction, ckpt, view, keys, plan, touched, replaced, device, safe, report, sources,
                       dense=out_dtype is not None, as_trained=settings, rounded=rounded, adapters=loaded, weights=weights)
    else:
        job = _Job(direction, ckpt, loaded, weights, touched, replaced, keys, plan, device, safe, report, sources)
    with CheckpointWriter(Path(out), ckpt, plan=plan, max_shard_size=max_shard_size, metadata=metadata,
                          overwrite=overwrite, durable=durable, placement=placement, dropped=dropped) as writer:
        with progress_bytes(report.bytes, desc=direction, items=len(keys)) as advance:
            if quantized:
                with intra_op(OPS_PER_ELEMENT * max((math.prod(v[1]) for v in keys.values()), default=0)):
                    job.run(writer, _Tensors(direction, loaded, weights, touched, replaced, job.read, device), advance)
                report.quantized = _quantized_report(view, settings, out_dtype, job.survival)
                notes += lost_warning(report.quantized)
            else:
                job.run(writer, advance)
        if writer.form == "dir":
            files.update(_readme(ckpt, direction, record, notes))
        elif files:
            notes.append("config.json not written (the output is one .safetensors file): set tie_word_embeddings to false where the model's config is kept")
        report.out = writer.commit(files if writer.form == "dir" else None)
    report.seconds = time.perf_counter() - started
    return report


def _as_trained(as_trained: Any, view, unmerge: bool):
    """The checked ``AsTrained`` settings (None: not asked)."""
    if as_trained is None:
        return None
    settings = as_trained if isinstance(as_trained, AsTrained) else AsTrained.from_dict(as_trained)
    settings.check()
    if view is not None:
        raise ArgumentError("as_trained rounds a 16-bit base as the QLoRA run did; this base is quantized already "
                            f"({view.fmt.name}): merge into it as it is", key="as_trained", expected="a dense base", actual=view.fmt.name)
    if unmerge:
        raise ArgumentError("as_trained applies to merging only: an unmerge cannot restore the weights it rounded",
                            key="as_trained", expected="merge", actual="unmerge")
    return settings


def _quantized_report(view, settings, out_dtype: str | None, survival: list) -> dict[str, Any]:
    if view is None:
        return {"as_trained": settings.__dict__ | {"skip": list(settings.skip)}, "output": "dense"}
    form = "dense" if out_dtype is not None else "requantized"
    report: dict[str, Any] = {**view.describe(), "output": form}
    if form == "requantized":
        report["survival"] = survival_summary(survival)
    return report


def _read_config(ckpt) -> dict | None:
    """The checkpoint's ``config.json`` (None: a single-file checkpoint, or none there)."""
    path = ckpt.path / "config.json"
    if not ckpt.path.is_dir() or not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"config.json cannot be read as JSON: {exc}", code="checkpoint-invalid", path=path) from None
    return value if isinstance(value, dict) else None


# safetensors dtype -> the name transformers writes in config.json ("dtype"; "torch_dtype" before 4.56)
TORCH_NAMES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
CONFIG_DTYPE_KEYS = ("dtype", "torch_dtype")


def _config_dtype(ckpt, files: dict[str, bytes], out_dtype: str, notes: list[str]) -> None:
    """Make config.json name the dtype the output stores (transformers' ``from_pretrained`` loads
    in the config's ``dtype``, or ``torch_dtype`` in configs written before 4.56: a stale one
    would load bf16 weights as fp32).  Every ``dtype``/``torch_dtype`` member is rewritten, those
    of sub-configs (``text_config``, ...) included; a config naming none is left as it is
    (transformers then reads the dtype off the weights)."""
    if "config.json" in files:
        config = json.loads(files["config.json"])
    else:
        config = _read_config(ckpt)
    if not isinstance(config, dict):
        return
    name, found = TORCH_NAMES[out_dtype], []

    def rewrite(node: dict, where: str) -> None:
        for key, value in node.items():
            if key in CONFIG_DTYPE_KEYS and isinstance(value, str) and value != name:
                node[key] = name
                found.append(where + key)
            elif isinstance(value, dict):
                rewrite(value, f"{where}{key}.")

    rewrite(config, "")
    if found:
        files["config.json"] = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()  # utf-8
        notes.append(f"config.json: {', '.join(found)} set to {name}")


def _base_layer(replacement: tuple[int, str]) -> bool:
    """Whether a whole-tensor replacement is a saved base layer (PEFT saves embedding layers
    it adapts), which PEFT loads into the shared matrix, rather than a modules_to_save copy."""
    return replacement[1].endswith(".base_layer.weight")


def _unknown_tie(ckpt, tie: TiedEmbeddings) -> UnsupportedError:
    """The refusal of a merge that depends on a tie no config.json states."""
    return UnsupportedError(
        f"an adapter changes `{tie.input_key}` or `{tie.output_key}`, the checkpoint stores no `{tie.output_key}` and no "
        "config.json says whether it is tied to the input embedding (tie_word_embeddings): untying would add "
        f"`{tie.output_key}`, sharing changes the one matrix. If the model ties them, say how to merge: "
        "tied_embeddings='untie' or 'shared' (--tied-embeddings untie | shared; 'shared' is also exact for a model without "
        "an output layer); or put the model's config.json beside the checkpoint",
        code="tied-embeddings", path=ckpt.path, key="tie_word_embeddings", expected="config.json or --tied-embeddings", actual="unknown",
    )


def _replaced_alike(tie: TiedEmbeddings, touched: dict, replaced: dict, adapters: list[Adapter]) -> bool:
    """Whether both embeddings are replaced by equal tensors and changed in no other way: the
    merged model then ties them as the base did, whatever the policy."""
    if tie.input_key in touched or tie.output_key in touched or tie.input_key not in replaced or tie.output_key not in replaced:
        return False
    (i, a), (j, b) = replaced[tie.input_key], replaced[tie.output_key]
    return torch.equal(adapters[i].tensors[a], adapters[j].tensors[b])


def _finite_number(value: Any) -> bool:
    """A weight the merge can use: anything ``float()`` takes (numpy and torch scalars too), finite, not a bool."""
    if isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _keep_tie(tie: TiedEmbeddings, replaced: dict, notes: list[str]) -> None:
    """Both embeddings become the one tensor the adapters store for each: the tie stays."""
    if not tie.stored:
        replaced.pop(tie.output_key)
    notes.append(f"`{tie.input_key}` and `{tie.output_key}`, which it is tied to, are replaced by equal tensors: they stay tied")


def _untie(ckpt, keys: dict, tie: TiedEmbeddings, replaced: dict, sources: dict[str, str], files: dict[str, bytes],
           notes: list[str]) -> dict:
    """Give the output embedding a tensor of its own (the input embedding's base value, then
    its own merges) and a config that no longer ties them; returns the output's keys in order.

    A saved base layer of either embedding is what PEFT loads into the shared matrix: both
    start from it.  A ``modules_to_save`` copy replaces its own embedding only."""
    model_type = (tie.config or {}).get("model_type")
    if model_type in TIE_CHANGES_MATH:
        raise UnsupportedError(
            f"{model_type} computes differently once untied, so the tied embeddings cannot be untied exactly; "
            "tied_embeddings='shared' (--tied-embeddings shared) merges into the shared matrix, as PEFT does",
            code="tied-embeddings", path=ckpt.path, key=tie.output_key, expected="a model whose tie only shares the matrix", actual=model_type,
        )
    sources[tie.output_key] = tie.input_key
    shared = [replaced[k] for k in (tie.input_key, tie.output_key) if k in replaced and _base_layer(replaced[k])]
    for k in (tie.input_key, tie.output_key):
        if shared and (k not in replaced or _base_layer(replaced[k])):
            replaced[k] = shared[-1]
    if tie.stored:  # transformers loads the input embedding there, whatever is stored
        ordered = dict(keys)
        ordered[tie.output_key] = keys[tie.input_key]
    else:
        ordered = {}
        for k, v in keys.items():
            ordered[k] = v
            if k == tie.input_key:
                ordered[tie.output_key] = v
    note = f"untied `{tie.output_key}` from `{tie.input_key}` (it starts as the base's `{tie.input_key}`)"
    if tie.config is not None:
        config = dict(tie.config, tie_word_embeddings=False)
        files["config.json"] = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8")
        note += "; config.json: tie_word_embeddings false"
    else:
        note += "; no config.json came with the checkpoint: set tie_word_embeddings to false in the model's config"
    notes.append(note)
    return ordered


def _share(tie: TiedEmbeddings, touched: dict, replaced: dict, notes: list[str]) -> None:
    """Merge the output embedding's modules into the shared matrix, as PEFT does (a saved base
    layer of the output embedding is loaded into the shared matrix too)."""
    if tie.output_key in replaced and _base_layer(replaced[tie.output_key]):
        replaced.setdefault(tie.input_key, replaced.pop(tie.output_key))
    whole = [k for k in (tie.input_key, tie.output_key) if k in replaced and not _base_layer(replaced[k])]
    if whole:
        raise UnsupportedError(
            f"a tensor stored whole (modules_to_save) replaces `{whole[0]}`, which is tied to the other embedding; "
            "the shared matrix cannot be both: untie them (tied_embeddings='untie', the default)",
            code="tied-embeddings", key=whole[0], expected="untie", actual="shared",
        )
    moved = touched.pop(tie.output_key, [])
    for i, target in moved:
        roles = {role: (tie.input_key if ck == tie.output_key else ck) for role, ck in target.roles.items()}
        touched.setdefault(tie.input_key, []).append((i, type(target)(target.module, roles)))
    touched[tie.input_key].sort(key=lambda t: t[0])  # adapters in order; within one, as listed
    if moved:
        notes.append(f"merged `{tie.output_key}`'s modules into `{tie.input_key}`, which it is tied to (as PEFT does): the input embeddings change too")
    else:
        notes.append(f"`{tie.input_key}` changed; `{tie.output_key}` is tied to it and changes too (as in PEFT's merge)")


@dataclass
class _Rows:
    """A tensor streamed a block of rows at a time, seen as rows × cols, with the terms its
    rows get (one per adapter touching it, in order; none for a dtype change alone)."""

    rows: int
    cols: int
    per: int
    terms: list[tuple[int, Any]]
    src: torch.dtype
    dst: torch.dtype

    def blocks(self) -> list[tuple[int, int]]:
        return row_blocks(self.rows, self.per, ROW_ALIGN)

    @property
    def most(self) -> int:
        """Rows of the tallest block (a short tail joins the block before it)."""
        return most_rows(self.rows, self.per, ROW_ALIGN)


class _Block:
    """A reusable buffer for one block of rows: in host memory (page-locked when the math runs on
    a CUDA device, so that copies to and from it run at the bus's speed), or on ``device``."""

    def __init__(self, nbytes: int, *, device: torch.device | None = None, pinned: bool = False) -> None:
        self.data = torch.empty(nbytes, dtype=torch.uint8, device=device, pin_memory=pinned)
        self.view = memoryview(self.data.numpy()) if self.data.device.type == "cpu" else None

    def tensor(self, dtype: torch.dtype, rows: int, cols: int) -> torch.Tensor:
        return self.data[: rows * cols * dtype.itemsize].view(dtype).view(rows, cols)


class _Job:
    """One streamed merge: the main thread computes, a reader thread reads the blocks of rows
    ahead, a writer thread writes behind (copies of untouched tensors included, kernel to
    kernel); at most ``DEPTH`` blocks wait on each side, so memory stays a few blocks plus, for
    tensors that cannot be streamed by rows, the tensor being merged."""

    def __init__(self, direction: str, ckpt, adapters: list[Adapter], weights: list[float], touched, replaced,
                 keys: dict[str, tuple[str, tuple[int, ...]]], plan, device: torch.device, safe: bool, report: MergeReport,
                 sources: dict[str, str] | None = None) -> None:
        self.direction, self.ckpt, self.adapters, self.weights = direction, ckpt, adapters, weights
        self.sources = sources or {}  # an output key whose base value is another key's (untied embeddings)
        self.touched, self.replaced, self.keys, self.plan = touched, replaced, keys, plan
        self.device, self.safe, self.report = device, safe, report
        self.rows = {k: r for k in keys if (r := self._rows(k)) is not None}

    def _rows(self, key: str) -> _Rows | None:
        """How ``key`` streams by rows, or None: it is copied as bytes, or merged whole."""
        src, shape = self.keys[key]
        dst = self.plan[key][0]
        if key not in self.touched and key not in self.replaced and src == dst:
            return None  # copied as bytes
        if self.device.type not in ("cpu", "cuda") or src not in ROW_DTYPES or dst not in ROW_DTYPES or key in self.replaced:
            return None
        numel = math.prod(shape)
        if numel == 0:
            return None
        rows = shape[0] if shape else 1
        terms = []
        order = self.touched.get(key, [])
        for i, target in reversed(order) if self.direction == "unmerge" else order:
            if dict(target.roles) != {"weight": key}:
                return None
            adapter = self.adapters[i]
            if adapter.kind.row_merger(adapter, target.module, weight=self.weights[i], unmerge=self.direction == "unmerge",
                                       device=self.device) is None:
                return None
            terms.append((i, target.module))
        cols = numel // rows
        per = max(ROW_ALIGN, CHUNK_ELEMENTS // cols // ROW_ALIGN * ROW_ALIGN)
        return _Rows(rows, cols, min(rows, per), terms, DTYPES[src], DTYPES[dst])

    def run(self, writer: CheckpointWriter, advance: Callable[[int, int], None]) -> None:
        self.writer, self.advance = writer, advance
        pipe = self.pipe = Pipeline()
        try:
            self.jobs = pipe.channel(2)
            if self.rows:
                size = max(r.most * r.cols for r in self.rows.values())
                self.free_in, self.ready, self.free_out = pipe.channel(DEPTH), pipe.channel(DEPTH), pipe.channel(DEPTH)
                pinned = self.device.type == "cuda"  # blocks cross the bus: page-locked host memory
                for _ in range(DEPTH):
                    self.free_in.put(_Block(size * max(r.src.itemsize for r in self.rows.values()), pinned=pinned))
                    self.free_out.put(_Block(size * max(r.dst.itemsize for r in self.rows.values()), pinned=pinned))
                self.acc, self.term = _Block(size * 4, device=self.device), _Block(size * 4, device=self.device)
                pipe.spawn("reader", self._read_ahead, list(self.rows.items()))
            pipe.spawn("writer", self._write_behind)
            # a core each stays free for the reader and the writer: spinning compute threads would slow the I/O down
            largest = max((math.prod(self.keys[k][1]) for k in self.keys if k in self.touched or k in self.replaced), default=0)
            with intra_op(OPS_PER_ELEMENT * largest, reserve=2):
                self._compute()
            self.jobs.put(None)
            pipe.join()
        finally:
            pipe.close()

    # -- the threads ---------------------------------------------------------------------------

    def _read_ahead(self, rows: list[tuple[str, _Rows]]) -> None:
        for key, r in rows:
            for start, stop in r.blocks():
                block = self.free_in.get()
                n = (stop - start) * r.cols * r.src.itemsize
                self.ckpt.read_into(self.sources.get(key, key), block.view[:n], start * r.cols * r.src.itemsize)
                self.ready.put(block)

    def _write_behind(self) -> None:
        while (job := self.jobs.get()) is not None:
            how, key, data = job
            if how == "copy":
                source = self.sources.get(key, key)
                self.writer.copy_from(key, self.ckpt, source)
                self.advance(self.ckpt.info(source).nbytes, 1)
            elif how == "write":
                self.writer.write(key, data)
                self.advance(data.nbytes, 1)
            else:
                self.writer.write_chunks(key, self._pieces(data))
                self.advance(0, 1)

    def _pieces(self, channel) -> Iterator[memoryview]:
        while (item := channel.get()) is not None:
            view, block = item
            yield view
            self.advance(view.nbytes, 0)
            self.free_out.put(block)

    def _compute(self) -> None:
        state = _Tensors(self.direction, self.adapters, self.weights, self.touched, self.replaced, self._read, self.device)
        report = self.report
        for key in self.keys:
            report.tensors += 1
            if key not in self.touched and key not in self.replaced and self.keys[key][0] == self.plan[key][0]:
                self.jobs.put(("copy", key, None))
                report.copied += 1
                continue
            if key in self.touched or key in self.replaced:
                report.changed += key in self.touched
                report.replaced += key in self.replaced
                report.changed_keys.append(key)
            rows = self.rows.get(key)
            if rows is not None:
                self._stream_rows(key, rows)
                continue
            value = state.take(key)
            if value is None:
                value = self._read(key).to(device=self.device, dtype=torch.float32)
            if self.safe and (bad := nonfinite_count(value)):
                raise self._non_finite(key, bad, value.numel())
            self.jobs.put(("write", key, value.to(DTYPES[self.plan[key][0]]).cpu()))
            del value

    def _stream_rows(self, key: str, r: _Rows) -> None:
        """Merge ``key`` a block of rows at a time: W + term (+ term ...) in fp32, checked, cast once."""
        fills = [self.adapters[i].kind.row_merger(self.adapters[i], module, weight=self.weights[i],
                                                  unmerge=self.direction == "unmerge", device=self.device)
                 for i, module in r.terms]
        pieces = self.pipe.channel(DEPTH)
        self.jobs.put(("chunks", key, pieces))
        bad = 0
        for start, stop in r.blocks():
            n = stop - start
            block = self.ready.get()
            W = block.tensor(r.src, n, r.cols)
            acc = self.acc.tensor(torch.float32, n, r.cols)
            acc.copy_(W)  # exact: every fp16/bf16 value is an fp32 value
            self.free_in.put(block)
            if fills:
                term = self.term.tensor(torch.float32, n, r.cols)
                for fill in fills:
                    fill(start, stop, term)
                    acc.add_(term)  # W.float() + term: merge's sum, one rounding
            if self.safe and (bad or not math.isfinite(acc.sum().item())):
                # a sum of finite values may overflow: only a count says which values are not finite
                bad += int((~torch.isfinite(acc)).sum())
                if bad:
                    continue  # nothing more of this tensor is written: counting for the message
            out = self.free_out.get()
            out.tensor(r.dst, n, r.cols).copy_(acc)
            pieces.put((out.view[: n * r.cols * r.dst.itemsize], out))
        if bad:
            raise self._non_finite(key, bad, r.rows * r.cols)
        pieces.put(None)

    def _read(self, key: str) -> torch.Tensor:
        return self.ckpt.read(self.sources.get(key, key))

    def _non_finite(self, key: str, bad: int, numel: int) -> TensorError:
        return TensorError(
            f"the {self.direction}d tensor holds NaN or Inf; nothing was written (--no-safe writes it anyway)",
            code="non-finite", path=self.ckpt.shard_of(self.sources.get(key, key)), key=key, expected="finite values",
            actual=f"{bad} non-finite of {numel}",
        )


def _readme(ckpt, direction: str, record: list[dict[str, Any]], notes: list[str]) -> dict[str, bytes]:
    """The base's README.md (if any) with a section saying what was merged."""
    base_readme = ckpt.path / "README.md" if ckpt.path.is_dir() else None
    text = base_readme.read_text(encoding="utf-8") if base_readme is not None and base_readme.is_file() else ""
    lines = [f"## {'Merged' if direction == 'merge' else 'Unmerged'} with adapterkit", ""]
    for r in record:
        lines.append(f"- {r['kind']} adapter `{r['adapter']}`, weight {r['weight']:g}"
                     + (f" (trained on `{r['base_model']}`)" if r.get("base_model") else "")
                     + (f", content digest `{r['digest']}`" if r.get("digest") else ""))
    lines += [f"- {n[0].upper()}{n[1:]}" for n in notes]
    lines += ["", f"Each shard's safetensors metadata records the same under `{MERGED_KEY if direction == 'merge' else 'adapterkit.unmerged'}`.", ""]
    section = "\n".join(lines)
    return {"README.md": ((text.rstrip("\n") + "\n\n" if text else "") + section).encode("utf-8")}
