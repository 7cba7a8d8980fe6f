"""The file side of the Adapter value: :class:`LazyStore`, the tensors of a safetensors file,
each read from disk when asked for.  The value (``adapterkit.adapter``) knows no files; the
readers (``adapterkit.io.reader``) put a LazyStore in the Adapters they open."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..adapter import TensorMeta, TensorStore
from .safetensors_file import Header, read_tensor

if TYPE_CHECKING:
    import torch


class LazyStore(TensorStore):
    """Tensors of a safetensors file, each read from disk when asked for (not cached)."""

    def __init__(self, header: Header) -> None:
        self.header = header

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self.header.tensors:
            raise KeyError(key)
        return read_tensor(self.header, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.header.tensors)

    def __len__(self) -> int:
        return len(self.header.tensors)

    def meta(self, key: str) -> TensorMeta:
        """The header's own record (a ``TensorInfo``: dtype, shape, numel, nbytes like a
        ``TensorMeta``), so the checks that ask for every key allocate nothing."""
        return self.header.tensors[key]  # type: ignore[return-value]
