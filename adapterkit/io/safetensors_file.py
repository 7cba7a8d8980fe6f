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

import functools
import json
import math
import mmap
import operator
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..dtypes import ITEMSIZE
from ..errors import FormatError, NotFoundError, TensorError
from .atomic import write_atomic
from .jsontext import loads_strict
from .version import check_version

if TYPE_CHECKING:  # torch is imported where tensors are made: reading headers and raw bytes needs none
    import torch

_ITEMSIZE = ITEMSIZE
_BEGIN_END = operator.attrgetter("begin", "end")
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's limit (spec §5.2 rule 2)
MAX_DEPTH = 127  # serde_json's recursion limit, as the safetensors library meets it (spec [R5.2-4])
_ENTRY_FIELDS = frozenset({"dtype", "shape", "data_offsets"})


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
        from ..dtypes import DTYPES

        return DTYPES[self.dtype]

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


_new = object.__new__


def _tensor_info(key: str, dtype: str, shape: tuple[int, ...], begin: int, end: int) -> TensorInfo:
    """``TensorInfo(...)`` without the frozen dataclass's five ``object.__setattr__`` calls
    (2x faster; it runs once per tensor on every open).  Same object: equal, hashable, frozen."""
    info = _new(TensorInfo)
    d = info.__dict__
    d["key"], d["dtype"], d["shape"], d["begin"], d["end"] = key, dtype, shape, begin, end
    return info


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
    if n > _MEMO_MAX_BYTES:
        return _parse_header(path, raw, size - 8 - n, 8 + n)
    header = _parse_header_memo(path, raw, size - 8 - n)
    return Header(path, dict(header.metadata), dict(header.tensors), header.data_start)


_MEMO_MAX_BYTES = 256 * 1024  # ~2000 tensors; a 7B rank-16 LoRA's header is ~60 KB


@functools.lru_cache(maxsize=8)
def _parse_header_memo(path: Path, raw: bytes, data_len: int) -> Header:
    """``_parse_header`` remembered for the last few headers: a pure function of its arguments,
    keyed by the header bytes themselves, so a file re-opened unchanged (a server loading an
    adapter per request) skips the parse and one that changed is parsed afresh.  Errors are
    not remembered.  Callers get fresh dicts (the TensorInfos are frozen and shared)."""
    return _parse_header(path, raw, data_len, 8 + len(raw))


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
    for key, entry in obj.items():  # plain loops, no generators: this runs once per tensor on every open
        if not isinstance(entry, dict):
            raise _bad(path, "tensor entry must be an object", key)
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if len(entry) > 3 and _too_deep(entry):
            raise _bad(path, "header nests deeper than the safetensors library reads", key,
                       expected=f"at most {MAX_DEPTH} levels of arrays and objects", actual="more")
        itemsize = _ITEMSIZE.get(dtype) if isinstance(dtype, str) else None
        if itemsize is None:
            raise _bad(path, "unknown dtype", key, expected="one of " + ", ".join(ITEMSIZE), actual=dtype)
        if not isinstance(shape, list):
            raise _bad(path, "shape must be a list of non-negative integers", key, actual=shape)
        count = 1
        for d in shape:
            if type(d) is not int or d < 0:
                raise _bad(path, "shape must be a list of non-negative integers", key, actual=shape)
            if count < 2**63:  # stop multiplying once too large: no huge integers from long shapes
                count *= d or 1
        if count >= 2**63:  # torch cannot address (or stride) more than 2**63 - 1 elements
            raise _bad(path, "shape is too large to address", key, expected="element count < 2**63", actual=shape)
        if not isinstance(offsets, list) or len(offsets) != 2:
            raise _bad(path, "data_offsets must be two non-negative integers", key, actual=offsets)
        begin, end = offsets
        if type(begin) is not int or type(end) is not int or begin < 0 or end < 0:
            raise _bad(path, "data_offsets must be two non-negative integers", key, actual=offsets)
        expected = math.prod(shape) * itemsize
        if end < begin or end - begin != expected:
            raise _bad(
                path, "data_offsets do not span dtype x shape", key, code="offset-out-of-range",
                expected=f"{expected} bytes", actual=f"[{begin}, {end}]",
            )
        infos[key] = _tensor_info(key, dtype, tuple(shape), begin, end)
    cursor = 0
    ordered = sorted(infos.values(), key=_BEGIN_END)
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


def _too_deep(entry: dict) -> bool:
    """Whether a tensor entry's other members (ignored, R5.2-8) nest the header past
    ``MAX_DEPTH`` levels of arrays and objects (the header object and the entry are two)."""
    level = [v for k, v in entry.items() if k not in _ENTRY_FIELDS and isinstance(v, (dict, list))]
    depth = 2
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            return True
        level = [c for v in level for c in (v.values() if isinstance(v, dict) else v) if isinstance(c, (dict, list))]
    return False


def read_tensor(header: Header, key: str) -> torch.Tensor:
    """Read one tensor (a fresh CPU tensor that owns its memory)."""
    import torch

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


def data_size(header: Header) -> int:
    """Bytes of the data region of ``header``'s file (its tensors' bytes)."""
    return max((i.end for i in header.tensors.values()), default=0)


