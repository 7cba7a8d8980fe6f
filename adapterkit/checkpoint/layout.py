"""Where every byte of an output checkpoint goes, computed before any tensor is written.

Three pure functions of a plan (key -> dtype name and shape):

* :func:`shard_layout` - one shard's header bytes and each tensor's byte range, laid out
  exactly as the ``safetensors`` library lays them out (tensors ordered by dtype rank, largest
  first, then by key; header entries in that order with fields ``dtype``, ``shape``,
  ``data_offsets``; ``__metadata__`` first; spaces to a multiple of 8).  A checkpoint saved by
  transformers and copied through unchanged is therefore byte-identical, and the data of every
  tensor starts at a multiple of its element size.
* :func:`split_greedy` - transformers' (huggingface_hub's) greedy split for ``max_shard_size``,
  tensor for tensor: a tensor larger than the limit gets a shard of its own, placed before the
  shard being filled.
* :func:`index_json` - ``model.safetensors.index.json`` as transformers writes it.

Nothing here touches a file.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..dtypes import ITEMSIZE
from ..io.safetensors_file import TensorInfo

SINGLE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

# The safetensors library's Dtype enum, in declaration order: it sorts a file's tensors by this,
# descending (F64 and I64 first, BOOL last), then by name.
_RANK = {name: i for i, name in enumerate(
    ("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "F16", "BF16", "I32", "F32", "F64", "I64"),
)}
assert set(_RANK) == set(ITEMSIZE)

Plan = Mapping[str, tuple[str, tuple[int, ...]]]


def nbytes(dtype: str, shape: Sequence[int]) -> int:
    """Bytes of a tensor of ``dtype`` (a safetensors dtype name) and ``shape``."""
    return math.prod(shape) * ITEMSIZE[dtype]


@dataclass(frozen=True)
class ShardLayout:
    """One output shard: its name, its header bytes (length prefix included) and where each
    tensor's data lies (``TensorInfo`` offsets are relative to the data region, as in a header)."""

    name: str
    header: bytes
    tensors: dict[str, TensorInfo]

    @property
    def data_start(self) -> int:
        return len(self.header)

    @property
    def size(self) -> int:
        """The file's total size in bytes."""
        return self.data_start + max((i.end for i in self.tensors.values()), default=0)


def shard_layout(name: str, plan: Plan, metadata: Mapping[str, str]) -> ShardLayout:
    """The header and byte ranges of a shard holding ``plan``'s tensors (see the module doc)."""
    order = sorted(plan, key=lambda k: (-_RANK[plan[k][0]], k))
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    infos: dict[str, TensorInfo] = {}
    offset = 0
    for key in order:
        dtype, shape = plan[key]
        end = offset + nbytes(dtype, shape)
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, end]}
        infos[key] = TensorInfo(key, dtype, tuple(shape), offset, end)
        offset = end
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return ShardLayout(name, struct.pack("<Q", len(raw)) + raw, infos)


def shard_names(count: int) -> list[str]:
    """transformers' names for ``count`` shards: ``model.safetensors`` alone, else
    ``model-00001-of-0000N.safetensors`` ..."""
    if count == 1:
        return [SINGLE_NAME]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def split_greedy(sizes: Sequence[tuple[str, int]], max_shard_size: int) -> list[list[str]]:
    """Keys grouped into shards as ``huggingface_hub.split_torch_state_dict_into_shards`` groups
    a state dict whose tensors have these byte sizes, in this order: fill a shard until the next
    tensor would overflow it; a tensor over the limit alone gets its own shard, appended at once
    (so before the shard being filled).  Returns the shards in file-number order."""
    shards: list[list[str]] = []
    current: list[str] = []
    used = 0
    for key, size in sizes:
        if size > max_shard_size:
            shards.append([key])
            continue
        if used + size > max_shard_size:
            shards.append(current)
            current, used = [], 0
        current.append(key)
        used += size
    if current or not shards:
        shards.append(current)
    return shards


def index_json(weight_map: Mapping[str, str], metadata: Mapping[str, object]) -> bytes:
    """``model.safetensors.index.json`` as transformers writes it: indent 2, sorted keys, newline."""
    index = {"metadata": dict(metadata), "weight_map": dict(weight_map)}
    return (json.dumps(index, indent=2, sort_keys=True) + "\n").encode("utf-8")
