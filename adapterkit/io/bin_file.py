"""PEFT's legacy ``adapter_model.bin``: read only through ``torch.load(weights_only=True)``.

A pickle that would import or call anything beyond plain tensors is refused with
``unsafe-pickle``; nothing is ever unpickled with the unrestricted loader.  The file is read
through a read-only memory map, whose ``read(n)`` returns at most the bytes that remain: a
pickle claiming a 3 GB string in a 2 KB file allocates nothing of that size (a plain file
object allocates the claimed size before it reads).
"""

from __future__ import annotations

import mmap
import pickle
import pickletools
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import FormatError, NotFoundError, UnsafeFileError

if TYPE_CHECKING:  # a .bin is torch's format: read_bin imports it, opening other adapters needs none
    import torch

_PICKLE_OPCODES = {op.code for op in pickletools.opcodes}


def read_bin(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a torch ``.bin`` state dict.

    Raises:
        UnsafeFileError: the pickle references anything but tensors (``unsafe-pickle``).
        FormatError: not a readable checkpoint, or not a mapping of str -> Tensor (``bin-invalid``).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise NotFoundError("no such file", path=path)
    try:
        with open(path, "rb") as f:
            if f.seek(0, 2) == 0:
                raise FormatError("not a readable torch checkpoint (an empty file)", code="bin-invalid", path=path,
                                  expected="torch.save output", actual="0 bytes")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
                obj = torch.load(view, map_location="cpu", weights_only=True, mmap=False)
    except FormatError:
        raise
    except pickle.UnpicklingError as exc:
        bad_op = re.search(r"Unsupported operand (\d+)", str(exc))
        if bad_op and chr(int(bad_op[1])) not in _PICKLE_OPCODES:  # not a pickle at all, e.g. a text file
            raise FormatError(
                "not a readable torch checkpoint (neither a zip archive nor a pickle)", code="bin-invalid", path=path,
                expected="torch.save output", actual=f"byte {int(bad_op[1]):#04x} where a pickle opcode belongs",
            ) from exc
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
        if value.layout != torch.strided or value.device.type != "cpu":
            raise FormatError(
                "state dict tensors must be dense CPU tensors", code="bin-invalid", path=path, key=key,
                expected="dense (strided) tensor", actual=f"{value.layout} on {value.device}",
            )
    return {k: v.contiguous() for k, v in obj.items()}
