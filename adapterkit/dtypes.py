"""The dtype names of the format (safetensors' ``F32``, ``BF16``, ...), their sizes, and their
torch dtypes.

Part of the value layer: an Adapter's :class:`~adapterkit.adapter.TensorMeta` names dtypes so,
and the safetensors container (``adapterkit.io.safetensors_file``) reads and writes them.
``ITEMSIZE`` needs nothing; ``DTYPES`` and ``DTYPE_NAMES`` (the torch dtypes) import torch when
first asked for, so that the torch-free inspection path (``adapterkit.arrays``) never does.
"""

from __future__ import annotations

from typing import Any

ITEMSIZE: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1,
}
FLOATS = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")


def _torch_maps() -> tuple[dict[str, Any], dict[Any, str]]:
    import torch

    dtypes = {
        "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
        "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
        "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    }
    assert set(dtypes) == set(ITEMSIZE) and all(dtypes[k].itemsize == ITEMSIZE[k] for k in dtypes)
    return dtypes, {v: k for k, v in dtypes.items()}


def __getattr__(name: str) -> Any:
    """``DTYPES`` (name -> torch dtype) and ``DTYPE_NAMES`` (torch dtype -> name), built on first use."""
    if name in ("DTYPES", "DTYPE_NAMES"):
        dtypes, names = _torch_maps()
        globals().update(DTYPES=dtypes, DTYPE_NAMES=names)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
