"""A strict reader and a deterministic writer for the safetensors container.

The reader validates the whole header before any tensor is touched and maps each
defect to a stable error code: ``truncated-file`` (the file is shorter than its
header says), ``header-invalid`` (not JSON / wrong structure / unknown dtype /
size disagrees with shape), ``offset-out-of-range`` (offsets overlap, leave
holes, or trailing bytes exist).  Tensors are then read lazily, one at a time.

The writer produces identical bytes for identical content, whatever order the
tensors were given in: entries sorted by (alignment descending, key), header
JSON with sorted keys and no spaces, padded with spaces to 8 bytes.  The files
load with the ``safetensors`` library (checked in the tests).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import FormatError, NotFoundError, TensorError
from .atomic import write_atomic
from .jsontext import loads_strict
from .version import check_version

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's limit (spec §5.2 rule 2)


@dataclass(frozen=True)
class TensorInfo:
    """What the header says about one tensor: dtype name, shape and byte range in the data."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Header:
    """A validated safetensors header: metadata, tensor infos, and where the data starts."""

    path: Path
    metadata: dict[str, str]
    tensors: dict[str, TensorInfo]
    data_start: int


def read_header(path: str | Path) -> Header:
    """Read and validate the header of ``path`` without reading tensor data.

    Raises:
        NotFoundError: the file does not exist.
        FormatError: codes ``truncated-file``, ``header-invalid``, ``offset-out-of-range``.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            prefix = f.read(8)
            if len(prefix) < 8:
                raise FormatError(
                    "file is too short to hold a safetensors header",
                    code="truncated-file", path=path, expected=">= 8 bytes", actual=f"{size} bytes",
                )
            (n,) = struct.unpack("<Q", prefix)
            if n > MAX_HEADER_BYTES:
                raise FormatError(
                    "header length is implausibly large", code="header-invalid", path=path,
                    expected=f"<= {MAX_HEADER_BYTES}", actual=n,
                )
            if 8 + n > size:
                raise FormatError(
                    "file ends inside the header", code="truncated-file", path=path,
                    expected=f">= {8 + n} bytes", actual=f"{size} bytes",
                )
            raw = f.read(n)
    except FileNotFoundError as exc:
        raise NotFoundError("no such file", path=path) from exc
    except IsADirectoryError as exc:
        raise NotFoundError("expected a file, found a directory", code="not-an-adapter", path=path) from exc
    except OSError as exc:
        raise FormatError(f"cannot read file: {exc.strerror}", path=path) from exc
    return _parse_header(path, raw, size - 8 - n, 8 + n)


def _bad(path: Path, message: str, key: str | None = None, **kw) -> FormatError:
    return FormatError(message, code=kw.pop("code", "header-invalid"), path=path, key=key, **kw)


def _parse_header(path: Path, raw: bytes, data_len: int, data_start: int) -> Header:
    try:
        obj = loads_strict(raw)
    except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, repeated names, NaN, over-long ints, deep nesting
        raise _bad(path, f"header is not valid UTF-8 JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise _bad(path, "header must be a JSON object", expected="object", actual=type(obj).__name__)
    metadata = obj.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _bad(path, "__metadata__ must map strings to strings", key="__metadata__", code="metadata-invalid")
    check_version(metadata, path)  # before the tensor rules: a later major version may change them
    infos: dict[str, TensorInfo] = {}
    for key, entry in obj.items():
        if not isinstance(entry, dict):
            raise _bad(path, "tensor entry must be an object", key)
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise _bad(path, "unknown dtype", key, expected="one of " + ", ".join(DTYPES), actual=dtype)
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise _bad(path, "shape must be a list of non-negative integers", key, actual=shape)
        count = 1
        for d in shape:  # torch cannot address (or stride) more than 2**63 - 1 elements
            count *= max(d, 1)
            if count >= 2**63:
                raise _bad(path, "shape is too large to address", key, expected="element count < 2**63", actual=shape)
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int and o >= 0 for o in offsets)
        ):
            raise _bad(path, "data_offsets must be two non-negative integers", key, actual=offsets)
        begin, end = offsets
        expected = math.prod(shape) * DTYPES[dtype].itemsize
        if end < begin or end - begin != expected:
            raise _bad(
                path, "data_offsets do not span dtype x shape", key, code="offset-out-of-range",
                expected=f"{expected} bytes", actual=f"[{begin}, {end}]",
            )
        infos[key] = TensorInfo(key, dtype, tuple(shape), begin, end)
    cursor = 0
    ordered = sorted(infos.values(), key=lambda i: (i.begin, i.end))
    for info in ordered:
        if info.begin != cursor:
            raise _bad(
                path, "tensor data must be contiguous (no holes or overlaps)", info.key,
                code="offset-out-of-range", expected=f"begin {cursor}", actual=f"begin {info.begin}",
            )
        cursor = info.end
    if cursor > data_len:
        cut = next(i for i in ordered if i.end > data_len)
        raise _bad(
            path, "file ends before the tensor data", cut.key, code="truncated-file",
            expected=f"{cursor} data bytes", actual=f"{data_len} data bytes",
        )
    if cursor < data_len:
        raise _bad(
            path, "bytes after the last tensor", code="offset-out-of-range",
            expected=f"{cursor} data bytes", actual=f"{data_len} data bytes",
        )
    return Header(path, dict(metadata), infos, data_start)


def read_tensor(header: Header, key: str) -> torch.Tensor:
    """Read one tensor (a fresh CPU tensor that owns its memory)."""
    info = header.tensors[key]
    try:
        with open(header.path, "rb") as f:
            f.seek(header.data_start + info.begin)
            buf = bytearray(f.read(info.nbytes))
    except OSError as exc:
        raise FormatError(f"cannot read tensor: {exc.strerror}", path=header.path, key=key) from exc
    if len(buf) != info.nbytes:
        raise FormatError("file changed while reading", code="truncated-file", path=header.path, key=key)
    if info.nbytes == 0:
        return torch.empty(info.shape, dtype=info.torch_dtype)
    return torch.frombuffer(buf, dtype=info.torch_dtype).reshape(info.shape)


def read_all(header: Header) -> dict[str, torch.Tensor]:
    """Read every tensor with one read of the data region; the tensors share that buffer
    (an unaligned tensor, possible in foreign files, gets its own aligned copy)."""
    size = max((i.end for i in header.tensors.values()), default=0)
    buf = torch.empty(size, dtype=torch.uint8)
    try:
        with open(header.path, "rb") as f:
            f.seek(header.data_start)
            got = f.readinto(memoryview(buf.numpy())) if size else 0
    except OSError as exc:
        raise FormatError(f"cannot read tensors: {exc.strerror}", path=header.path) from exc
    if got != size:
        raise FormatError("file changed while reading", code="truncated-file", path=header.path)
    out = {}
    for key, info in header.tensors.items():
        raw = buf[info.begin : info.end]
        if info.begin % info.torch_dtype.itemsize:
            raw = raw.clone()
        out[key] = raw.view(info.torch_dtype).reshape(info.shape)
    return out


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """Little-endian raw bytes of a tensor, as safetensors stores them (a view, not a copy,
    when the tensor is already a contiguous CPU tensor)."""
    t = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy())


def _layout(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    return sorted(tensors, key=lambda k: (-tensors[k].dtype.itemsize, k))


def encode(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Iterator[bytes]:
    """Yield the bytes of a safetensors file holding ``tensors`` and ``metadata``, deterministically.

    Raises:
        TensorError: a tensor dtype safetensors cannot hold (code ``dtype-unsupported``).
    """
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    offset = 0
    order = _layout(tensors)
    for key in order:
        t = tensors[key]
        if t.dtype not in DTYPE_NAMES:
            raise TensorError("dtype cannot be stored", code="dtype-unsupported", key=key, actual=str(t.dtype))
        n = t.numel() * t.dtype.itemsize
        header[key] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    yield struct.pack("<Q", len(raw)) + raw
    for key in order:
        yield tensor_bytes(tensors[key])


def write_file(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Atomically write a safetensors file (see :func:`encode`)."""
    write_atomic(path, encode(tensors, metadata))
