"""PEFT's legacy ``adapter_model.bin``: read only through ``torch.load(weights_only=True)``.

A pickle that would import or call anything beyond plain tensors is refused with
``unsafe-pickle``; nothing is ever unpickled with the unrestricted loader.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from ..errors import FormatError, NotFoundError, UnsafeFileError


def read_bin(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a torch ``.bin`` state dict.

    Raises:
        UnsafeFileError: the pickle references anything but tensors (``unsafe-pickle``).
        FormatError: not a readable checkpoint, or not a mapping of str -> Tensor (``bin-invalid``).
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError("no such file", path=path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next((line for line in first if "Unsupported" in line or "global" in line.lower()), first[0] if first else "")
        raise UnsafeFileError(
            f"refusing to unpickle: the file references code, not only tensors ({detail[:200]})",
            path=path, expected="plain tensors", actual="pickled objects",
        ) from exc
    except Exception as exc:  # torch raises RuntimeError/EOFError/zipfile errors for damaged files
        raise FormatError(f"not a readable torch checkpoint ({type(exc).__name__}: {str(exc)[:200]})", code="bin-invalid", path=path) from exc
    if not isinstance(obj, dict):
        raise FormatError("checkpoint is not a state dict", code="bin-invalid", path=path, expected="dict", actual=type(obj).__name__)
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise FormatError(
                "state dict entries must be str -> Tensor", code="bin-invalid", path=path, key=str(key),
                expected="Tensor", actual=type(value).__name__,
            )
    return {k: v.contiguous() for k, v in obj.items()}
