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
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..adapter import Adapter
from ..checkpoint import CheckpointWriter, open_checkpoint
from ..checkpoint.layout import nbytes
from ..devices import resolve_device
from ..errors import TensorError, UnsupportedError
from ..io.reader import load
from ..io.safetensors_file import DTYPE_NAMES, DTYPES
from ..progress import progress_bytes
from .merge_plan import plan_merge
from .pipeline import Pipeline

FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
ROW_DTYPES = ("F16", "BF16", "F32")  # stored dtypes merged a block of rows at a time (fp32 math)
MERGED_KEY = "adapterkit.merged"
CHUNK_ELEMENTS = 1 << 20  # elements in a block of rows: a few MB, which stay in the CPU's cache
# Blocks are a multiple of this many rows, so that they start on the row tiles of the sgemm
# kernels (MKL, OpenBLAS: 1, 2, 3, 4, 6, 8, 12, 16, 24, 32 or 48 rows): each block's B·A is then
# bit for bit those rows of the whole product that PEFT computes (blocks of other heights can
# differ in the last bit; tests/test_merge_stream.py checks this on the kernels at hand).
ROW_ALIGN = 96
DEPTH = 3  # blocks read ahead of the computation, and blocks waiting for the writer


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
    started = time.perf_counter()
    direction = "unmerge" if unmerge else "merge"
    device = resolve_device(device) or torch.device("cpu")
    ckpt = open_checkpoint(base)
    loaded = [_as_adapter(a) for a in adapters]
    weights = [1.0] * len(loaded) if weights is None else [float(w) for w in weights]
    if len(weights) != len(loaded):
        raise UnsupportedError("one weight per adapter", key="weights", expected=len(loaded), actual=len(weights))
    keys = {k: (ckpt.info(k).dtype, tuple(ckpt.info(k).shape)) for k in ckpt.keys()}
    touched, replaced = _touches(loaded, keys)
    out_dtype = None if dtype is None else (dtype if isinstance(dtype, str) else DTYPE_NAMES.get(dtype, str(dtype)))
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
    job = _Job(direction, ckpt, loaded, weights, touched, replaced, keys, plan, device, safe, report)
    report.bytes = sum(nbytes(*v) for v in plan.values())
    with CheckpointWriter(Path(out), ckpt, plan=plan, max_shard_size=max_shard_size, metadata=metadata,
                          overwrite=overwrite, durable=durable) as writer:
        with progress_bytes(report.bytes, desc=direction, items=len(keys)) as advance:
            job.run(writer, advance)
        report.out = writer.commit(_readme(ckpt, direction, record) if writer.form == "dir" else None)
    report.seconds = time.perf_counter() - started
    return report


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

    def blocks(self) -> Iterator[tuple[int, int]]:
        for start in range(0, self.rows, self.per):
            yield start, min(self.rows, start + self.per)


@contextmanager
def _threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for the block (a core each stays free for the reader
    and the writer: on a small machine spinning compute threads would slow the I/O down)."""
    before = torch.get_num_threads()
    if n < before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


class _Block:
    """A reusable buffer for one block of rows."""

    def __init__(self, nbytes: int) -> None:
        self.data = torch.empty(nbytes, dtype=torch.uint8)
        self.view = memoryview(self.data.numpy())

    def tensor(self, dtype: torch.dtype, rows: int, cols: int) -> torch.Tensor:
        return self.data[: rows * cols * dtype.itemsize].view(dtype).view(rows, cols)


class _Job:
    """One streamed merge: the main thread computes, a reader thread reads the blocks of rows
    ahead, a writer thread writes behind (copies of untouched tensors included, kernel to
    kernel); at most ``DEPTH`` blocks wait on each side, so memory stays a few blocks plus, for
    tensors that cannot be streamed by rows, the tensor being merged."""

    def __init__(self, direction: str, ckpt, adapters: list[Adapter], weights: list[float], touched, replaced,
                 keys: dict[str, tuple[str, tuple[int, ...]]], plan, device: torch.device, safe: bool, report: MergeReport) -> None:
        self.direction, self.ckpt, self.adapters, self.weights = direction, ckpt, adapters, weights
        self.touched, self.replaced, self.keys, self.plan = touched, replaced, keys, plan
        self.device, self.safe, self.report = device, safe, report
        self.rows = {k: r for k in keys if (r := self._rows(k)) is not None}

    def _rows(self, key: str) -> _Rows | None:
        """How ``key`` streams by rows, or None: it is copied as bytes, or merged whole."""
        src, shape = self.keys[key]
        dst = self.plan[key][0]
        if key not in self.touched and key not in self.replaced and src == dst:
            return None  # copied as bytes
        if self.device.type != "cpu" or src not in ROW_DTYPES or dst not in ROW_DTYPES or key in self.replaced:
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
                size = max(r.per * r.cols for r in self.rows.values())
                self.free_in, self.ready, self.free_out = pipe.channel(DEPTH), pipe.channel(DEPTH), pipe.channel(DEPTH)
                for _ in range(DEPTH):
                    self.free_in.put(_Block(size * max(r.src.itemsize for r in self.rows.values())))
                    self.free_out.put(_Block(size * max(r.dst.itemsize for r in self.rows.values())))
                self.acc, self.term = _Block(size * 4), _Block(size * 4)
                pipe.spawn("reader", self._read_ahead, list(self.rows.items()))
            pipe.spawn("writer", self._write_behind)
            with _threads(max(1, len(os.sched_getaffinity(0)) - 2) if hasattr(os, "sched_getaffinity") else torch.get_num_threads()):
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
                self.ckpt.read_into(key, block.view[:n], start * r.cols * r.src.itemsize)
                self.ready.put(block)

    def _write_behind(self) -> None:
        while (job := self.jobs.get()) is not None:
            how, key, data = job
            if how == "copy":
                self.writer.copy_from(key, self.ckpt)
                self.advance(self.ckpt.info(key).nbytes, 1)
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
        state = _Tensors(self.direction, self.adapters, self.weights, self.touched, self.replaced, self.ckpt.read, self.device)
        report = self.report
        for key in self.ckpt.keys():
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
                value = self.ckpt.read(key).to(device=self.device, dtype=torch.float32)
            if self.safe and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise self._non_finite(key, int((~torch.isfinite(value)).sum()), value.numel())
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

    def _non_finite(self, key: str, bad: int, numel: int) -> TensorError:
        return TensorError(
            f"the {self.direction}d tensor holds NaN or Inf; nothing was written (--no-safe writes it anyway)",
            code="non-finite", path=self.ckpt.shard_of(key), key=key, expected="finite values",
            actual=f"{bad} non-finite of {numel}",
        )


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
