"""Merging adapters into a model checkpoint, and taking them out again, one tensor at a time.

``merge_checkpoint(base, adapters, out)`` streams the base checkpoint: every tensor an
adapter touches is read alone, changed in fp32 on ``device`` (ΔW added, IA3 scaling
applied, a ``modules_to_save`` tensor swapped in), cast once to its stored dtype (or
``dtype``) and written; every other tensor is copied as bytes.  Peak memory is a few
tensors, whatever the model's size.  The output keeps the base's sharding and index,
carries every other file of the base, records what was merged in each shard's metadata
and in ``README.md``, and appears whole or not at all (``CheckpointWriter``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..adapter import Adapter
from ..checkpoint import CheckpointWriter, open_checkpoint
from ..devices import resolve_device
from ..errors import TensorError, UnsupportedError
from ..io.reader import load
from ..io.safetensors_file import DTYPE_NAMES, DTYPES
from ..progress import progress
from .merge_plan import plan_merge

FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
MERGED_KEY = "adapterkit.merged"


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
    lossy: list[str] = field(default_factory=list)  # why an unmerge cannot give the base back exactly


def _as_adapter(item: str | Path | Adapter) -> Adapter:
    return item if isinstance(item, Adapter) else load(item)


def _touches(adapters: list[Adapter], keys: dict[str, tuple[str, tuple[int, ...]]]):
    """checkpoint key -> [(adapter index, module target)], and checkpoint key -> (adapter index, adapter key)
    for ``modules_to_save`` replacements (the last adapter that saves a tensor wins)."""
    touched: dict[str, list[tuple[int, Any]]] = {}
    replaced: dict[str, tuple[int, str]] = {}
    for i, adapter in enumerate(adapters):
        plan = plan_merge(adapter, keys)
        for target in plan.targets:
            for ckpt_key in target.roles.values():
                touched.setdefault(ckpt_key, []).append((i, target))
        for ckpt_key, adapter_key in plan.replacements.items():
            replaced[ckpt_key] = (i, adapter_key)
    return touched, replaced


class _Tensors:
    """The fp32 values of the base tensors a merge has touched but not yet written.

    A module's roles may lie anywhere in the file (a bias before its weight): when the first
    of them comes up, every module touching it is applied (each exactly once, adapters in
    order — reversed for unmerge), reading its other roles early and keeping their new values
    here until their turn to be written.  Memory: the roles of the modules in flight.
    """

    def __init__(self, direction: str, adapters: list[Adapter], weights: list[float], touched, replaced, read, device) -> None:
        self.direction, self.adapters, self.weights = direction, adapters, weights
        self.touched, self.replaced, self.read, self.device = touched, replaced, read, device
        self.values: dict[str, torch.Tensor] = {}
        self.changed: set[str] = set()
        self.applied: set[tuple[int, str]] = set()

    def _current(self, key: str) -> torch.Tensor:
        if key not in self.values:
            if key in self.replaced and self.direction == "merge":  # on unmerge the base's is gone: left as merged
                i, adapter_key = self.replaced[key]
                self.values[key] = self.adapters[i].tensors[adapter_key].to(device=self.device, dtype=torch.float32)
                self.changed.add(key)
            else:
                self.values[key] = self.read(key).to(device=self.device, dtype=torch.float32)
        return self.values[key]

    def take(self, key: str) -> torch.Tensor | None:
        """The new fp32 value of ``key`` (None: unchanged, copy the base's bytes)."""
        order = self.touched.get(key, [])
        for i, target in (reversed(order) if self.direction == "unmerge" else order):
            if (i, target.module) in self.applied:
                continue
            self.applied.add((i, target.module))
            roles = {role: self._current(ck) for role, ck in target.roles.items()}
            kind = self.adapters[i].kind
            fn = kind.merge_module if self.direction == "merge" else kind.unmerge_module
            new = fn(self.adapters[i], target.module, roles, weight=self.weights[i], device=self.device)
            for role, ck in target.roles.items():
                if role in new:
                    self.values[ck] = new[role]
                    self.changed.add(ck)
        if key in self.replaced:
            self._current(key)
        value = self.values.pop(key, None)
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
) -> MergeReport:
    """Merge ``adapters`` (each scaled by its weight, default 1) into the checkpoint ``base`` and
    write ``out``; with ``unmerge=True`` take them out instead (exact up to rounding for LoRA;
    IA3 and DoRA are lossy).

    Raises:
        AdapterkitError subclasses: an adapter that cannot be merged (prompt kinds), modules
        with no or mismatched base tensors (all listed at once), non-float base tensors,
        NaN/Inf in a merged tensor with ``safe`` (naming it), output rules as ``save``.
    """
    direction = "unmerge" if unmerge else "merge"
    device = resolve_device(device) or torch.device("cpu")
    ckpt = open_checkpoint(base)
    loaded = [_as_adapter(a) for a in adapters]
    weights = [1.0] * len(loaded) if weights is None else [float(w) for w in weights]
    if len(weights) != len(loaded):
        raise UnsupportedError("one weight per adapter", key="weights", expected=len(loaded), actual=len(weights))
    keys = {k: (ckpt.info(k).dtype, tuple(ckpt.info(k).shape)) for k in ckpt.keys()}
    touched, replaced = _touches(loaded, keys)
    out_dtype = None if dtype is None else (dtype if isinstance(dtype, str) else DTYPE_NAMES[dtype])
    if out_dtype is not None and out_dtype not in FLOAT_DTYPES:
        raise UnsupportedError("--dtype must be a floating-point dtype", key="dtype", expected=" | ".join(FLOAT_DTYPES), actual=out_dtype)
    plan = {k: (out_dtype if out_dtype and dt in FLOAT_DTYPES else dt, shape) for k, (dt, shape) in keys.items()}
    record = [
        {"adapter": str(a.source) if a.source else None, "kind": a.peft_type, "weight": w,
         "base_model": a.config.base_model_name_or_path}
        for a, w in zip(loaded, weights)
    ]
    metadata = {"format": "pt", MERGED_KEY if direction == "merge" else "adapterkit.unmerged": json.dumps(record, sort_keys=True)}
    report = MergeReport(Path(out), record)
    if unmerge:
        if replaced:
            report.lossy.append(f"{len(replaced)} tensors stored whole in the adapter (modules_to_save) stay as merged: the base's are gone")
        report.lossy += sorted({f"{a.peft_type} scaling divided back out (rounding)" for a in loaded if a.peft_type == "IA3"})
    state = _Tensors(direction, loaded, weights, touched, replaced, ckpt.read, device)
    with CheckpointWriter(Path(out), ckpt, plan=plan, max_shard_size=max_shard_size, metadata=metadata,
                          overwrite=overwrite, durable=durable) as writer:
        for key in progress(ckpt.keys(), desc=direction, total=len(keys)):
            value = state.take(key)
            report.tensors += 1
            if value is None and plan[key][0] == keys[key][0]:
                writer.write(key, ckpt.read_bytes(key))
                report.copied += 1
                continue
            if value is None:
                value = ckpt.read(key).to(device=device, dtype=torch.float32)
            else:
                report.changed += key in touched
                report.replaced += key in replaced
                report.changed_keys.append(key)
            if safe and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise TensorError(
                    f"the {direction}d tensor holds NaN or Inf; nothing was written (--no-safe writes it anyway)",
                    code="non-finite", path=ckpt.shard_of(key), key=key, expected="finite values",
                    actual=f"{int((~torch.isfinite(value)).sum())} non-finite of {value.numel()}",
                )
            writer.write(key, value.to(DTYPES[plan[key][0]]).cpu())
        report.out = writer.commit(_readme(ckpt, direction, record) if writer.form == "dir" else None)
    return report


def _readme(ckpt, direction: str, record: list[dict[str, Any]]) -> dict[str, bytes]:
    """The base's README.md (if any) with a section saying what was merged."""
    base_readme = ckpt.path / "README.md" if ckpt.path.is_dir() else None
    text = base_readme.read_text(encoding="utf-8") if base_readme is not None and base_readme.is_file() else ""
    lines = [f"## {'Merged' if direction == 'merge' else 'Unmerged'} with adapterkit", ""]
    for r in record:
        lines.append(f"- {r['kind']} adapter `{r['adapter']}`, weight {r['weight']:g}"
                     + (f" (trained on `{r['base_model']}`)" if r.get("base_model") else ""))
    lines += ["", f"Each shard's safetensors metadata records the same under `{MERGED_KEY if direction == 'merge' else 'adapterkit.unmerged'}`.", ""]
    section = "\n".join(lines)
    return {"README.md": ((text.rstrip("\n") + "\n\n" if text else "") + section).encode("utf-8")}
