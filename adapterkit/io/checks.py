"""Every MUST of the spec that a reader enforces, as checks that return :class:`Problem` records.

``structural_problems`` needs only headers and config (every reader runs it);
``value_problems`` reads tensor data (NaN/Inf): torch tensors with torch, the numpy arrays of the
torch-free path (``adapterkit.io.array_store``) from their raw bits (``adapterkit.arrays``).  ``raise_first_error`` turns the first error
into its exception.  ``adapterkit.validation.validate`` runs them all, the content digest
(§5.5) included, and reports every problem at once instead of stopping at the first.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..arrays import nonfinite_count
from ..errors import Problem

if TYPE_CHECKING:  # torch is imported where tensors are read, so that importing this module stays cheap
    import torch

    from ..adapter import Adapter

ALLOWED_DTYPES = ("F64", "F32", "F16", "BF16")
_FIRST = operator.itemgetter(0)


def structural_problems(adapter: Adapter) -> list[Problem]:
    """Dtype rules plus the kind's structural rules; no tensor data is read."""
    problems = []
    meta = adapter.tensors.meta
    for key in adapter.tensors:
        dtype = meta(key).dtype
        if dtype not in ALLOWED_DTYPES and adapter.kind.parse_key(key) is not None:  # adapter tensors only (§6)
            problems.append(Problem("dtype-unsupported", "adapter tensors must be floating point", key=key, expected=" | ".join(ALLOWED_DTYPES), actual=dtype))
    from ..kinds.features import problems as feature_problems  # here: importing this module stays torch-free

    problems += adapter.kind.check(adapter)
    problems += feature_problems(adapter)
    src = str(adapter.source) if adapter.source else None
    return [p if p.path else Problem(p.code, p.message, p.severity, src, p.key, p.expected, p.actual) for p in problems]


def _all_finite(t: torch.Tensor) -> bool:
    """NaN and Inf both survive abs().amax(), which is ~5x faster than isfinite().all() on CPU half."""
    import torch

    return t.numel() == 0 or bool(torch.isfinite(t.abs().amax()))


def _spans(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """1-D views that together cover exactly the elements of the floating-point ``tensors``:
    contiguous tensors of one dtype lying back to back in one storage (as ``load`` lays them
    out) share one span, so a check costs one call per run instead of one per tensor."""
    runs: dict[tuple, list[tuple[int, int, torch.Tensor]]] = {}
    spans = []
    for t in tensors:
        if not t.is_floating_point() or t.numel() == 0:
            continue
        if t.element_size() == 1:  # torch has no aminmax for float8 (reported as dtype-unsupported anyway)
            spans.append(t.float().reshape(-1))
        elif not t.is_contiguous():
            spans.append(t.reshape(-1))
        else:
            storage = t.untyped_storage()
            start = t.storage_offset()
            runs.setdefault((t.device, t.dtype, storage.data_ptr(), storage.nbytes()), []).append((start, start + t.numel(), t))
    for run in runs.values():
        run.sort(key=_FIRST)
        start, stop, base = run[0]
        for begin, end, _ in run[1:]:
            if begin > stop:  # a gap: close the span
                spans.append(base.as_strided((stop - start,), (1,), start))
                start = begin
            stop = max(stop, end)
        spans.append(base.as_strided((stop - start,), (1,), start))
    return spans


def _spans_finite(spans: list[torch.Tensor]) -> bool:
    """True when no span holds NaN or Inf: aminmax propagates NaN, and ±Inf shows as min or max."""
    import torch

    for span in spans:
        lo, hi = torch.aminmax(span)
        if not (math.isfinite(lo.item()) and math.isfinite(hi.item())):
            return False
    return True


def value_problems(adapter: Adapter) -> list[Problem]:
    """NaN/Inf in any tensor (reads every tensor once).

    Tensors held in memory are first checked together, one pass per run of back-to-back
    tensors; only when that finds a non-finite value is each tensor checked to report it."""
    from ..adapter import MemoryStore

    source = str(adapter.source) if adapter.source else None
    store = adapter.tensors
    if hasattr(store, "raw"):  # the torch-free path's store (``io.array_store``) holds the raw bytes: check the bits
        return [p for key in store if (p := nonfinite_problem(key, nonfinite_count(store.meta(key).dtype, store.raw(key)), store.meta(key).numel, source))]
    import torch

    if isinstance(adapter.tensors, MemoryStore):
        with torch.no_grad():
            if _spans_finite(_spans(adapter.tensors.values())):
                return []
    return [p for key in adapter.tensors if (p := non_finite(key, adapter.tensors[key], source)) is not None]


def non_finite(key: str, t: Any, source: str | None) -> Problem | None:
    """``non-finite`` for one tensor holding NaN or Inf, else None."""
    import torch

    if t.is_floating_point() and t.element_size() == 1:
        t = t.float()  # torch has no isfinite for float8 (which validation still reports as dtype-unsupported)
    if not t.is_floating_point() or _all_finite(t):
        return None
    return nonfinite_problem(key, int((~torch.isfinite(t)).sum()), t.numel(), source)


def nonfinite_problem(key: str, bad: int, numel: int, source: str | None) -> Problem | None:
    """``non-finite`` for ``bad`` NaN/Inf values among ``numel``; None when there are none."""
    if not bad:
        return None
    return Problem("non-finite", "tensor holds NaN or Inf", path=source, key=key, expected="finite values", actual=f"{bad} non-finite of {numel}")


def raise_first_error(problems: list[Problem]) -> None:
    for p in problems:
        if p.severity == "error":
            raise p.to_error()
