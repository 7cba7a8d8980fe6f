"""Merging into (and out of) a quantized checkpoint, and merging as a QLoRA run trained.

``merge_checkpoint`` hands over here when the base's ``config.json`` names a quantization
(``adapterkit.quant``).  The merge then works on the logical checkpoint
(``QuantizedView.keys``: each quantized module as its dense ``.weight``), and the output is
either

- ``dense`` (``dtype`` given): every quantized weight dequantized (fp32), ΔW added, rounded
  once to ``dtype``; ``quantization_config`` is removed from ``config.json``; or
- ``requantized`` (no ``dtype``): the modules an adapter changes are quantized again in the
  base's own format (bitsandbytes and FP8 with fresh scales, GPTQ/AWQ onto the base's grid);
  every other tensor, packed or not, is copied byte for byte.

For a requantized output each changed module reports how much of ΔW the format kept:
``kept = ‖Q(W+ΔW) − Q(W)‖ / ‖ΔW‖`` (what the stored weight moved, against what the adapter
asked) and ``error = ‖Q(W+ΔW) − Q(W) − ΔW‖ / ‖ΔW‖`` (how far the move is from ΔW); where
``error`` reaches ``LOST`` the module is named in a warning: most of its ΔW was rounded away.

``as_trained`` (a dense base, the settings of the QLoRA run) rounds every linear weight through
bitsandbytes' 4-bit quantizer before ΔW is added, so that the merged model computes what the
4-bit base plus adapter computed in training (``as_trained_keys`` says which weights).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CheckpointWriter
from ..dtypes import DTYPES
from ..errors import ArgumentError, TensorError, UnsupportedError
from ..linalg.norms import all_finite, frobenius, nonfinite_count
from ..quant.base import Keys, Packed
from ..quant.bnb import BLOCKSIZES, Bnb4
from ..quant.view import QuantizedView
from .merge_plan import INPUT_EMBEDDINGS, OUTPUT_EMBEDDINGS
from .pipeline import Pipeline

LOST = 0.5  # error / ‖ΔW‖ from which a module's ΔW counts as mostly rounded away
CHUNK_ELEMENTS = 1 << 20  # elements in a block of rows written dense (a few MB)
DEPTH = 3  # blocks computed ahead of the writer
ROW_ALIGN = 96  # blocks start on the sgemm kernels' row tiles, so each block's B·A is those rows of the whole (ops.merging)
AS_TRAINED_TYPES = ("nf4", "fp4")
COMPUTE_DTYPES = ("BF16", "F16", "F32")


def row_blocks(rows: int, per: int, align: int = ROW_ALIGN) -> list[tuple[int, int]]:
    """(start, stop) of the blocks of ``per`` rows a tensor of ``rows`` rows is merged in, every
    start a multiple of ``per`` (itself of ``align``, the sgemm kernels' row tiles): each block's
    B·A is then those rows of the whole product, bit for bit, except after a last block shorter
    than ``align``, which the kernels compute by another path (MKL: 1-3, 5-7 or 9-11 rows); such
    a tail joins the block before it (at most per + align − 1 rows: ``most_rows``)."""
    starts = list(range(0, rows, per))
    if len(starts) > 1 and rows - starts[-1] < align:
        starts.pop()
    return [(start, starts[i + 1] if i + 1 < len(starts) else rows) for i, start in enumerate(starts)]


def most_rows(rows: int, per: int, align: int = ROW_ALIGN) -> int:
    """The tallest block of :func:`row_blocks` (what its buffers must hold)."""
    return max((stop - start for start, stop in row_blocks(rows, per, align)), default=0)


@dataclass
class ModuleSurvival:
    """How much of one module's ΔW a requantized output kept (Frobenius norms of fp32 values)."""

    module: str
    delta: float  # ‖ΔW‖ (what the adapters asked, dense fp32)
    moved: float  # ‖Q(W+ΔW) − Q(W)‖
    error: float  # ‖Q(W+ΔW) − Q(W) − ΔW‖

    @property
    def kept(self) -> float:
        return self.moved / self.delta if self.delta else 1.0

    @property
    def lost(self) -> float:
        return self.error / self.delta if self.delta else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "delta_norm": self.delta, "moved_norm": self.moved, "error_norm": self.error,
                "kept": self.kept, "error": self.lost}


