"""Streaming a checkpoint out tensor by tensor, atomically.

Every shard's header is computed up front from the plan (key -> dtype name and shape), so
each tensor can go straight to its byte range in its shard with a positioned write: the
writer holds no tensor data of its own.  Everything is written into a staging folder beside
the output (``.<name>.tmp-*``) and renamed into place by :meth:`CheckpointWriter.commit`, so
the output appears whole or not at all; a failure (or leaving the ``with`` block without
committing) removes the staging folder.  A process killed mid-write leaves at worst that
folder, never a partial output.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from ..dtypes import DTYPE_NAMES, DTYPES
from ..errors import FormatError, WriteError
from ..io.atomic import discard, install, staging_folder
from ..io.forms import resolve_form
from ..io.outputs import check_output, checkpoint_inputs
from ..io.safetensors_file import TensorInfo, tensor_bytes
from .layout import INDEX_NAME, SINGLE_NAME, ShardLayout, index_json, nbytes, shard_layout, shard_names, split_greedy
from .reader import Checkpoint

Buffer = bytes | bytearray | memoryview


def _mismatch(message: str, out: Path, key: str | None = None, **kw) -> WriteError:
    return WriteError(message, code="plan-mismatch", path=out, key=key, **kw)


def _check_plan(plan: Mapping[str, tuple[str, tuple[int, ...]]], out: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    checked = {}
    for key, entry in plan.items():
        try:
            dtype, shape = entry
            shape = tuple(shape)
        except (TypeError, ValueError):
            raise _mismatch("a plan entry must be (dtype name, shape)", out, key, actual=entry) from None
        if dtype not in DTYPES:
            raise _mismatch("unknown dtype in the plan", out, key, expected="one of " + ", ".join(DTYPES), actual=dtype)
        if not all(type(d) is int and d >= 0 for d in shape):
            raise _mismatch("a shape must be non-negative integers", out, key, actual=shape)
        checked[key] = (dtype, shape)
    return checked


def _check_target(out: Path, base: Checkpoint, overwrite: bool) -> None:
    """Refuse an output that is, lies inside, or holds the base (its folder or one of its shards;
    ``adapterkit.io.outputs``), and an existing output unless ``overwrite``."""
    check_output(out, checkpoint_inputs(base, "base checkpoint"))
    _check_absent(out, overwrite)


def _check_absent(out: Path, overwrite: bool) -> None:
    if os.path.lexists(out) and not overwrite:
        kind = "directory" if out.is_dir() else "file"
        raise WriteError(
            f"output exists ({kind}); pass overwrite=True (--overwrite) to replace it whole", code="output-exists",
            path=out, expected="a path that does not exist", actual=f"existing {kind}",
        )


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Shard:
    """One output shard being written: its layout, its file (open while tensors are due)."""

    def __init__(self, layout: ShardLayout, path: Path) -> None:
        self.layout = layout
        self.path = path
        self.fd: int | None = None
        self.due = len(layout.tensors)
        self.done = False

    def open(self) -> int:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            _pwrite_all(self.fd, memoryview(self.layout.header), 0)
            os.ftruncate(self.fd, self.layout.size)
        return self.fd

    def close(self, durable: bool) -> None:
        fd = self.open()  # a shard with no tensors is written here
        self.fd, self.done = None, True
        try:
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)


# Whether copies try os.copy_file_range (tests switch it off to cover the buffered copy).  A
# writer stops trying after the first refusal that says the system cannot (old kernels, copies
# across file systems, file systems without it).
USE_COPY_FILE_RANGE = hasattr(os, "copy_file_range")
_NO_COPY_FILE_RANGE = {errno.ENOSYS, errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}
COPY_BUFFER = 8 << 20  # bytes of the one buffer copies go through without copy_file_range


def _sync_file_range() -> Any:
    """libc's ``sync_file_range`` (Linux), or None."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _sync_file_range() if sys.platform.startswith("linux") else None
_SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing ``nbytes`` at ``offset`` to disk now, without waiting, so that a durable
    writer's fsync at the end of each shard finds little left to do (it waits for the disk
    while the next tensors are computed, instead of after).  A hint: failures are ignored."""
    if _SYNC_FILE_RANGE is not None and nbytes:
        _SYNC_FILE_RANGE(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


class CheckpointWriter:
    """Write a checkpoint shaped after ``base``, one tensor at a time, then install it whole.

    Args:
        out: the output: a directory (transformers' layout: shards, index, the base's extra
            files), or a ``.safetensors`` file when the output is one shard (the form follows
            the name, as in ``adapterkit.save``; ``form`` may state it).
        base: the checkpoint the output is derived from (its sharding, index metadata and
            extra files are carried over; it is never written to).
        plan: output key -> (safetensors dtype name, shape), in the order :meth:`write` will be
            called.  Without ``max_shard_size`` and with a sharded base its keys must be the
            base's keys (each goes to the shard of the same name as in the base).
        max_shard_size: reshard: greedy shards of at most this many bytes in plan order, named
            and split as transformers does (``model-00001-of-0000N.safetensors``; one shard is
            ``model.safetensors`` without an index).
        metadata: the ``__metadata__`` of every shard (``format: pt`` is always there).
        placement: keys of the plan that the base lacks -> the base key whose shard each joins
            (with the base's sharding; e.g. an untied ``lm_head.weight`` beside its embedding).
        dropped: keys of the base the output leaves out on purpose (with the base's sharding; the
            packed members of a quantized weight written dense).
        overwrite: replace an existing ``out`` whole (no file from before remains).
        durable: fsync every file and folder before the rename (``False``: still atomic for
            other processes, not across a power loss).

    Raises (here and from every method; on any error the staging folder is removed):
        WriteError: ``overwrite-input`` (``out`` is, is inside, or holds the base), ``output-exists``,
            ``form-mismatch``, ``plan-mismatch`` (a bad plan, or a write that disagrees with it),
            ``write-failed`` (the disk refused: no space, no permission, ...).
    """

    def __init__(
        self, out: str | Path, base: Checkpoint, *, plan: Mapping[str, tuple[str, tuple[int, ...]]],
        max_shard_size: int | None = None, metadata: Mapping[str, str] | None = None,
        overwrite: bool = False, durable: bool = True, form: str | None = None,
        placement: Mapping[str, str] | None = None, dropped: Iterable[str] = (),
    ) -> None:
        out = Path(out)
        self.out, self.base, self.durable, self.overwrite = out, base, durable, overwrite
        self._closed = True  # until the staging folder exists
        self.form = form = resolve_form(out, form)
        self.plan = _check_plan(plan, out)
        meta = dict(metadata or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise _mismatch("metadata must map strings to strings", out, "__metadata__")
        if meta.setdefault("format", "pt") != "pt":
            raise _mismatch("a checkpoint's __metadata__ format must be 'pt'", out, "__metadata__.format", expected="pt", actual=meta["format"])
        self._placement = dict(placement or {})
        self._dropped = frozenset(dropped)
        groups = self._assign(max_shard_size)
        # an index beside several shards, or beside the base's one indexed shard when its sharding
        # is kept (model-00001-of-00001.safetensors is only found through its index)
        self._indexed = len(groups) > 1 or (max_shard_size is None and base.index is not None)
        if form == "file" and len(groups) != 1:
            raise WriteError("a .safetensors output holds one shard; this plan needs several (name a directory)",
                             code="form-mismatch", path=out, expected="1 shard", actual=f"{len(groups)} shards")
        _check_target(out, base, overwrite)
        self._layouts = [shard_layout(name, {k: self.plan[k] for k in keys}, meta) for name, keys in groups.items()]
        self._create_staging()
        self._closed = False
        root = self._staging
        self._shards = [_Shard(lay, root if form == "file" else root / lay.name) for lay in self._layouts]
        self._shard_of = {key: shard for shard in self._shards for key in shard.layout.tensors}
        self._order = list(self.plan)
        self._next = 0
        self._buffer: memoryview | None = None
        self._copy_file_range = USE_COPY_FILE_RANGE

    # -- setup ---------------------------------------------------------------------------------

    def _assign(self, max_shard_size: int | None) -> dict[str, list[str]]:
        """Output shard name -> its keys (in plan order)."""
        if max_shard_size is not None:
            if type(max_shard_size) is not int or max_shard_size <= 0:
                raise _mismatch("max_shard_size must be a positive number of bytes", self.out, actual=max_shard_size)
            sizes = [(k, nbytes(*v)) for k, v in self.plan.items()]
            groups = split_greedy(sizes, max_shard_size)
            names = shard_names(len(groups))
        elif self.base.index is not None:
            placed = {k: v for k, v in self._placement.items() if k not in self.base and v in self.base}
            missing = [k for k in self.base.keys() if k not in self.plan and k not in self._dropped]
            extra = [k for k in self.plan if k not in self.base and k not in placed]
            if missing or extra:
                key = (extra or missing)[0]
                raise _mismatch(
                    "with the base's sharding the plan must hold exactly the base's keys (pass max_shard_size to reshard)",
                    self.out, key, expected="the base's keys", actual=f"{len(extra)} extra, {len(missing)} missing",
                )
            names = [s.name for s in self.base.shards]
            by_name: dict[str, list[str]] = {n: [] for n in names}
            for key in self.plan:
                by_name[self.base.shard_of(placed.get(key, key)).name].append(key)
            return by_name
        else:
            names, groups = [SINGLE_NAME], [list(self.plan)]
        if self.form == "file" and len(names) == 1:
            names = [self.out.name]
        return dict(zip(names, groups))

    def _create_staging(self) -> None:
        self._staging = staging_folder(self.out)  # .<name>.tmp-*/<name>, built here, then renamed
        # an abandoned writer (never committed or aborted) leaves nothing behind once collected
        self._finalizer = weakref.finalize(self, discard, self._staging.parent)
        if self.form == "dir":
            try:
                self._staging.mkdir()
            except OSError as exc:
                self.abort()
                raise WriteError(f"cannot create output: {exc.strerror}", path=self.out) from exc

    # -- writing -------------------------------------------------------------------------------

    def write(self, key: str, data: torch.Tensor | Buffer) -> None:
        """Write the next tensor of the plan: a tensor (its dtype and shape are checked) or its
        raw little-endian bytes (their count is checked), e.g. ``Checkpoint.read_bytes``."""
        self._guarded(key, self._write, key, data)

    def write_chunks(self, key: str, chunks: Iterable[Buffer]) -> None:
        """Write the next tensor of the plan as consecutive pieces of its raw little-endian bytes
        (e.g. blocks of rows computed one at a time); each piece is written as it comes, and the
        pieces must add up to the tensor's byte count."""
        self._guarded(key, self._write_chunks, key, chunks)

    def copy_from(self, key: str, source: Checkpoint, source_key: str | None = None) -> None:
        """Write the next tensor of the plan as a byte-for-byte copy of ``source_key`` (default
        ``key``) of ``source``: kernel to kernel with ``os.copy_file_range`` where the system has
        it (no buffer in this process), else through one small reused buffer.  The byte counts
        must agree.

        Raises (besides the writer's own): ``NotFoundError`` (``key-not-found``) and
        ``FormatError`` (``truncated-file``, or the source cannot be read) from the source.
        """
        self._guarded(key, self._copy_from, key, source, key if source_key is None else source_key)

    def _guarded(self, key: str, fn, *args) -> None:
        if self._closed:
            raise _mismatch("the writer is closed (committed, aborted or failed)", self.out, key)
        try:
            fn(*args)
        except OSError as exc:
            self.abort()
            raise WriteError(f"cannot write output: {exc.strerror}", path=self.out, key=key) from exc
        except BaseException:  # a plan mismatch, or an interrupt: nothing half-written is kept
            self.abort()
            raise

    def _begin(self, key: str) -> tuple[_Shard, TensorInfo]:
        """The shard and byte range of ``key``, which must be the next tensor of the plan."""
        if self._next >= len(self._order):
            raise _mismatch("every tensor of the plan is written already", self.out, key, expected="commit()", actual=f"write({key!r})")
        expected = self._order[self._next]
        if key != expected:
            raise _mismatch("tensors must be written in plan order", self.out, key, expected=expected, actual=key)
        shard = self._shard_of[key]
        return shard, shard.layout.tensors[key]

    def _end(self, shard: _Shard) -> None:
        self._next += 1
        shard.due -= 1
        if shard.due == 0:
            shard.close(self.durable)

    def _write(self, key: str, data: torch.Tensor | Buffer) -> None:
        shard, info = self._begin(key)
        dtype, shape = self.plan[key]
        if isinstance(data, torch.Tensor):
            actual = DTYPE_NAMES.get(data.dtype, str(data.dtype))
            if actual != dtype:
                raise _mismatch("dtype differs from the plan", self.out, key, expected=dtype, actual=actual)
            if tuple(data.shape) != shape:
                raise _mismatch("shape differs from the plan", self.out, key, expected=shape, actual=tuple(data.shape))
            view = tensor_bytes(data)
        else:
            view = memoryview(data).cast("B")
        if view.nbytes != info.nbytes:
            raise _mismatch("byte count differs from the plan", self.out, key, expected=f"{info.nbytes} bytes", actual=f"{view.nbytes} bytes")
        at = shard.layout.data_start + info.begin
        _pwrite_all(shard.open(), view, at)
        if self.durable:
            _start_writeback(shard.open(), at, view.nbytes)
        self._end(shard)

    def _write_chunks(self, key: str, chunks: Iterable[Buffer]) -> None:
        shard, info = self._begin(key)
        fd, at, done = shard.open(), shard.layout.data_start + info.begin, 0
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            if done + view.nbytes > info.nbytes:
                raise _mismatch("byte count differs from the plan", self.out, key, expected=f"{info.nbytes} bytes", actual=f"more than {done + view.nbytes - 1} bytes")
            _pwrite_all(fd, view, at + done)
            if self.durable:
                _start_writeback(fd, at + done, view.nbytes)
            done += view.nbytes
        if done != info.nbytes:
            raise _mismatch("byte count differs from the plan", self.out, key, expected=f"{info.nbytes} bytes", actual=f"{done} bytes")
        self._end(shard)

    def _copy_from(self, key: str, source: Checkpoint, source_key: str) -> None:
        shard, info = self._begin(key)
        path, offset, nbytes = source.locate(source_key)
        if nbytes != info.nbytes:
            raise _mismatch("byte count differs from the plan", self.out, key, expected=f"{info.nbytes} bytes", actual=f"{nbytes} bytes")
        try:
            src = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise FormatError(f"cannot read tensor: {exc.strerror}", path=path, key=source_key) from exc
        at = shard.layout.data_start + info.begin
        try:
            got = self._copy_range(src, shard.open(), offset, at, nbytes, path, source_key)
        finally:
            os.close(src)
        if self.durable:
            _start_writeback(shard.open(), at, got)
        if got != nbytes:
            raise FormatError("file changed while reading", code="truncated-file", path=path, key=source_key,
                              expected=f"{nbytes} bytes", actual=f"{got} bytes")
        self._end(shard)

    def _copy_range(self, src: int, dst: int, src_at: int, dst_at: int, nbytes: int, path: Path, key: str) -> int:
        """Copy ``nbytes`` from ``src_at`` in ``src`` to ``dst_at`` in ``dst``; the count copied
        (short only when the source ends early)."""
        done = 0
        while done < nbytes:
            if self._copy_file_range:
                try:
                    n = os.copy_file_range(src, dst, nbytes - done, src_at + done, dst_at + done)
                except OSError as exc:
                    if exc.errno not in _NO_COPY_FILE_RANGE:
                        raise
                    self._copy_file_range = False  # this system cannot: buffered copies from now on
                    continue
            else:
                buf = self._copy_buffer()
                try:
                    n = os.preadv(src, [buf[: nbytes - done]], src_at + done)
                except OSError as exc:
                    raise FormatError(f"cannot read tensor: {exc.strerror}", path=path, key=key) from exc
                _pwrite_all(dst, buf[:n], dst_at + done)
            if n == 0:
                break
            done += n
        return done

    def _copy_buffer(self) -> memoryview:
        if self._buffer is None:
            self._buffer = memoryview(bytearray(COPY_BUFFER))
        return self._buffer

    # -- finishing -----------------------------------------------------------------------------

    def commit(self, files: Mapping[str, bytes] | None = None) -> Path:
        """Finish the shards, write the index, copy the base's extra files, write ``files``
        (relative path -> bytes, e.g. a README that replaces the base's; directory outputs
        only), and rename the staging folder into place.  Returns the output path."""
        if self._closed:
            raise _mismatch("the writer is closed (committed, aborted or failed)", self.out)
        if files and self.form != "dir":
            self.abort()
            raise _mismatch("extra files need a directory output", self.out, expected="a directory", actual=self.out.name)
        try:
            self._commit(dict(files or {}))
        except OSError as exc:
            self.abort()
            raise WriteError(f"cannot write output: {exc.strerror}", path=self.out) from exc
        except BaseException:
            self.abort()
            raise
        return self.out

    def _commit(self, files: dict[str, bytes]) -> None:
        if self._next < len(self._order):
            missing = self._order[self._next]
            raise _mismatch("not every tensor of the plan was written", self.out, missing,
                            expected=f"{len(self._order)} tensors", actual=f"{self._next} written")
        for shard in self._shards:
            if not shard.done:  # only a shard without tensors: write() closes the others
                shard.close(self.durable)
        staging = self._staging
        if self.form == "dir":
            if self._indexed:
                self._write_file(staging / INDEX_NAME, index_json(self._weight_map(), self._index_metadata()))
            self._copy_extra_files()
            for name, data in files.items():
                dest = staging / name
                if dest.resolve().parent != staging.resolve() and not dest.resolve().is_relative_to(staging.resolve()):
                    raise _mismatch("an extra file must lie inside the output", self.out, name)
                dest.parent.mkdir(parents=True, exist_ok=True)
                self._write_file(dest, data)
            if self.durable:
                for root, _dirs, _files in os.walk(staging.parent):
                    _fsync_path(Path(root))
        os.chmod(staging, 0o755 if self.form == "dir" else 0o644)
        _check_absent(self.out, self.overwrite)
        install(staging, self.out, overwrite=self.overwrite)  # refuses an output another writer installed meanwhile
        self._closed = True
        self._finalizer()  # the emptied staging folder (and, with overwrite, the old output) goes
        if self.durable:
            _fsync_path(self.out.parent)

    def _weight_map(self) -> dict[str, str]:
        return {key: shard.layout.name for key, shard in sorted(self._shard_of.items())}

    def _index_metadata(self) -> dict[str, object]:
        """The base index's metadata with ``total_size`` (and ``total_parameters``, which
        transformers 5 writes) recomputed for the output."""
        meta = dict((self.base.index or {}).get("metadata") or {})
        if self.base.index is None:
            meta["total_parameters"] = 0
        if "total_parameters" in meta:
            meta["total_parameters"] = sum(i.numel for lay in self._layouts for i in lay.tensors.values())
        meta["total_size"] = sum(i.nbytes for lay in self._layouts for i in lay.tensors.values())
        return meta

    def _write_file(self, path: Path, data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            if self.durable:
                os.fsync(f.fileno())

    def _copy_extra_files(self) -> None:
        base_dir = self.base.path
        for src in self.base.extra_files():
            dest = self._staging / src.relative_to(base_dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
            os.chmod(dest, 0o644)
            if self.durable:
                _fsync_path(dest)

    def abort(self) -> None:
        """Discard everything written (idempotent; committing afterwards is refused)."""
        self._closed = True
        for shard in getattr(self, "_shards", ()):
            if shard.fd is not None:
                fd, shard.fd = shard.fd, None
                try:
                    os.close(fd)
                except OSError:
                    pass
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()  # removes the staging folder, once

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        """Leaving the block without :meth:`commit` (by an exception or not) discards the output."""
        if not self._closed:
            self.abort()
