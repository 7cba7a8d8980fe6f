"""Arrays of either kind — torch tensors, or the numpy arrays of the torch-free inspection path —
and the few operations the inspection math needs, dispatched on the array's type.

``info``, ``validate``, ``check --for`` and ``diff --conflict off`` read files whose tensors
they only measure: ‖ΔW‖ from the small Gram matrices, principal angles from r×r cores, NaN
and Inf, digests of the raw bytes.  None of it needs torch, whose import costs seconds, so on
that path the tensors are numpy arrays (``adapterkit.io.array_store``) and the math is written
once against the functions here, which call numpy or torch as the array asks.  numpy has no
bfloat16 or float8: those are decoded to float32 exactly (a bf16 is the top half of the fp32
with the same value; float8 through a table of its 256 values).

Raw-byte checks (:func:`nonfinite_count`) read the IEEE bit patterns directly: a value is NaN
or ±Inf exactly when its exponent bits are all ones, so with the sign cleared it is at least
the pattern of +Inf (float8 E4M3 has no Inf; its NaN is S.1111.111).
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

# the unsigned integer type of each float's width, its sign-cleared mask, and the smallest
# sign-cleared bit pattern that is not finite (+Inf; E4M3's one NaN pattern)
_BITS: dict[str, tuple[str, int, int]] = {
    "F64": ("<u8", 0x7FFF_FFFF_FFFF_FFFF, 0x7FF0_0000_0000_0000),
    "F32": ("<u4", 0x7FFF_FFFF, 0x7F80_0000),
    "F16": ("<u2", 0x7FFF, 0x7C00),
    "BF16": ("<u2", 0x7FFF, 0x7F80),
    "F8_E5M2": ("u1", 0x7F, 0x7C),
    "F8_E4M3": ("u1", 0x7F, 0x7F),
}
_NUMPY = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}
_CHUNK = 1 << 20  # elements per pass of the bit test: a temporary that stays in cache


def _numpy() -> Any:
    """numpy, imported the first time with its BLAS on one thread unless the user chose
    (``OPENBLAS_NUM_THREADS``): the products here are r×m by m×r, too small to share, and
    OpenBLAS's spinning threads stall on a busy machine (``diff --conflict off`` of two 7B-shaped
    r16 adapters: 15.2 s with 2 threads against 2.3 s with 1 on the loaded 2-core machine)."""
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import numpy

    return numpy


def quiet() -> Any:
    """A context in which numpy computes with NaN and Inf silently, as torch does (a statistic of
    a tensor holding NaN is NaN; the value checks report the NaN, once)."""
    return _numpy().errstate(all="ignore")


def is_numpy(x: Any) -> bool:
    """Whether ``x`` is a numpy array (without importing numpy or torch)."""
    return type(x).__module__ == "numpy"


def nonfinite_count(dtype: str, raw: Any) -> int:
    """NaN and ±Inf among the little-endian values of ``dtype`` (a safetensors name) in the
    bytes-like ``raw``; 0 for integer and bool dtypes."""
    if dtype not in _BITS or len(memoryview(raw)) == 0:
        return 0
    np = _numpy()

    kind, mask, inf = _BITS[dtype]
    bits = np.frombuffer(raw, dtype=kind)
    tmp = np.empty(min(len(bits), _CHUNK), dtype=bits.dtype)
    bad = 0
    for start in range(0, len(bits), _CHUNK):
        part = np.bitwise_and(bits[start:start + _CHUNK], mask, out=tmp[: min(_CHUNK, len(bits) - start)])
        if part.max() >= inf:
            bad += int(np.count_nonzero(part >= inf))
    return bad


def _float8_table(dtype: str) -> Any:
    """The float32 value of each of the 256 float8 bit patterns (OCP FP8: E4M3 without Inf,
    bias 7, NaN at S.1111.111; E5M2 IEEE-like, bias 15)."""
    np = _numpy()

    code = np.arange(256, dtype=np.int64)
    sign = np.where(code & 0x80, -1.0, 1.0)
    if dtype == "F8_E4M3":
        exp, man, bias, mbits = (code >> 3) & 0xF, code & 0x7, 7, 3
    else:
        exp, man, bias, mbits = (code >> 2) & 0x1F, code & 0x3, 15, 2
    normal = (1 + man / 2**mbits) * np.exp2(exp - bias)
    sub = (man / 2**mbits) * 2.0 ** (1 - bias)
    value = sign * np.where(exp == 0, sub, normal)
    if dtype == "F8_E4M3":
        value[(code & 0x7F) == 0x7F] = np.nan
    else:
        top = exp == 0x1F
        value[top] = np.where(man[top] == 0, sign[top] * np.inf, np.nan)
    return value.astype(np.float32)


def decode(dtype: str, shape: tuple[int, ...], raw: Any) -> Any:
    """The tensor stored as ``raw`` (little-endian bytes of ``dtype``, a safetensors name) as a
    numpy array of ``shape``: a view for the dtypes numpy has, float32 for BF16 and float8."""
    np = _numpy()

    if dtype in _NUMPY:
        return np.frombuffer(raw, dtype=_NUMPY[dtype]).reshape(shape)
    if dtype == "BF16":
        return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
    return _float8_table(dtype)[np.frombuffer(raw, dtype=np.uint8)].reshape(shape)


# ----------------------------------------------------------------------------- math on either kind


def numel(x: Any) -> int:
    return math.prod(x.shape)


def is_fp64(x: Any) -> bool:
    return str(x.dtype) in ("float64", "torch.float64")


def to_float(x: Any, *, fp64: bool, device: Any = None, contiguous: bool = False) -> Any:
    """``x`` in fp64 (``fp64``) or fp32, on ``device`` for a torch tensor, row-major when
    ``contiguous`` (numpy arrays keep their order: BLAS reads a transposed operand as it is)."""
    if is_numpy(x):
        np = _numpy()

        return np.asarray(x, dtype=np.float64 if fp64 else np.float32)
    import torch

    out = x.to(device=device, dtype=torch.float64 if fp64 else torch.float32)
    return out.contiguous() if contiguous else out


def norm(x: Any, axis: int | None = None) -> Any:
    """The 2-norm of all entries (``axis`` None: a float) or along ``axis`` (an array)."""
    if is_numpy(x):
        np = _numpy()

        n = np.linalg.norm(x if axis is not None else x.reshape(-1), axis=axis)
    else:
        n = x.norm() if axis is None else x.norm(dim=axis)
    return float(n) if axis is None else n


def total(x: Any, axis: int | None = None) -> Any:
    """The sum of all entries (a float) or along ``axis``."""
    if axis is None:
        return float(x.sum())
    return x.sum(axis=axis) if is_numpy(x) else x.sum(dim=axis)


def eigh(x: Any) -> tuple[Any, Any]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric ``x``."""
    if is_numpy(x):
        np = _numpy()

        return tuple(np.linalg.eigh(x))  # type: ignore[return-value]
    import torch

    return tuple(torch.linalg.eigh(x))  # type: ignore[return-value]


def qr(x: Any) -> tuple[Any, Any]:
    """Thin QR of ``x``."""
    if is_numpy(x):
        np = _numpy()

        return tuple(np.linalg.qr(x))  # type: ignore[return-value]
    import torch

    return tuple(torch.linalg.qr(x))  # type: ignore[return-value]


def svd(x: Any) -> tuple[Any, Any, Any]:
    """Thin SVD of ``x``: U, S (descending), Vᴴ."""
    if is_numpy(x):
        np = _numpy()

        return tuple(np.linalg.svd(x, full_matrices=False))  # type: ignore[return-value]
    import torch

    return tuple(torch.linalg.svd(x, full_matrices=False))  # type: ignore[return-value]


def angles(x: Any) -> tuple[float, ...]:
    """arccos of the singular values of ``x`` (clipped to [0, 1]), ascending: the principal
    angles when ``x`` is the cross matrix of two orthonormal bases."""
    if is_numpy(x):
        np = _numpy()

        return tuple(np.arccos(np.clip(np.linalg.svd(x, compute_uv=False), 0.0, 1.0)).tolist())
    import torch

    return tuple(torch.arccos(torch.linalg.svdvals(x).clamp(0.0, 1.0)).tolist())