def survival_summary(modules: list[ModuleSurvival]) -> dict[str, Any]:
    """Totals over modules (norms of the whole model's ΔW) and the modules over ``LOST``."""
    delta = math.sqrt(sum(m.delta ** 2 for m in modules))
    moved = math.sqrt(sum(m.moved ** 2 for m in modules))
    error = math.sqrt(sum(m.error ** 2 for m in modules))
    return {"kept": moved / delta if delta else 1.0, "error": error / delta if delta else 0.0,
            "lost_modules": [m.module for m in modules if m.lost >= LOST], "modules": [m.to_dict() for m in modules]}


# -- the output's plan ---------------------------------------------------------------------------

def output_plan(view: QuantizedView, keys: Keys, out_dtype: str | None, float_dtypes: tuple[str, ...], changed: set[str]):
    """(plan, placement, dropped) of the output: for a dense output the logical keys (quantized
    weights in ``out_dtype``, placed where their first member was); for a requantized one the
    stored keys, members in the base's order, in the sizes their format writes where the
    module is in ``changed`` (logical keys), as stored elsewhere (copied)."""
    plan: Keys = {}
    placement: dict[str, str] = {}
    dropped: list[str] = []
    for key, (dtype, shape) in keys.items():
        p = view.by_weight.get(key)
        if out_dtype is not None:
            plan[key] = (out_dtype if dtype in float_dtypes else dtype, shape)
            if p is not None:
                if key not in view.stored:
                    placement[key] = view.ordered[p.module][0]  # where its first member was
                dropped += [k for k in p.members.values() if k != key]
        elif p is None:
            plan[key] = (dtype, shape)
        else:
            sizes = view.fmt.planned(p, view.stored) if key in changed else view.stored
            plan.update((k, sizes[k]) for k in view.ordered[p.module])
    return plan, placement, dropped


def dense_config(config: dict[str, Any] | None, files: dict[str, bytes], notes: list[str]) -> None:
    """``config.json`` without ``quantization_config`` (the output is dense): transformers would
    otherwise try to load packed tensors that are no longer there."""
    if "config.json" in files:
        config = json.loads(files["config.json"])
    if not isinstance(config, dict) or "quantization_config" not in config:
        return
    config = {k: v for k, v in config.items() if k != "quantization_config"}
    files["config.json"] = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
    notes.append("config.json: quantization_config removed (the output is dense)")


# -- merging as trained (QLoRA) ------------------------------------------------------------------

@dataclass(frozen=True)
class AsTrained:
    """The bitsandbytes 4-bit settings a QLoRA run quantized its base with."""

    quant_type: str = "nf4"
    blocksize: int = 64
    double_quant: bool = True
    skip: tuple[str, ...] = ()  # module names (or suffixes) the run left unquantized (llm_int8_skip_modules)
    # bnb_4bit_compute_dtype: the QLoRA forward multiplies by the dequantized weight in this dtype,
    # so the weight the adapter was trained against is the dequantization rounded to it
    compute_dtype: str = "BF16"

    @classmethod
    def from_dict(cls, given: Any) -> AsTrained:
        """The settings from a mapping of their field names (an unknown name is refused by name)."""
        fields = set(cls.__dataclass_fields__)
        if not isinstance(given, dict) or set(given) - fields:
            unknown = sorted(set(given) - fields) if isinstance(given, dict) else type(given).__name__
            raise ArgumentError("as_trained takes an AsTrained or a dict of its fields", key="as_trained",
                                expected=" | ".join(sorted(fields)), actual=unknown)
        skip = given.get("skip", ())
        if not isinstance(skip, (str, list, tuple)):
            raise ArgumentError("as_trained skip names modules", key="skip", expected="a module name or a list of them",
                                actual=type(skip).__name__)
        return cls(**{**given, "skip": (skip,) if isinstance(skip, str) else tuple(skip)})

    def check(self) -> None:
        if not all(isinstance(s, str) for s in self.skip):
            raise ArgumentError("as_trained skip names modules", key="skip", expected="module names", actual=list(self.skip))
        if self.quant_type not in AS_TRAINED_TYPES:
            raise ArgumentError("as_trained rounds through bitsandbytes' 4-bit quantizer", key="as_trained",
                                expected=" | ".join(AS_TRAINED_TYPES), actual=self.quant_type)
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ArgumentError("a compute dtype bitsandbytes' 4-bit layers use", key="compute_dtype",
                                expected=" | ".join(COMPUTE_DTYPES), actual=self.compute_dtype)
        if type(self.blocksize) is not int or self.blocksize not in BLOCKSIZES:
            raise ArgumentError("a block size bitsandbytes does not use", key="blocksize", expected=BLOCKSIZES, actual=self.blocksize)

    def format(self) -> Bnb4:
        return Bnb4({"load_in_4bit": True, "bnb_4bit_quant_type": self.quant_type, "bnb_4bit_use_double_quant": self.double_quant})


