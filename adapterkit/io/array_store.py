"""The torch-free side of reading: an adapter's tensors as numpy arrays, for the commands that
only measure them (``info``, ``validate``, ``check --for``, ``diff --conflict off``).

:func:`read_arrays` reads a safetensors file's data region with one read into one private
buffer, as ``load`` does, and :class:`ArrayStore` hands out each tensor as a numpy array over
it (``adapterkit.arrays.decode``: views, float32 for BF16 and float8) and its raw bytes.
:func:`load_arrays` is ``load`` on those bytes: the same checks in the same order (the content
digest, §5.5, before NaN/Inf), the same errors, without torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..adapter import Adapter, TensorMeta, TensorStore
from ..arrays import decode
from ..errors import FormatError
from .safetensors_file import Header, _read_into


class ArrayStore(TensorStore):
    """The tensors of one safetensors file held in one buffer, as numpy arrays."""

    def __init__(self, header: Header, data: Any) -> None:
        self.header = header
        self._data = memoryview(data)

    def raw(self, key: str) -> memoryview:
        """The tensor's little-endian bytes as stored (a view of the buffer)."""
        info = self.header.tensors[key]
        return self._data[info.begin : info.end]

    def __getitem__(self, key: str) -> Any:
        info = self.header.tensors[key]
        return decode(info.dtype, info.shape, self._data[info.begin : info.end])

    def __iter__(self) -> Iterator[str]:
        return iter(self.header.tensors)

    def __len__(self) -> int:
        return len(self.header.tensors)

    def meta(self, key: str) -> TensorMeta:
        return self.header.tensors[key]  # type: ignore[return-value]


def read_arrays(header: Header) -> ArrayStore:
    """Every tensor of ``header``'s file, with one read of its data region (the file is closed on return)."""
    size = max((i.end for i in header.tensors.values()), default=0)
    buf = bytearray(size)
    try:
        with open(header.path, "rb", buffering=0) as f:
            f.seek(header.data_start)
            got = _read_into(f, memoryview(buf))
    except OSError as exc:
        raise FormatError(f"cannot read tensors: {exc.strerror}", path=header.path) from exc
    if got != size:
        raise FormatError("file changed while reading", code="truncated-file", path=header.path)
    return ArrayStore(header, buf)


def in_arrays(adapter: Adapter) -> Adapter:
    """``adapter`` (opened from a safetensors file) with its tensors read into an ArrayStore."""
    from dataclasses import replace

    return replace(adapter, tensors=read_arrays(adapter.tensors.header))  # type: ignore[attr-defined]


def load_arrays(path: str | Path, *, adapter_name: str | None = None) -> Adapter:
    """``adapterkit.io.reader.load`` without torch: the adapter at the local ``path`` read in one
    go into an :class:`ArrayStore`, checked as ``load`` checks it (structure, the content digest,
    then NaN/Inf; the first error raised).  A ``.bin`` is torch's own format: read as ``load``
    reads it, into torch tensors."""
    from .checks import raise_first_error, value_problems
    from .digest import config_digest, mismatch, recorded, tensor_entries
    from .lazy_store import LazyStore
    from .reader import open_with_config

    adapter, config_data = open_with_config(path, adapter_name=adapter_name)
    if isinstance(adapter.tensors, LazyStore):
        adapter = in_arrays(adapter)
        store: ArrayStore = adapter.tensors  # type: ignore[assignment]
        entries = recorded(store.header.metadata, store.header.path)
        if entries is not None:
            now = tensor_entries((key, info.dtype, info.shape, store.raw(key)) for key, info in store.header.tensors.items())
            found = mismatch(entries, config_digest(config_data, adapter.format_version), now, str(adapter.source))
            raise_first_error([found] if found else [])
    raise_first_error(value_problems(adapter))
    return adapter
