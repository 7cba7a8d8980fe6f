"""Opening a model checkpoint (transformers' safetensors layout) and reading it tensor by tensor.

``open_checkpoint`` reads and validates every shard header and the index up front; no tensor
data is read.  ``Checkpoint.read`` then reads one tensor into a buffer of its own with one
positioned read: no memory map, so a process streaming a checkpoint holds only the tensors
it keeps (pages of a mapped file would count in its resident memory too).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..errors import FormatError, NotFoundError, UnsupportedError
from ..io.jsontext import loads_strict
from ..io.reader import BIN_NAME, CONFIG_KEY, CONFIG_NAME, WEIGHTS_NAME
from ..io.safetensors_file import Header, TensorInfo, read_header
from .layout import INDEX_NAME, SINGLE_NAME

# Files never carried over as "extra" files: weights in any format (stale after a merge) and
# their indexes.  Hidden entries (.git, .cache, staging folders) are skipped too.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
_WEIGHT_INDEX = re.compile(r".*\.(safetensors|bin|pt|pth|h5|msgpack)\.index(\.[^.]+)?\.json")
_BIN_WEIGHTS = re.compile(r"pytorch_model(-\d+-of-\d+)?\.bin(\.index\.json)?")


class Checkpoint:
    """A validated safetensors checkpoint: its shards, their headers, and where each key lives.

    Attributes:
        path: the directory opened (also when the index file was named), or the single file.
        shards: the shard files, in index order (sorted file names); a single file: ``[it]``.
        index: the parsed ``model.safetensors.index.json`` (None when unsharded).
    """

    def __init__(self, path: Path, shards: list[Path], index: dict | None, headers: dict[Path, Header]) -> None:
        self.path = path
        self.shards = shards
        self.index = index
        self._headers = headers
        self._where: dict[str, Header] = {}
        for shard in shards:
            header = headers[shard]
            for info in sorted(header.tensors.values(), key=lambda i: (i.begin, i.end)):
                self._where[info.key] = header

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, {len(self.shards)} shard(s), {len(self._where)} tensors)"

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def keys(self) -> list[str]:
        """Every tensor key: shard by shard, in the order of their data within the shard."""
        return list(self._where)

    def _header(self, key: str) -> Header:
        try:
            return self._where[key]
        except KeyError:
            raise NotFoundError("no such tensor in the checkpoint", code="key-not-found", path=self.path, key=key) from None

    def info(self, key: str) -> TensorInfo:
        """Dtype name, shape and byte range (relative to the shard's data region) of ``key``.

        Raises:
            NotFoundError: ``key-not-found``.
        """
        return self._header(key).tensors[key]

    def shard_of(self, key: str) -> Path:
        """The shard file holding ``key`` (raises ``key-not-found`` like :meth:`info`)."""
        return self._header(key).path

    def metadata(self, shard: str | Path) -> dict[str, str]:
        """The ``__metadata__`` of ``shard`` (a path from :attr:`shards`, or its file name)."""
        for s in self.shards:
            if s == Path(shard) or s.name == str(shard):
                return dict(self._headers[s].metadata)
        raise NotFoundError("no such shard in the checkpoint", code="key-not-found", path=self.path, key=str(shard))

    def locate(self, key: str) -> tuple[Path, int, int]:
        """(shard file, offset of the tensor's first byte in that file, byte count) of ``key``.

        Raises:
            NotFoundError: ``key-not-found``.
        """
        header = self._header(key)
        info = header.tensors[key]
        return header.path, header.data_start + info.begin, info.nbytes

    def read_into(self, key: str, view: memoryview, start: int = 0) -> None:
        """Bytes ``start`` to ``start + len(view)`` of ``key``'s raw data into ``view``, with
        positioned reads (for streaming a tensor a block at a time into buffers that are reused).

        Raises:
            NotFoundError: ``key-not-found``.
            UnsupportedError: the range does not lie inside the tensor.
            FormatError: ``truncated-file`` when the shard shrank since it was opened.
        """
        path, offset, nbytes = self.locate(key)
        view = memoryview(view).cast("B")
        if start < 0 or start + view.nbytes > nbytes:
            raise UnsupportedError("byte range outside the tensor", path=path, key=key,
                                   expected=f"within 0..{nbytes}", actual=f"{start}..{start + view.nbytes}")
        got = 0
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                while got < view.nbytes:
                    n = os.preadv(fd, [view[got:]], offset + start + got)
                    if n == 0:
                        break
                    got += n
            finally:
                os.close(fd)
        except OSError as exc:
            raise FormatError(f"cannot read tensor: {exc.strerror}", path=path, key=key) from exc
        if got != view.nbytes:
            raise FormatError(
                "file changed while reading", code="truncated-file", path=path, key=key,
                expected=f"{view.nbytes} bytes", actual=f"{got} bytes",
            )

    def read_bytes(self, key: str) -> bytearray:
        """The raw little-endian bytes of ``key``, read with positioned reads into a fresh
        buffer (for copying a tensor without decoding it).

        Raises:
            NotFoundError: ``key-not-found``.
            FormatError: ``truncated-file`` when the shard shrank since it was opened.
        """
        buf = bytearray(self.info(key).nbytes)
        self.read_into(key, memoryview(buf))
        return buf

    def read(self, key: str) -> torch.Tensor:
        """``key`` as a fresh CPU tensor that owns its memory (see :meth:`read_bytes`)."""
        info = self.info(key)
        buf = self.read_bytes(key)
        if not buf:
            return torch.empty(info.shape, dtype=info.torch_dtype)
        return torch.frombuffer(buf, dtype=info.torch_dtype).reshape(info.shape)

    def extra_files(self) -> list[Path]:
        """Every file of the checkpoint's directory that is not weights: ``config.json``,
        ``generation_config.json``, tokenizer files, ``README.md``, files in subfolders.  Not the
        shards, the index, other weights (``*.safetensors``, ``*.bin``, ``*.pt``, ... and their
        indexes) or hidden entries.  Sorted by path relative to :attr:`path`; a checkpoint
        opened as a single file has none.  Symbolic links to files are followed (a hub cache
        snapshot is made of them); linked directories are not entered."""
        if not self.path.is_dir():
            return []
        found: list[Path] = []
        for root, dirs, files in os.walk(self.path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.startswith(".") or name.endswith(WEIGHT_SUFFIXES) or _WEIGHT_INDEX.fullmatch(name):
                    continue
                p = Path(root, name)
                if p.is_file():
                    found.append(p)
        return sorted(found, key=lambda p: p.relative_to(self.path).as_posix())


def _invalid(message: str, path: Path, key: str | None = None, **kw) -> FormatError:
    return FormatError(message, code="checkpoint-invalid", path=path, key=key, **kw)


def _read_index(index_path: Path) -> dict:
    try:
        obj = loads_strict(index_path.read_bytes())
    except OSError as exc:
        raise _invalid(f"cannot read the index: {exc.strerror}", index_path) from exc
    except (ValueError, RecursionError) as exc:
        raise _invalid(f"the index is not valid JSON ({exc})", index_path) from exc
    if not isinstance(obj, dict):
        raise _invalid("the index must be a JSON object", index_path, expected="object", actual=type(obj).__name__)
    weight_map = obj.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise _invalid("the index needs a non-empty weight_map object", index_path, key="weight_map", actual=type(weight_map).__name__)
    for key, shard in weight_map.items():
        if not isinstance(shard, str) or not shard.endswith(".safetensors") or "/" in shard or "\\" in shard or shard.startswith("."):
            raise _invalid(
                "weight_map must name .safetensors files in the checkpoint's directory", index_path,
                key=f"weight_map.{key}", expected="a file name like model-00001-of-00002.safetensors", actual=shard,
            )
    if not isinstance(obj.get("metadata", {}), dict):
        raise _invalid("the index's metadata must be an object", index_path, key="metadata", actual=type(obj["metadata"]).__name__)
    return obj


def _check_not_adapter(header: Header) -> None:
    keys = header.tensors
    if CONFIG_KEY in header.metadata or any(k.startswith("base_model.model.") for k in keys):
        raise NotFoundError(
            "this is an adapter, not a model checkpoint", code="not-a-checkpoint", path=header.path,
            expected="model weights (e.g. model.embed_tokens.weight)", actual="adapter tensors (base_model.model.*)",
        )


def _diagnose_dir(path: Path) -> Exception:
    """Why a directory without model.safetensors or its index is not a checkpoint."""
    names = sorted(p.name for p in path.iterdir())
    if CONFIG_NAME in names or WEIGHTS_NAME in names or BIN_NAME in names:
        return NotFoundError(
            "this is an adapter directory, not a model checkpoint", code="not-a-checkpoint", path=path,
            expected=f"{SINGLE_NAME} or {INDEX_NAME}", actual=CONFIG_NAME if CONFIG_NAME in names else WEIGHTS_NAME,
        )
    bins = [n for n in names if _BIN_WEIGHTS.fullmatch(n)]
    if bins:
        return UnsupportedError(
            "pytorch .bin checkpoints are not supported; convert the model to safetensors first "
            "(e.g. save_pretrained(..., safe_serialization=True))",
            code="checkpoint-unsupported", path=path, expected=f"{SINGLE_NAME} or {INDEX_NAME}", actual=bins[0],
        )
    found = [n for n in names if n.endswith(".safetensors")]
    return NotFoundError(
        "no model checkpoint in this directory", code="not-a-checkpoint", path=path,
        expected=f"{SINGLE_NAME} or {INDEX_NAME}", actual=", ".join(found[:3]) or "neither",
    )


def _open_sharded(folder: Path, index_path: Path) -> Checkpoint:
    index = _read_index(index_path)
    weight_map: dict[str, str] = index["weight_map"]
    shards = [folder / name for name in sorted(set(weight_map.values()))]
    headers: dict[Path, Header] = {}
    seen: dict[str, Path] = {}
    for shard in shards:
        if not shard.is_file():
            first = next(k for k, v in weight_map.items() if v == shard.name)
            raise _invalid(f"the index names a shard that does not exist ({shard.name})", index_path,
                           key=first, expected=f"a file {shard.name}", actual="absent")
        header = headers[shard] = read_header(shard)
        for key in header.tensors:
            if key in seen:
                raise _invalid(f"tensor in two shards ({seen[key].name} and {shard.name})", shard, key=key,
                               expected=f"only in {weight_map.get(key)}", actual=f"in {seen[key].name} and {shard.name}")
            seen[key] = shard
            mapped = weight_map.get(key)
            if mapped is None:
                raise _invalid("tensor in a shard but not in the index's weight_map", shard, key=key,
                               expected=f"weight_map[{key!r}] = {shard.name!r}", actual="absent")
            if mapped != shard.name:
                raise _invalid("the index puts this tensor in another shard", shard, key=key,
                               expected=f"in {mapped}", actual=f"in {shard.name}")
    for key, name in weight_map.items():
        if key not in seen:
            raise _invalid("tensor in the index's weight_map but not in its shard", folder / name, key=key,
                           expected=f"{key!r} in {name}", actual="absent")
    return Checkpoint(folder, shards, index, headers)


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open a model checkpoint lazily: every header (and the index) read and checked, no data.

    Args:
        path: a directory holding ``model.safetensors``, or a sharded one holding
            ``model.safetensors.index.json`` (shards in the same directory), or that index
            file, or one ``.safetensors`` file.

    Raises:
        NotFoundError: ``file-not-found``; ``not-a-checkpoint`` (no model weights, or an adapter).
        UnsupportedError: ``checkpoint-unsupported`` (only ``pytorch_model*.bin`` weights).
        FormatError: ``checkpoint-invalid`` (the index is malformed, names a missing shard, or
            disagrees with the shards' keys: a key missing, in two shards, or in another shard);
            a shard's own defects with ``read_header``'s codes (``header-invalid``, ...).
    """
    path = Path(path)
    if not path.exists():
        raise NotFoundError("no such file or directory", path=path)
    if path.is_file() and path.name.endswith(".index.json"):
        if path.name != INDEX_NAME:
            raise UnsupportedError("only model.safetensors.index.json indexes are read", code="checkpoint-unsupported",
                                   path=path, expected=INDEX_NAME, actual=path.name)
        return _open_sharded(path.parent, path)
    if path.is_dir():
        single, index_path = path / SINGLE_NAME, path / INDEX_NAME
        if single.exists() and index_path.exists():
            index = _read_index(index_path)
            if set(index["weight_map"].values()) == {SINGLE_NAME}:  # an index of the one file: nothing ambiguous
                return _open_sharded(path, index_path)
            raise _invalid(f"both {SINGLE_NAME} and {INDEX_NAME}: which weights are meant is ambiguous; remove one",
                           path, expected="one of them", actual="both")
        if index_path.exists():
            return _open_sharded(path, index_path)
        if not single.exists():
            raise _diagnose_dir(path)
        path = single
        folder: Path | None = path.parent
    else:
        folder = None
        if path.suffix == ".bin":
            raise UnsupportedError("pytorch .bin checkpoints are not supported; convert the model to safetensors first",
                                   code="checkpoint-unsupported", path=path, expected=".safetensors", actual=".bin")
        if path.suffix != ".safetensors":
            raise NotFoundError("not a checkpoint file", code="not-a-checkpoint", path=path,
                                expected="a directory or a .safetensors file", actual=path.suffix or "no suffix")
    header = read_header(path)
    _check_not_adapter(header)
    return Checkpoint(folder or path, [path], None, {path: header})