def as_trained_keys(keys: Keys, settings: AsTrained, float_dtypes: tuple[str, ...]) -> list[str]:
    """The weights transformers quantizes when it loads the model in 4-bit: every 2-D float
    ``.weight`` (its ``nn.Linear`` and ``Conv1D`` layers), except the input and output embeddings
    (modules named as in ``merge_plan``'s embedding tables, or with ``embed`` in their name) and
    the modules ``settings.skip`` names."""
    chosen = []
    for key, (dtype, shape) in keys.items():
        if not key.endswith(".weight") or len(shape) != 2 or dtype not in float_dtypes:
            continue
        module = key[: -len(".weight")]
        last = module.rsplit(".", 1)[-1]
        if last in INPUT_EMBEDDINGS or last in OUTPUT_EMBEDDINGS or "embed" in last or "wpe" == last:
            continue
        if any(module == s or module.endswith("." + s) for s in settings.skip):
            continue
        chosen.append(key)
    return chosen


def round_as_trained(weight: torch.Tensor, settings: AsTrained, device: torch.device) -> torch.Tensor:
    """dequantize(quantize(weight)) with bitsandbytes' 4-bit quantizer, rounded to the compute
    dtype the QLoRA forward used it in (fp32 values)."""
    fmt = settings.format()
    out, inp = weight.shape
    table = _table(settings.quant_type)
    info: dict[str, Any] = {"blocksize": settings.blocksize, "dtype": "BF16", "nested_blocksize": 256, "offset": 0.0}
    packed = Packed("as-trained", "as-trained.weight", {}, (out, inp), info)
    old = {"quant_map": table, "nested_quant_map": _dynamic_map()}
    rounded = fmt.dequantize(packed, fmt.quantize(packed, weight, old, device), device)
    return rounded.to(DTYPES[settings.compute_dtype]).to(torch.float32)


def _table(quant_type: str) -> torch.Tensor:
    """bitsandbytes' 4-bit code table (``get_4bit_type``: the values in code order, divided by
    their largest magnitude in fp32)."""
    if quant_type == "nf4":
        values = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                  -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                  0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                  0.7229568362236023, 1.0]
    else:  # fp4: sign, 2 exponent bits, 1 mantissa bit
        values = [0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0]
    table = torch.tensor(values, dtype=torch.float32)
    return table / table.abs().max()