def read_region(header: Header, region: memoryview, on_read: Callable[[memoryview, int], None] | None = None) -> None:
    """Fill ``region`` (``data_size`` bytes) with the data region of ``header``'s file, in pieces in
    file order, calling ``on_read(region, n)`` each time its first ``n`` bytes are in (see
    :func:`read_all`).  Torch-free: ``read_all`` and the numpy store (``io.array_store``) both read so.

    Raises:
        FormatError: ``truncated-file`` when the file is shorter than its header said; the file
            cannot be read.
    """
    size = len(region)
    got = 0
    try:
        with open(header.path, "rb", buffering=0) as f:
            f.seek(header.data_start)
            while got < size:
                stop = min(size, got + _READ_PIECE)
                n = _read_into(f, region[got:stop])
                got += n
                if on_read is not None and n:
                    on_read(region, got)
                if got < stop:
                    break
    except OSError as exc:
        raise FormatError(f"cannot read tensors: {exc.strerror}", path=header.path) from exc
    if got != size:
        raise FormatError("file changed while reading", code="truncated-file", path=header.path)


def read_all(header: Header, on_read: Callable[[memoryview, int], None] | None = None) -> dict[str, torch.Tensor]:
    """Read every tensor with one pass over the data region, in pieces in file order, into one
    private buffer; the tensors are views of that buffer (an unaligned tensor, possible in foreign
    files, gets its own aligned copy).  The file is closed on return: nothing stays mapped or open.

    ``on_read(region, n)``, if given, is called each time the first ``n`` bytes of the data region
    are in ``region`` (a memoryview of the buffer, the same at every call), so that another thread
    can work on them while the rest is read: ``load`` hashes each tensor as its bytes arrive
    (``adapterkit.io.digest.RegionHasher.filled``).

    Raises:
        FormatError: ``truncated-file`` when the file is shorter than its header said; the file
            cannot be read.
    """
    infos = header.tensors.values()
    size = data_size(header)
    buf = _private_buffer(size)
    read_region(header, memoryview(buf.numpy()), on_read)
    typed: dict[str, torch.Tensor] = {}  # the whole buffer viewed as each dtype in use
    out = {}
    for info in infos:
        itemsize = _ITEMSIZE[info.dtype]
        if info.begin % itemsize:
            out[info.key] = buf[info.begin : info.end].clone().view(info.torch_dtype).reshape(info.shape)
            continue
        whole = typed.get(info.dtype)
        if whole is None:
            whole = typed[info.dtype] = buf[: size - size % itemsize].view(info.torch_dtype)
        out[info.key] = whole.as_strided(info.shape, _strides(info.shape), info.begin // itemsize)  # 1 op, not slice + view
    return out


@functools.lru_cache(maxsize=1024)
def _strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major (contiguous) strides of ``shape`` in elements, as torch makes them (a 0 dim counts as 1)."""
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= d or 1
    return tuple(reversed(strides))


_HUGE_PAGE = 2 * 1024 * 1024
_READ_PIECE = 4 * _HUGE_PAGE  # read_all reads this much at a time: ~2 ms, so a reader's client starts early


def _private_buffer(size: int) -> torch.Tensor:
    """A fresh byte buffer owned by the caller.  From ~2 MB up, on Linux, anonymous memory advised
    for transparent huge pages: faulting in 4 KiB pages one by one costs more than the copy."""
    import torch

    if size >= _HUGE_PAGE and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            m.madvise(mmap.MADV_HUGEPAGE)
            return torch.frombuffer(m, dtype=torch.uint8)  # the tensor keeps the mapping alive
        except (OSError, ValueError):
            pass
    return torch.empty(size, dtype=torch.uint8)


def _read_into(f, view: memoryview) -> int:
    """Fill ``view`` from ``f``; returns the bytes read (fewer only at end of file).  A single
    read returns at most ~2 GiB on Linux, so large regions take several."""
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """Little-endian raw bytes of a tensor, as safetensors stores them (a view, not a copy,
    when the tensor is already a contiguous CPU tensor)."""
    import torch

    t = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy())


def _layout(tensors: Mapping[str, Any]) -> list[str]:
    return sorted(tensors, key=lambda k: (-tensors[k].dtype.itemsize, k))


def encode(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Iterator[bytes]:
    """Yield the bytes of a safetensors file holding ``tensors`` and ``metadata``, deterministically.

    Raises:
        TensorError: a tensor dtype safetensors cannot hold (code ``dtype-unsupported``).
    """
    head, order = encode_header(tensors, metadata)
    yield head
    for key in order:
        yield tensor_bytes(tensors[key])


def encode_header(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[bytes, list[str]]:
    """The first bytes of the file :func:`encode` writes (length and padded header), and the
    keys in the order their data follows.

    Raises:
        TensorError: a tensor dtype safetensors cannot hold (code ``dtype-unsupported``).
    """
    from ..dtypes import DTYPE_NAMES

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
    return struct.pack("<Q", len(raw)) + raw, order


def write_file(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Atomically write a safetensors file (see :func:`encode`)."""
    write_atomic(path, encode(tensors, metadata))
