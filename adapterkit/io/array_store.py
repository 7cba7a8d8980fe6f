"""The torch-free side of reading: an adapter's tensors as numpy arrays, for the commands that
only measure them (``info``, ``validate``, ``check --for``, ``diff --conflict off``).

:func:`read_arrays` reads a safetensors file's data region with one read into one private
buffer, as ``load`` does, and :class:`ArrayStore` hands out each tensor as a numpy array over
it (``adapterkit.arrays.decode``: views, float32 for BF16 and float8) and its raw bytes.
:func:`load_arrays` is ``load`` on those bytes: the same checks in the same order (the content
digest, §5.5, before NaN/Inf), the same errors, without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..adapter import Adapter, TensorMeta, TensorStore
from ..arrays import decode
from .safetensors_file import Header, data_size, read_region


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


def read_arrays(header: Header, on_read: Callable[[memoryview, int], None] | None = None) -> ArrayStore:
    """Every tensor of ``header``'s file, with one read of its data region in pieces
    (``safetensors_file.read_region``: ``on_read`` sees each piece arrive; the file is closed on return)."""
    buf = bytearray(data_size(header))
    read_region(header, memoryview(buf), on_read)
    return ArrayStore(header, buf)


def in_arrays(adapter: Adapter) -> Adapter:
    """``adapter`` (opened from a safetensors file) with its tensors read into an ArrayStore."""
    return replace(adapter, tensors=read_arrays(adapter.tensors.header))  # type: ignore[attr-defined]


def load_arrays(path: str | Path, *, adapter_name: str | None = None) -> Adapter:
    """``adapterkit.io.reader.load`` without torch: the adapter at the local ``path`` read in one
    go into an :class:`ArrayStore`, checked as ``load`` checks it (structure, the content digest,
    then NaN/Inf; the first error raised).  A ``.bin`` is torch's own format: read as ``load``
    reads it, into torch tensors."""
    from .checks import raise_first_error, value_problems
    from .digest import RegionHasher, config_digest, mismatch, recorded
    from .lazy_store import LazyStore
    from .reader import open_with_config

    adapter, config_data = open_with_config(path, adapter_name=adapter_name)
    if isinstance(adapter.tensors, LazyStore):
        header = adapter.tensors.header
        entries = recorded(header.metadata, header.path)
        if entries is None:
            adapter = replace(adapter, tensors=read_arrays(header))
        else:  # each tensor hashed as its bytes arrive, as load does
            with RegionHasher((i.key, i.dtype, i.shape, i.begin, i.end) for i in header.tensors.values()) as hasher:
                adapter = replace(adapter, tensors=read_arrays(header, hasher.filled))
                now = hasher.entries()
            found = mismatch(entries, config_digest(config_data, adapter.format_version), now, str(adapter.source))
            raise_first_error([found] if found else [])
    raise_first_error(value_problems(adapter))
    return adapter
