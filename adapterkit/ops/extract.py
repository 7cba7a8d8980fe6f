"""Extracting a LoRA adapter from a fine-tuned checkpoint: ``extract(base, finetuned)``.

Both checkpoints are streamed tensor by tensor (``open_checkpoint``: one positioned read per
tensor, no memory map), so the process holds a few tensors at a time.  They must have the
same keys, shapes and dtypes.

For every *target* (a 2-D floating ``<module>.weight`` whose module name matches ``targets``)
that changed, ΔW = finetuned.float() − base.float() is computed in fp32 on ``device`` and
decomposed: exactly (``dense_svd``) when min(m, n) ≤ 1024 or when the requested rank exceeds
a quarter of min(m, n); otherwise by ``randomized_svd`` (``rank`` + 10 oversampling, 4 power
iterations, a generator seeded from the module's name, so runs are deterministic).  Under
``energy`` the target Σσ² is known beforehand (‖ΔW‖²_F, summed in fp64), so a randomized
sketch of rank 32, 64, 128, ... grows until its singular values hold the asked fraction of it,
falling back to the exact SVD once the sketch would pass a quarter of min(m, n).  A randomized
B·A is the orthogonal projection of ΔW onto the kept left singular vectors, so its error is
√(‖ΔW‖² − Σ kept σ̂²) and the chosen rank is never smaller than the exact SVD's (σ̂ ≤ σ).
Each module's reported error is measured: ‖ΔW − B·A‖_F summed a block of rows at a
time.  The kept factors are
balanced, B = U·√S and A = √S·Vh, stored under PEFT's keys
``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight`` with scaling 1 (alpha = r;
ranks that differ as anchored ``rank_pattern``/``alpha_pattern``, see ``ops.lowrank``).  The
rank is capped at min(m, n).

Default targets: every 2-D floating ``.weight`` except embeddings and the output head
(module names whose last component contains ``embed`` or is ``lm_head``, ``wte``, ``wpe``,
``shared``).  ``targets`` (a regex, ``re.search`` on the module name) replaces that rule.

Bit-identical tensors are skipped (``unchanged``); tensors that are not targets are compared
16 MB at a time, so an unchanged embedding is never held whole.  Changed tensors that are not targets
(norms, biases, embeddings, ...) are stored whole with ``save_changed`` under the keys PEFT
loads (``ops.extract_layout``): a module with a changed weight as ``modules_to_save``, with all
its tensors; the bias of a LoRA module as ``<module>.base_layer.bias`` and other biases as
``<module>.bias`` under ``bias="all"`` — else they are listed in ``not_extracted`` with their
size in bytes.  ``target_modules`` selects exactly the extracted modules when PEFT reads it.

Tied embeddings.  A checkpoint whose ``config.json`` says ``tie_word_embeddings: true`` has
an output embedding (``lm_head.weight``, usually not stored) that *is* its input embedding;
extract compares it as such.  A fine-tune that kept the tie and changed the embedding stores
both as equal ``modules_to_save`` copies (PEFT then computes the fine-tune; ``merge`` keeps
the tie); one that untied them stores whichever changed (``merge`` unties them as the
fine-tune did).  Where no config.json says whether an input embedding without an output
embedding is tied, storing it whole is refused (``tied-embeddings``) rather than guessed.
An embedding tied to another cannot be a LoRA target (PEFT would change only one of them),
nor can any module named like an embedding (``embed``, ``wte``, ``wpe``, ``shared``): PEFT's
LoRA layout differs between ``nn.Embedding`` and ``nn.Linear``, which a checkpoint does not tell.

Output dtype: the factors are stored in the base tensor's own float dtype (a bf16 model gives
a bf16 adapter, as PEFT would train it); whole tensors are stored as the fine-tuned ones are.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..adapter import Adapter
from ..checkpoint.reader import Checkpoint, open_checkpoint
from ..devices import resolve_device
from ..dtypes import DTYPES
from ..errors import ArgumentError, TensorError, UnsupportedError
from ..io.outputs import checkpoint_inputs
from ..io.recipe import step
from ..kinds.lora import PREFIX, LoraConfig
from ..linalg import dense_svd, randomized_svd, select_rank
from ..linalg.norms import nonfinite_count
from ..progress import progress
from ..quant.view import QuantizedView
from ..threads import intra_op, matmul_work, svd_work
from .extract_layout import peft_layout
from .lowrank import scaling_one_config
from .merge_plan import TiedEmbeddings, find_tied_embeddings
from .merge_quantized import open_quantized
from .merging import Locate, _read_config, local

FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
DENSE_LIMIT = 1024
SKETCH_START = 32
_BLOCK = 16 << 20
_EXCLUDED_LAST = re.compile(r"embed|^(lm_head|wte|wpe|shared)$")
_EMBEDDING_LIKE = re.compile(r"embed|^(wte|wpe|shared)$")  # nn.Embedding or not: a checkpoint does not say


@dataclass(frozen=True)
class ModuleExtract:
    """One extracted module: its rank, Σσ² of ΔW (``energy``), the kept part, and
    ``error`` = ‖ΔW − B·A‖_F / ‖ΔW‖_F (before the storage dtype's rounding); ``method`` is
    ``dense`` or ``randomized``."""

    name: str
    shape: tuple[int, int]
    rank: int
    energy: float
    kept: float
    method: str

    @property
    def energy_kept(self) -> float:
        return 1.0 if self.energy == 0 else min(self.kept / self.energy, 1.0)

    @property
    def error(self) -> float:
        return 0.0 if self.energy == 0 else max(self.energy - self.kept, 0.0) ** 0.5 / self.energy**0.5


@dataclass(frozen=True)
class ExtractReport:
    """Per-module records, and the tensors left out: ``unchanged`` (bit-identical keys),
    ``not_extracted`` (changed, not targets, not saved: key -> bytes), ``saved_whole``
    (tensors stored whole under ``save_changed``: the changed ones, and the other tensors of
    the modules stored whole); ``notes``: what else a user must
    know (tied embeddings, modules stored whole instead of extracted)."""

    modules: tuple[ModuleExtract, ...]
    rule: str
    unchanged: tuple[str, ...] = ()
    not_extracted: dict[str, int] = field(default_factory=dict)
    saved_whole: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def energy(self) -> float:
        return sum(m.energy for m in self.modules)

    @property
    def energy_kept(self) -> float:
        total = self.energy
        return 1.0 if total == 0 else sum(m.kept for m in self.modules) / total

    @property
    def error(self) -> float:
        """sqrt(Σ dropped σ² / Σ σ²) over all modules: the relative Frobenius error of the whole."""
        total = self.energy
        return 0.0 if total == 0 else max(total - sum(m.kept for m in self.modules), 0.0) ** 0.5 / total**0.5

    @property
    def params(self) -> int:
        return sum(m.rank * (m.shape[0] + m.shape[1]) for m in self.modules)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule, "params": self.params, "energy_kept": self.energy_kept, "relative_error": self.error,
            "modules": [{"name": m.name, "shape": list(m.shape), "rank": m.rank, "energy_kept": m.energy_kept,
                         "relative_error": m.error, "method": m.method} for m in self.modules],
            "unchanged": list(self.unchanged), "not_extracted": dict(self.not_extracted), "saved_whole": list(self.saved_whole),
            "notes": list(self.notes),
        }


def _rule(rank: int | None, energy: float | None, base: Path) -> str:
    given = {k: v for k, v in (("rank", rank), ("energy", energy)) if v is not None}
    if len(given) != 1:
        raise ArgumentError("give exactly one of rank, energy", path=base, key="rank/energy", expected="exactly one", actual=given or None)
    try:
        select_rank(torch.ones(1), rank=rank, energy=energy)
    except ValueError as exc:
        (key, value), = given.items()
        raise ArgumentError(str(exc).split(", got")[0], path=base, key=key,
                            expected="a positive integer" if key == "rank" else "0 < energy <= 1", actual=value) from None
    (key, value), = given.items()
    return f"{key}={value}"


@dataclass(frozen=True)
class _Dense:
    """What extract reads off a quantized weight's entry: the dense tensor it stands for."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def nbytes(self) -> int:
        return 0  # never compared byte for byte (see _same)


@dataclass(frozen=True)
class _Side:
    """One checkpoint as the model sees it: ``src`` maps every key the model has to the stored
    key holding its value (a tied output embedding -> its input embedding).  A quantized
    checkpoint is seen through its dequantized view (``view``: its weights as fp32)."""

    ck: Checkpoint
    tie: TiedEmbeddings | None
    src: dict[str, str]
    view: QuantizedView | None = None

    def quantized(self, key: str) -> bool:
        return self.view is not None and self.view.is_quantized(self.src[key])

    def info(self, key: str):
        if self.quantized(key):
            return _Dense(*self.view.info(self.src[key]))
        return self.ck.info(self.src[key])

    def read(self, key: str, device: torch.device | None = None) -> torch.Tensor:
        """The tensor (a quantized weight dequantized to fp32, on ``device``)."""
        return self.view.read(self.src[key], device) if self.quantized(key) else self.ck.read(self.src[key])


def _side(ck: Checkpoint) -> _Side:
    config = _read_config(ck)
    view = open_quantized(ck, config)
    keys = view.keys() if view is not None else {k: (ck.info(k).dtype, tuple(ck.info(k).shape)) for k in ck.keys()}
    tie = find_tied_embeddings(keys, config)
    src: dict[str, str] = {}
    for key in keys:
        src[key] = key
        if tie is not None and tie.known and key == tie.input_key:
            src[tie.output_key] = key  # transformers puts the input embedding there, stored or not
    return _Side(ck, tie, src, view)


def _unknown_tie(side: _Side, role: str) -> str:
    tie = side.tie
    if tie is None or tie.known:
        return ""
    return (f" (no config.json of the {role} says whether its `{tie.output_key}` is tied to `{tie.input_key}`"
            " (tie_word_embeddings): put the model's config.json beside it)")


def _check_pair(base: _Side, ft: _Side) -> None:
    bk, fk = set(base.src), set(ft.src)
    unknown = {s.tie.output_key: (s, role) for s, role in ((base, "base"), (ft, "fine-tuned")) if s.tie is not None and not s.tie.known}
    if bk != fk and bk ^ fk <= unknown.keys():  # the other says tied (or stores it): this one's tie decides
        side, role = unknown[next(iter(bk ^ fk))]
        raise UnsupportedError(f"the checkpoints differ by `{side.tie.output_key}`" + _unknown_tie(side, role),
                               code="tied-embeddings", path=side.ck.path, key="tie_word_embeddings", expected="config.json", actual="unknown")
    if bk != fk:
        only_b, only_f = sorted(bk - fk), sorted(fk - bk)
        parts = []
        if only_b:
            parts.append(f"only in the base: {', '.join(only_b[:20])}{' ...' if len(only_b) > 20 else ''}")
        if only_f:
            parts.append(f"only in the fine-tuned: {', '.join(only_f[:20])}{' ...' if len(only_f) > 20 else ''}")
        raise TensorError("the checkpoints have different tensors; " + "; ".join(parts) + _unknown_tie(base, "base")
                          + _unknown_tie(ft, "fine-tuned"), code="base-mismatch", path=ft.ck.path,
                          expected=f"{len(bk)} keys of the base", actual=f"{len(only_b)} missing, {len(only_f)} extra")
    for key in base.src:
        b, f = base.info(key), ft.info(key)
        if tuple(b.shape) != tuple(f.shape):
            raise TensorError("shapes differ between the checkpoints", code="base-shape-mismatch", path=ft.ck.path, key=key,
                              expected=tuple(b.shape), actual=tuple(f.shape))
        if b.dtype != f.dtype and not (base.quantized(key) or ft.quantized(key)):  # a packed weight's dtype is its own
            raise TensorError("dtypes differ between the checkpoints", code="base-mismatch", path=ft.ck.path, key=key,
                              expected=b.dtype, actual=f.dtype)


def _same(base: _Side, ft: _Side, key: str, nbytes: int) -> bool:
    """Whether ``key`` holds the same bytes in both, read a block of at most 16 MB at a time (a
    quantized weight on either side: the same values, see :func:`_same_values`)."""
    if base.quantized(key) or ft.quantized(key):
        return _same_values(base, ft, key)
    size = min(_BLOCK, nbytes)
    a, b = bytearray(size), bytearray(size)
    ta, tb = torch.frombuffer(a, dtype=torch.uint8) if size else None, torch.frombuffer(b, dtype=torch.uint8) if size else None
    for start in range(0, nbytes, _BLOCK):
        n = min(_BLOCK, nbytes - start)
        base.ck.read_into(base.src[key], memoryview(a)[:n], start)
        ft.ck.read_into(ft.src[key], memoryview(b)[:n], start)
        if not torch.equal(ta[:n], tb[:n]):  # type: ignore[index]
            return False
    return True


def _same_values(base: _Side, ft: _Side, key: str) -> bool:
    """Whether a weight is unchanged where either side is quantized: equal dequantized values,
    or a dense side equal to the other's dequantized weight rounded to its dtype (a module a
    dense fine-tune of a quantized base kept as it was)."""
    return _equal_values(base, ft, key, base.read(key), ft.read(key))


def _equal_values(base: _Side, ft: _Side, key: str, b: torch.Tensor, f: torch.Tensor) -> bool:
    """:func:`_same_values` on tensors already read."""
    if base.quantized(key) and not ft.quantized(key):
        return torch.equal(b.to(f.dtype), f)
    if ft.quantized(key) and not base.quantized(key):
        return torch.equal(f.to(b.dtype), b)
    return torch.equal(b, f)


def _tied_keys(*sides: _Side) -> set[str]:
    """The keys of embeddings tied to each other (known ties) in either checkpoint."""
    return {k for s in sides if s.tie is not None and s.tie.known for k in (s.tie.input_key, s.tie.output_key)}


def _tie_notes(base: _Side, ft: _Side, saved: set[str]) -> list[str]:
    """What the extract means for tied embeddings it stores whole."""
    bt, ftie = (s.tie if s.tie is not None and s.tie.known else None for s in (base, ft))
    tie = bt or ftie
    if tie is None or not ({tie.input_key, tie.output_key} & saved):
        return []
    pair = f"`{tie.output_key}` and `{tie.input_key}`"
    if bt and ftie:
        return [f"the fine-tune keeps {pair} tied: both are stored as equal modules_to_save copies, which PEFT loads and "
                "`adapterkit merge` writes back as one tied matrix"]
    if bt:
        return [f"the fine-tune unties {pair}, which the base ties: PEFT computes it with the stored copies, and "
                "`adapterkit merge` unties them (tie_word_embeddings false), as the fine-tune does"]
    return [f"the fine-tune ties {pair}, which the base keeps apart: both are stored as equal copies; `adapterkit merge` "
            "writes them as two equal tensors (the base's config, untied)"]


def default_target(module: str) -> bool:
    """The default rule: not an embedding or the output head (see the module doc)."""
    return _EXCLUDED_LAST.search(module.rsplit(".", 1)[-1]) is None


def _square_sum(block: torch.Tensor) -> float:
    """Σ block² of a block of rows: each row summed in fp32 (one row's rounding), the rows in fp64;
    4x faster than squaring an fp64 copy and within 1e-9 of it."""
    return float(block.square().sum(dim=1).double().sum())


def _energy_slack(delta: torch.Tensor, small: int) -> float:
    """The relative shortfall of Σσ² (top k) against ‖ΔW‖²_F that is rounding, not lost energy:
    a backward-stable SVD moves each σ by about ε·σ₁ (ε of the compute dtype), so an exact
    rank-k change keeps 1 − O(√min(m, n)·ε) of its energy in its k values (measured: up to
    7ε on fp32 2048²).  Without it ``energy=1.0`` on an exact rank-4 fp32 change picked rank 16."""
    eps = torch.finfo(torch.float64 if delta.dtype == torch.float64 else torch.float32).eps
    return 8 * small**0.5 * eps


def _work(m: int, n: int, rank: int | None) -> float:
    """The largest kernel of one module's extraction, for the thread policy: the exact SVD up to
    :data:`DENSE_LIMIT`, else the randomized sketch's products (rank + 10 columns, 10 passes)."""
    if min(m, n) <= DENSE_LIMIT:
        return svd_work(m, n)
    return 10 * matmul_work(m, n, (rank if rank is not None else SKETCH_START) + 10)


def _decompose(delta: torch.Tensor, name: str, rank: int | None, energy: float | None) -> tuple[torch.Tensor, torch.Tensor, ModuleExtract]:
    m, n = delta.shape
    small = min(m, n)
    total = sum(_square_sum(delta[i:i + 256]) for i in range(0, m, 256))
    slack = _energy_slack(delta, small)
    svd, method = None, "dense"
    if small > DENSE_LIMIT:
        sketch = rank if rank is not None else SKETCH_START
        while sketch * 4 <= small:
            gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            found = randomized_svd(delta, sketch, generator=gen)
            if rank is not None or float(found.S.double().square().sum()) >= energy * total * (1 - slack):  # type: ignore[operator]
                svd, method = found, "randomized"
                break
            sketch *= 2
    if svd is None:
        svd = dense_svd(delta)
    if rank is not None:
        k = min(rank, small)
    else:  # the smallest k whose kept Σσ² reaches the fraction of the whole ‖ΔW‖² (not of the sketch's)
        cum = svd.S.double().square().cumsum(0)
        reached = (cum >= energy * total * (1 - slack)).nonzero()  # type: ignore[operator]
        k = max(1, int(reached[0]) + 1 if len(reached) else svd.rank)
    B, A = svd.factors(k, balanced=True)
    # the residual measured, a block of rows at a time (Σ kept σ² in fp32 would put a √ε₃₂ ≈ 3e-4 floor under the error)
    residual = sum(_square_sum(torch.addmm(delta[i:i + 256], B[i:i + 256], A, alpha=-1)) for i in range(0, m, 256))
    return B, A, ModuleExtract(name, (m, n), k, total, max(total - residual, 0.0), method)


def extract(base: str | Path, finetuned: str | Path, *, rank: int | None = None, energy: float | None = None,
            targets: str | None = None, save_changed: bool = False, device: Any = "cpu",
            locate: Locate = local) -> tuple[Adapter, ExtractReport]:
    """A LoRA adapter approximating ``finetuned − base`` (see the module doc).

    Args:
        base, finetuned: model checkpoints (a safetensors file, a folder, or its index).
        rank: this rank for every extracted module (capped at min(out, in)).
        energy: in (0, 1]: per module, the smallest rank keeping that fraction of ‖ΔW‖²_F.
        targets: regex (``re.search``) on module names; default: all but embeddings and lm_head.
        save_changed: store changed non-target tensors whole (``modules_to_save`` / ``bias="all"``).
        device: where the fp32 math runs.
        locate: turns ``base`` and ``finetuned`` into local paths (``ops.merging.Locate``); the
            recipe and the config's ``base_model_name_or_path`` keep them as named.

    Returns:
        (the adapter, an :class:`ExtractReport`).

    Raises:
        ArgumentError: ``argument-invalid``: not exactly one of rank/energy, a value out of range,
            a bad regex.
        NotFoundError: ``not-a-checkpoint``.
        TensorError: ``base-mismatch`` (different keys or dtypes), ``base-shape-mismatch``,
            ``non-finite`` (a targeted weight whose difference holds NaN or Inf).
    """
    recorded = step("extract", base=str(base), finetuned=str(finetuned), rank=rank, energy=energy, targets=targets,
                    save_changed=save_changed)
    base, finetuned = Path(base), Path(finetuned)
    rule = _rule(rank, energy, base)
    try:
        pattern = None if targets is None else re.compile(targets)
    except re.error as exc:
        raise ArgumentError(f"targets is not a valid regex: {exc}", path=base, key="targets", actual=targets) from None
    dev = resolve_device(device)
    bside, fside = _side(open_checkpoint(locate(base, "checkpoint"))), _side(open_checkpoint(locate(finetuned, "checkpoint")))
    _check_pair(bside, fside)
    tied = _tied_keys(bside, fside)
    tensors: dict[str, torch.Tensor] = {}
    records: list[ModuleExtract] = []
    unchanged: list[str] = []
    not_extracted: dict[str, int] = {}
    whole: list[str] = []
    keys = list(bside.src)
    for key in progress(keys, desc="extract", total=len(keys)):
        info = bside.info(key)
        module = key.removesuffix(".weight")
        is_target = (len(info.shape) == 2 and key.endswith(".weight") and info.dtype in FLOAT_DTYPES
                     and (default_target(module) and key not in tied if pattern is None else pattern.search(module) is not None))
        if is_target and key in tied:
            raise UnsupportedError(
                f"`{module}` is tied to the other embedding: a LoRA on it would leave the other unchanged in PEFT; "
                "leave it out of --targets (--save-changed stores a changed embedding whole, tie included)",
                code="not-supported", path=base, key="targets", expected="no tied embedding", actual=module)
        if not is_target:  # compared a block at a time: an unchanged embedding is never held whole
            if _same(bside, fside, key, info.nbytes):
                unchanged.append(key)
            elif save_changed:
                whole.append(key)
            else:
                not_extracted[key] = info.nbytes
            continue
        if bside.quantized(key) or fside.quantized(key):
            b, f = bside.read(key, dev), fside.read(key, dev)  # dequantized once, on the device the math runs on
            if _equal_values(bside, fside, key, b, f):
                unchanged.append(key)
                continue
        else:
            b, f = bside.ck.read(bside.src[key]), fside.ck.read(fside.src[key])
            if torch.equal(b.reshape(-1).view(torch.uint8), f.reshape(-1).view(torch.uint8)):  # bitwise: NaNs, -0.0
                unchanged.append(key)
                continue
        if _EMBEDDING_LIKE.search(module.rsplit(".", 1)[-1]):
            raise UnsupportedError(
                f"`{module}` looks like an embedding: PEFT keeps a LoRA on an nn.Embedding as lora_embedding_A/B "
                "(transposed) and on an nn.Linear as lora_A/B, and a checkpoint does not say which it is; leave it out of "
                "--targets (--save-changed stores it whole)", code="not-supported", path=base, key="targets",
                expected="no embedding among the targets", actual=module)
        with intra_op(_work(*info.shape, rank)):
            delta = f.to(device=dev, dtype=torch.float32)
            delta.sub_(b.to(device=dev))  # bf16/fp16 base cast on the fly: no fp32 copy of it
            del b, f
            if bad := nonfinite_count(delta):
                raise TensorError("the difference holds NaN or Inf (a non-finite value in either checkpoint); it has no SVD",
                                  code="non-finite", path=fside.ck.shard_of(fside.src[key]), key=key, expected="finite values",
                                  actual=f"{bad} non-finite of {delta.numel()}")
            B, A, record = _decompose(delta, module, rank, energy)
            del delta
        dtype = fside.info(key).torch_dtype  # the fine-tuned model's (a quantized base's dtype is its dense one)
        tensors[f"{PREFIX}{module}.lora_A.weight"] = A.to(device="cpu", dtype=dtype).contiguous()
        tensors[f"{PREFIX}{module}.lora_B.weight"] = B.to(device="cpu", dtype=dtype).contiguous()
        records.append(record)
    for side, role in ((bside, "base"), (fside, "fine-tuned")):
        if side.tie is not None and not side.tie.known and side.tie.input_key in whole:
            raise UnsupportedError(
                f"`{side.tie.input_key}` changed and is to be stored whole, but no config.json of the {role} says whether "
                f"`{side.tie.output_key}` is tied to it (tie_word_embeddings), and PEFT and merge compute different models "
                "for a tied and an untied one: put the model's config.json beside the checkpoint",
                code="tied-embeddings", path=side.ck.path, key="tie_word_embeddings", expected="config.json", actual="unknown")
    layout = peft_layout(keys, [r.name for r in records], whole)
    for r in layout.dropped:
        del tensors[f"{PREFIX}{r}.lora_A.weight"], tensors[f"{PREFIX}{r}.lora_B.weight"]
    records = [r for r in records if r.name not in layout.dropped]
    for akey, key in layout.whole.items():  # a quantized one stored dense, in the dtype it stands for
        tensors[akey] = fside.read(key).to(fside.info(key).torch_dtype) if fside.quantized(key) else fside.ck.read(fside.src[key])
    saved = sorted(set(layout.whole.values()))
    notes = _tie_notes(bside, fside, set(saved))
    if layout.dropped:
        notes.append(f"stored whole instead of extracted (PEFT adapts no module inside a modules_to_save module): {', '.join(layout.dropped)}")
    if not records and layout.whole:
        notes.append("no LoRA factors left (no module has any): PEFT refuses to load such an adapter (no module targeted); "
                     "`adapterkit merge` applies it")
    template = LoraConfig(target_modules=layout.target_modules, base_model_name_or_path=str(base),
                          modules_to_save=layout.modules_to_save, bias=layout.bias)
    cfg = scaling_one_config(template, {r.name: r.rank for r in records}, lora_bias=False)
    report = ExtractReport(tuple(sorted(records, key=lambda r: r.name)), rule, tuple(unchanged), not_extracted, tuple(saved), tuple(notes))
    inputs = (*checkpoint_inputs(bside.ck, "base checkpoint"), *checkpoint_inputs(fside.ck, "fine-tuned checkpoint"))  # save never writes over them
    return replace(Adapter.from_tensors(cfg, tensors), recipe=(recorded,), inputs=tuple((r, str(p)) for r, p in inputs)), report