def _dynamic_map() -> torch.Tensor:
    """bitsandbytes' signed dynamic 8-bit map (``create_dynamic_map()``), which codes the nested
    absmax: for exponents 10^-6 .. 10^0, 2^i midpoints of an even split of [0.1, 1] (fp32), each
    with both signs, then 0 and 1, sorted."""
    data: list[float] = []
    for i in range(7):
        bounds = torch.linspace(0.1, 1, 2 ** i + 1, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += ((10 ** (-6 + i)) * means).tolist()
        data += (-(10 ** (-6 + i)) * means).tolist()
    data += [0.0, 1.0]
    return torch.tensor(sorted(data), dtype=torch.float32)


# -- the job -------------------------------------------------------------------------------------

class QuantJob:
    """One merge over a quantized view (or, ``as_trained``, a dense base rounded through the
    4-bit quantizer), tensor by tensor, written in the output plan's order.

    ``state`` is merge's ``_Tensors`` (the adapters' math, one module at a time), built on
    :meth:`read`; memory: the modules in flight, their members and dequantized weights."""

    def __init__(self, direction: str, ckpt, view: QuantizedView | None, keys: Keys, plan: Keys,
                 touched, replaced, device: torch.device, safe: bool, report, sources: dict[str, str],
                 dense: bool, as_trained: AsTrained | None = None, rounded: frozenset[str] = frozenset(),
                 adapters: list | None = None, weights: list[float] | None = None) -> None:
        self.direction, self.ckpt, self.view, self.keys, self.plan = direction, ckpt, view, keys, plan
        self.touched, self.replaced, self.device, self.safe, self.report = touched, replaced, device, safe, report
        self.sources, self.dense, self.as_trained, self.rounded = sources, dense, as_trained, rounded
        self.adapters, self.weights = adapters or [], weights or []
        self.bases: dict[str, torch.Tensor] = {}  # logical key -> the base's dequantized fp32 weight, until written
        self.members: dict[str, dict[str, torch.Tensor]] = {}  # logical key -> its stored members, until written
        self.survival: list[ModuleSurvival] = []

    def read(self, key: str) -> torch.Tensor:
        """The base's value of a logical key, as the merge math reads it (fp32 on the device
        for a quantized or rounded weight)."""
        source = self.sources.get(key, key)
        p = self.view.by_weight.get(source) if self.view is not None else None
        if p is not None:
            members = self.members.setdefault(key, self.view.read_members(p))
            value = self.view.fmt.dequantize(p, members, self.device)
        elif source in self.rounded:
            value = round_as_trained(self.ckpt.read(source).to(device=self.device, dtype=torch.float32), self.as_trained, self.device)
        else:
            return self.ckpt.read(source)
        if not self.dense:  # the survival report compares against it
            self.bases[key] = value
        return value

    def run(self, writer: CheckpointWriter, state, advance: Callable[[int, int], None]) -> None:
        report = self.report
        for key, (dtype, _) in self.keys.items():
            report.tensors += 1
            p = self.view.by_weight.get(key) if self.view is not None else None
            changes = key in self.touched or key in self.replaced
            if changes:
                report.changed += key in self.touched
                report.replaced += key in self.replaced
                report.changed_keys.append(key)
            if p is not None and not self.dense:
                if changes:
                    self._requantize(writer, state, key, p, advance)
                else:
                    for k in self.view.ordered[p.module]:
                        writer.copy_from(k, self.ckpt, k)
                        advance(self.ckpt.info(k).nbytes, 1)
                    report.copied += 1
                continue
            if p is not None and self.dense and key not in self.replaced and self._stream(writer, key, p, advance):
                continue
            if p is None and not changes and key not in self.rounded and dtype == self.plan[key][0]:
                source = self.sources.get(key, key)
                writer.copy_from(key, self.ckpt, source)
                advance(self.ckpt.info(source).nbytes, 1)
                report.copied += 1
                continue
            value = state.take(key)
            if value is None:
                value = self.read(key).to(device=self.device, dtype=torch.float32)
            self._check(key, value)
            data = value.to(DTYPES[self.plan[key][0]]).cpu()
            self.bases.pop(key, None)
            self.members.pop(key, None)
            writer.write(key, data)
            advance(data.nbytes, 1)

    def _fills(self, key: str) -> list | None:
        """Each adapter's row form of its ΔW on ``key`` (``row_merger``), in the order the merge
        adds them; None where one has none (DoRA's norm, IA3, a bias role): merged whole."""
        fills = []
        for i, target in (reversed(self.touched.get(key, [])) if self.direction == "unmerge" else self.touched.get(key, [])):
            adapter = self.adapters[i]
            fill = None
            if dict(target.roles) == {"weight": key}:
                fill = adapter.kind.row_merger(adapter, target.module, weight=self.weights[i],
                                               unmerge=self.direction == "unmerge", device=self.device)
            if fill is None:
                return None
            fills.append(fill)
        return fills

    def _spans(self, p: Packed) -> list[tuple[int, int]]:
        """Blocks of rows (a few MB each), starting where both the format's blocks and the
        sgemm kernels' row tiles do (so each block's B·A is those rows of the whole)."""
        out, inp = p.shape
        align = math.lcm(self.view.fmt.row_align(p), ROW_ALIGN)
        per = max(align, CHUNK_ELEMENTS // max(inp, 1) // align * align)
        return row_blocks(out, per, align)

    @staticmethod
    def _adder(fills: list) -> Callable[..., torch.Tensor]:
        """``add(start, stop, rows, out=None)``: ``rows`` with each adapter's rows of ΔW added in
        fp32 (merge's sum, rounded once when written), into ``out`` (default: ``rows`` itself)."""
        term = None

        def add(start: int, stop: int, rows: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
            nonlocal term
            out = rows if out is None else out
            if not fills:
                return out.copy_(rows) if out is not rows else out
            term = torch.empty_like(rows) if term is None or term.shape != rows.shape else term
            for i, fill in enumerate(fills):
                fill(start, stop, term)
                torch.add(rows if i == 0 else out, term, out=out)
            return out

        return add

    def _stream(self, writer: CheckpointWriter, key: str, p: Packed, advance) -> bool:
        """Write a quantized weight dense a block of rows at a time: memory of one block, not of
        the module.  False where an adapter on it has no row form (merged whole)."""
        fills = self._fills(key)
        if fills is None:
            return False
        fetch, add = self.view.fmt.rows(p, self.view.read_members(p), self.device), self._adder(fills)
        dtype = DTYPES[self.plan[key][0]]

        def chunks():
            for start, stop in self._spans(p):
                rows = add(start, stop, fetch(start, stop))
                if self.safe and not all_finite(rows):
                    self._check(key, rows)  # counts them, and refuses
                data = rows.to(dtype).cpu().contiguous()
                advance(data.nbytes, 0)
                yield memoryview(data.reshape(-1).view(torch.uint8).numpy())

        _write_behind(writer, key, chunks())
        advance(0, 1)
        return True

    def _requantize_rows(self, writer: CheckpointWriter, key: str, p: Packed, advance) -> bool:
        """Quantize a changed module again a block of rows at a time (the format's
        ``row_quantizer``), then measure what survived in a second pass over the same blocks
        (the merged rows computed again rather than kept: memory of a block and the packed
        module).  False where an adapter on it has no row form."""
        fills = self._fills(key)
        if fills is None:
            return False
        fmt = self.view.fmt
        old = self.view.read_members(p)
        spans = self._spans(p)
        base_rows, add = fmt.rows(p, old, self.device), self._adder(fills)
        sink = fmt.row_quantizer(p, old, self.device)
        bad = 0
        for start, stop in spans:
            rows = add(start, stop, base_rows(start, stop))
            if self.safe and (bad or not all_finite(rows)):
                bad += nonfinite_count(rows)
                if bad:
                    continue  # counting for the message; nothing is written
            sink.add(start, stop, rows)
        if bad:
            raise self._non_finite(key, bad, p.shape[0] * p.shape[1])
        new = sink.finish()
        new_rows = fmt.rows(p, {r: t.to(self.device) for r, t in new.items()}, self.device)
        squares = [0.0, 0.0, 0.0]  # ‖ΔW‖², ‖Q(W+ΔW) − Q(W)‖², ‖Q(W+ΔW) − (W+ΔW)‖²
        value = diff = None
        for start, stop in spans:
            base, written = base_rows(start, stop), new_rows(start, stop)
            if value is None or value.shape != base.shape:
                value, diff = torch.empty_like(base), torch.empty_like(base)
            add(start, stop, base, out=value)
            for i, (a, b) in enumerate(((value, base), (written, base), (written, value))):
                squares[i] += frobenius(torch.sub(a, b, out=diff)) ** 2
        self.survival.append(ModuleSurvival(p.module, *(math.sqrt(x) for x in squares)))
        self._write_members(writer, p, new, advance)
        return True

    def _requantize(self, writer: CheckpointWriter, state, key: str, p: Packed, advance) -> None:
        if key not in self.replaced and self._requantize_rows(writer, key, p, advance):
            return
        value = state.take(key)
        if value is None:  # a replacement whose state kept nothing: the base's own value
            value = self.read(key)
        self._check(key, value)
        old = self.members.pop(key, None)
        if old is None:
            old = self.view.read_members(p)
        base = self.bases.pop(key, None)
        if base is None:
            base = self.view.fmt.dequantize(p, old, self.device)
        new = self.view.fmt.quantize(p, value, old, self.device)
        written = self.view.fmt.dequantize(p, {r: t.to(self.device) for r, t in new.items()}, self.device)
        diff = torch.sub(value, base)  # ΔW; then, in the same buffer, what the weights moved and how far from ΔW
        delta = frobenius(diff)
        moved = frobenius(torch.sub(written, base, out=diff))
        error = frobenius(torch.sub(written, value, out=diff))  # Q(W+ΔW) − Q(W) − ΔW = Q(W+ΔW) − (W+ΔW)
        self.survival.append(ModuleSurvival(p.module, delta, moved, error))
        del written, diff, base
        self._write_members(writer, p, new, advance)

    def _write_members(self, writer: CheckpointWriter, p: Packed, new: dict[str, torch.Tensor], advance) -> None:
        role = {k: r for r, k in p.members.items()}
        for k in self.view.ordered[p.module]:
            tensor = new[role[k]].contiguous()
            writer.write(k, tensor)
            advance(tensor.nbytes, 1)

    def _check(self, key: str, value: torch.Tensor) -> None:
        bad = nonfinite_count(value) if self.safe else 0
        if bad:
            raise self._non_finite(key, bad, value.numel())

    def _non_finite(self, key: str, bad: int, numel: int) -> TensorError:
        return TensorError(f"the {self.direction}d tensor holds NaN or Inf; nothing was written (--no-safe writes it anyway)",
                           code="non-finite", path=self.ckpt.path, key=key, expected="finite values",
                           actual=f"{bad} non-finite of {numel}")


def _write_behind(writer: CheckpointWriter, key: str, blocks) -> None:
    """``writer.write_chunks(key, blocks)`` with the writing in a thread of its own, so that the
    next block is computed while the last one is written (at most ``DEPTH`` blocks wait).  An
    error on either side stops both and is raised here; the writer then has aborted (nothing
    half-written is kept)."""
    pipe = Pipeline()
    try:
        waiting = pipe.channel(DEPTH)
        pipe.spawn(f"write {key}", writer.write_chunks, key, iter(waiting.get, None))
        for block in blocks:
            waiting.put(block)  # raises the writer's error, if it met one
        waiting.put(None)
        pipe.join()
    finally:
        pipe.close()  # an error in the computation stops the writer, which aborts the output


def refuse_requantize(view: QuantizedView, where: Path) -> None:
    """A requantized output of a format that cannot be written without calibration."""
    if view.fmt.requantize is None:
        raise UnsupportedError(f"{view.fmt.name} weights cannot be quantized again without calibration: pass a dense dtype "
                               "(--dtype bf16|fp16|fp32)", code="quant-unsupported", path=where, key="dtype",
                               expected="bf16 | fp16 | fp32", actual=None)


def open_quantized(ckpt, config: dict[str, Any] | None) -> QuantizedView | None:
    """The dequantized view of ``ckpt`` when its config names a quantization (else None)."""
    from ..quant.scheme import quant_format

    fmt = quant_format(config, ckpt.path)
    return QuantizedView(ckpt, fmt, config) if fmt is not None else None


def lost_warning(quantized: dict[str, Any]) -> list[str]:
    """The warning (one note) naming the modules whose ΔW was mostly rounded away."""
    survival = quantized.get("survival")
    if not survival or not survival["lost_modules"]:
        return []
    names = survival["lost_modules"]
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return [f"WARNING: re-quantizing to {quantized['format']} rounded most of ΔW away in {len(names)} of "
            f"{len(survival['modules'])} changed modules (error ≥ {LOST:.0%} of ‖ΔW‖): {shown}; "
            f"in total {survival['kept']:.1%} of ‖ΔW‖ moved the weights, {survival['error']:.1%} error. "
            "A dense output (--dtype bf16) keeps all of it"]
