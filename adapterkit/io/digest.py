"""The content digest of an adapter (spec §5.5, format 1.1): what it hashes, how a writer
records it and how a reader checks it.

An adapter's digest is a SHA-256 over one *entry digest* per part: its config (as canonical
JSON) and each tensor (key, dtype, shape and raw little-endian bytes), in sorted key order.
The file records the entry digests too (``adapterkit.digests``), so a reader can name the
first part that differs instead of only saying that something does.  The value depends
only on the content: not on the form (directory or single file), not on the order of the
tensors in the file, not on how ``adapter_config.json`` is laid out.

The entry digests are independent of each other, so they are hashed on worker threads
(hashlib releases the GIL for all but tiny inputs): :class:`RegionHasher` hashes the tensors
of one region of bytes (a safetensors file's data region) while a reader is still filling it,
each as soon as its bytes are there; :class:`PartsHasher` hashes tensors held apart (a writer's
tensors, as it writes them).  Whichever thread finishes first, the result is the same dict of
entry digests, and everything that compares or combines them sorts by key.  How many threads:
:func:`hash_threads`, the one place that decides.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import FormatError, Problem
from ..threads import threads_for
from .jsontext import peft_key_order
from .version import digest_keeps_pattern_order

DIGEST_KEY = "adapterkit.digest"
DIGESTS_KEY = "adapterkit.digests"
CONFIG_ENTRY = "config"  # how a validator names the config when its entry digest differs
_PREFIX = "sha256:"
_HEX = 64  # hex characters of one SHA-256
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_DIGESTS = re.compile(r"(?:[0-9a-f]{64})+")
_TAG_ALL, _TAG_CONFIG, _TAG_TENSOR = b"adapterkit.digest/1", b"adapterkit.config/1", b"adapterkit.tensor/1"
# at most this many threads hash tensors side by side (hashlib releases the GIL): SHA-256 runs at
# ~1-2 GB/s per core, slower than reading from or writing to the page cache, so one thread cannot
# keep up with a reader or a writer; how many are used is hash_threads' choice
HASH_THREADS = 8
_BYTES_PER_THREAD = 4 * 1024 * 1024  # ~3 ms of SHA-256: less work per thread than that gains nothing
_RUN_BYTES = 1024 * 1024  # tensors hashed as one task until their bytes reach this (many tiny tensors: few tasks)


def _u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def _field(data: bytes) -> bytes:
    """A length-prefixed field: its byte count (u64, little-endian), then the bytes."""
    return _u64(len(data)) + data


def canonical_config(config: Any, version: str | None) -> bytes:
    """The canonical JSON of a parsed config in a file of format ``version`` ([R5.5-3]): no
    whitespace, non-ASCII escaped, members sorted at every level except, from format 1.2 on,
    those of ``rank_pattern``/``alpha_pattern``, which keep their stored order (the first
    matching key wins, so their order is content).  Files of 1.1 and before hash every object
    sorted, as 1.1 defined it, so their digests verify as they always did.  From 1.2 on it is
    the text a single-file writer stores as ``adapterkit.config`` ([R4.2-1])."""
    if digest_keeps_pattern_order(version):
        return json.dumps(peft_key_order(config), separators=(",", ":")).encode("ascii")
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode("ascii")


def config_digest(config: Any, version: str | None) -> bytes:
    """Entry digest of a parsed config (a JSON object) in a file of format ``version``:
    SHA-256(field(tag) field(canonical JSON))."""
    return hashlib.sha256(_field(_TAG_CONFIG) + _field(canonical_config(config, version))).digest()


def tensor_prefix(key: str, dtype: str, shape: tuple[int, ...] | list[int], nbytes: int) -> bytes:
    """What a tensor's entry digest hashes before its data: tag, key, dtype (safetensors name),
    rank, each dimension, and the byte count of the data."""
    head = _field(_TAG_TENSOR) + _field(key.encode("utf-8")) + _field(dtype.encode("ascii")) + _u64(len(shape))
    return head + b"".join(_u64(d) for d in shape) + _u64(nbytes)


def tensor_digest(key: str, dtype: str, shape: tuple[int, ...] | list[int], data: bytes | memoryview) -> bytes:
    """Entry digest of one tensor from its raw little-endian bytes ``data``."""
    h = hashlib.sha256(tensor_prefix(key, dtype, shape, len(data)))
    h.update(data)
    return h.digest()


def hash_threads(nbytes: int) -> int:
    """How many threads hash ``nbytes`` of tensor data, the caller's own included (it hashes
    once it has nothing else to do): the thread policy's count (``adapterkit.threads``: the
    cores this process may use, its cgroup quota and the machine's load, or ``--threads`` /
    ``ADAPTERKIT_THREADS``), at most :data:`HASH_THREADS`, and no more than one per ~4 MB of
    data (a thread that would hash less costs more to start than it saves).  At least 1.  Every
    hashing pool asks here."""
    return threads_for(nbytes, per_thread=_BYTES_PER_THREAD, cap=HASH_THREADS)


Part = tuple[str, str, Sequence[int], "bytes | memoryview"]  # key, dtype, shape, raw bytes
Entry = tuple[str, str, Sequence[int], int, int]  # key, dtype, shape, begin, end (byte offsets into a region)


def _hash_parts(run: list[Part]) -> list[tuple[str, bytes]]:
    return [(key, tensor_digest(key, dtype, shape, data)) for key, dtype, shape, data in run]


class _Stopped(Exception):
    """Raised in a worker whose hasher was closed before the bytes it waited for arrived."""


class _Pool:
    """Hashing tasks run by ``threads - 1`` worker threads and, once the caller asks for the
    results, by the caller's thread too: :meth:`results` takes back the tasks no worker has
    started (from the last one down) and runs them itself, so the caller's thread is one of the
    ``threads``, busy only once it has nothing else to do (with one thread, every task runs
    there).  :meth:`close` cancels the tasks not started and joins the workers (idempotent), so
    no thread outlives the hasher."""

    def __init__(self, threads: int) -> None:
        workers = threads - 1
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="adapterkit-digest") if workers > 0 else None
        self.tasks: list[tuple[Callable[..., list[tuple[str, bytes]]], tuple, Future | None]] = []

    def submit(self, fn: Callable[..., list[tuple[str, bytes]]], *args: Any) -> None:
        self.tasks.append((fn, args, self.pool.submit(fn, *args) if self.pool is not None else None))

    def results(self) -> dict[str, bytes]:
        """Every task's (key, entry digest) pairs; an error a task raised (in a worker or here) is raised here."""
        out: dict[str, bytes] = {}
        for fn, args, future in reversed(self.tasks):  # the workers take tasks from the first one up
            out.update(fn(*args) if future is None or future.cancel() else future.result())
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


class PartsHasher:
    """Entry digests of tensors handed in one by one (:meth:`add`), hashed on worker threads
    while the caller goes on (and by the caller's thread in :meth:`entries`); consecutive small
    tensors are hashed as one task.  Use it as a context manager: leaving the block, by an error
    too, cancels what has not started and joins the threads."""

    def __init__(self, nbytes: int) -> None:
        """``nbytes``: about how many bytes will be added (it decides how many threads hash)."""
        self._pool = _Pool(hash_threads(nbytes))
        self._run: list[Part] = []
        self._run_bytes = 0

    def __enter__(self) -> PartsHasher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, key: str, dtype: str, shape: tuple[int, ...] | list[int], data: bytes | memoryview) -> None:
        """Hash one tensor's raw little-endian bytes ``data`` (kept unchanged until :meth:`entries`)."""
        self._run.append((key, dtype, shape, data))
        self._run_bytes += len(data)
        if self._run_bytes >= _RUN_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._run:
            self._pool.submit(_hash_parts, self._run)
            self._run, self._run_bytes = [], 0

    def entries(self) -> dict[str, bytes]:
        """The entry digest of every tensor added, by key (waits for the workers)."""
        self._flush()
        return self._pool.results()

    def close(self) -> None:
        self._pool.close()


def tensor_entries(parts: Iterable[Part]) -> dict[str, bytes]:
    """Entry digests of many tensors, given as (key, dtype, shape, data), hashed on
    :func:`hash_threads` threads."""
    parts = list(parts)
    with PartsHasher(sum(len(p[3]) for p in parts)) as hasher:
        for part in parts:
            hasher.add(*part)
        return hasher.entries()


class RegionHasher:
    """Entry digests of the tensors stored in one region of bytes (the data region of a
    safetensors file), hashed on worker threads while the region is being filled.

    The tensors, given as (key, dtype, shape, begin, end) with byte offsets into the region, are
    split into tasks in file order on entering the block: a run of consecutive small tensors, or
    one large tensor.  A worker hashes its tensors' bytes as far as they are there and waits for
    the rest; the filler (a reader, in the caller's thread) calls :meth:`filled` each time the
    region holds more bytes from its start.  Concurrency contract: the filler writes bytes
    ``[0, n)`` before it calls ``filled(region, n)`` and never changes them afterwards; a worker
    reads only bytes below the ``n`` it last saw (under the lock), so nothing is hashed before it
    is written; the filler never waits for a worker, so the workers always make progress.
    :meth:`entries`, called once the region is full, hashes in the caller's thread too (the
    tasks no worker has started).  Leaving the block, normally or by an error, wakes every
    waiting worker to give up, cancels the tasks not started and joins the threads: no thread
    outlives the block.
    """

    def __init__(self, entries: Iterable[Entry]) -> None:
        self._entries = sorted(entries, key=lambda e: (e[3], e[4]))
        self._size = max((e[4] for e in self._entries), default=0)
        self._cond = threading.Condition()
        self._region: memoryview | None = None
        self._filled = 0
        self._stopped = False
        self._pool: _Pool | None = None

    def __enter__(self) -> RegionHasher:
        self._pool = _Pool(hash_threads(self._size))
        run: list[Entry] = []
        start = 0
        for entry in self._entries:
            run.append(entry)
            if entry[4] - start >= _RUN_BYTES:
                self._pool.submit(self._hash_run, run)
                run, start = [], entry[4]
        if run:
            self._pool.submit(self._hash_run, run)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._pool is not None:
            self._pool.close()
        self._region = None

    def filled(self, region: bytes | bytearray | memoryview, n: int) -> None:
        """The first ``n`` bytes of ``region`` (the same object at every call) are in place."""
        with self._cond:
            if self._region is None:
                self._region = memoryview(region).cast("B")
            self._filled = n
            self._cond.notify_all()

    def _available(self, pos: int) -> tuple[memoryview, int]:
        """The region and how many bytes of it are filled, once that is more than ``pos``."""
        with self._cond:
            while self._filled <= pos:
                if self._stopped:
                    raise _Stopped
                self._cond.wait()
            assert self._region is not None
            return self._region, self._filled

    def _hash_run(self, run: list[Entry]) -> list[tuple[str, bytes]]:
        out = []
        for key, dtype, shape, begin, end in run:
            h = hashlib.sha256(tensor_prefix(key, dtype, shape, end - begin))
            pos = begin
            while pos < end:
                region, filled = self._available(pos)
                stop = min(end, filled)
                h.update(region[pos:stop])
                pos = stop
            out.append((key, h.digest()))
        return out

    def entries(self) -> dict[str, bytes]:
        """The entry digest of every tensor, by key, once the region is filled (the caller's
        thread hashes what no worker has started); an error a worker met is raised here."""
        if self._pool is None or self._filled < self._size:
            raise RuntimeError("RegionHasher.entries() outside its with-block or before the region was filled")
        return self._pool.results()


def region_entries(region: bytes | bytearray | memoryview, entries: Iterable[Entry]) -> dict[str, bytes]:
    """Entry digests of many tensors whose raw bytes lie in ``region`` (a safetensors file's data
    region, or any bytes-like object), given as (key, dtype, shape, begin, end) with byte offsets
    into it, hashed on :func:`hash_threads` threads; needs no torch.  The same digests as
    :func:`tensor_digest` of each tensor's bytes ``region[begin:end]``.

    Raises:
        ValueError: an entry whose byte range is not inside the region.
    """
    view = memoryview(region).cast("B")
    entries = list(entries)
    for key, _, _, begin, end in entries:
        if not 0 <= begin <= end <= len(view):
            raise ValueError(f"{key}: bytes [{begin}, {end}) are not inside the region of {len(view)} bytes")
    with RegionHasher(entries) as hasher:
        hasher.filled(view, len(view))
        return hasher.entries()


def tensor_entries_streamed(parts: Iterable[tuple[str, str, tuple[int, ...], bytes | memoryview]], nbytes: int) -> dict[str, bytes]:
    """Entry digests of tensors given one at a time as (key, dtype, shape, data), ``nbytes`` in
    all, each hashed on :func:`hash_threads` threads as soon as it arrives, while the next is
    produced (read); at most two per thread wait, so a caller streaming a file holds a few
    tensors, never all of them."""
    threads = hash_threads(nbytes)
    if threads == 1:
        return {p[0]: tensor_digest(*p) for p in parts}
    out: dict[str, bytes] = {}
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="adapterkit-digest") as pool:
        for part in parts:
            pending.append((part[0], pool.submit(tensor_digest, *part)))
            while len(pending) > 2 * threads:
                key, done = pending.popleft()
                out[key] = done.result()
        for key, done in pending:
            out[key] = done.result()
    return out


def combine(entries: Iterable[bytes]) -> str:
    """``adapterkit.digest`` from the entry digests (config first, then tensors in sorted key
    order): "sha256:" + hex SHA-256(field(tag), count of entries (u64), the entries)."""
    entries = list(entries)
    return _PREFIX + hashlib.sha256(_field(_TAG_ALL) + _u64(len(entries)) + b"".join(entries)).hexdigest()


def digest_metadata(config_entry: bytes, tensor_entries: Mapping[str, bytes]) -> dict[str, str]:
    """The two metadata members a 1.1 writer adds: ``adapterkit.digest`` and ``adapterkit.digests``
    (the entry digests as one lowercase hex string, config first, tensors in sorted key order)."""
    entries = [config_entry] + [tensor_entries[k] for k in sorted(tensor_entries)]
    return {DIGEST_KEY: combine(entries), DIGESTS_KEY: b"".join(entries).hex()}


def placeholder_metadata(n_tensors: int) -> dict[str, str]:
    """Metadata of the same length as :func:`digest_metadata` gives for ``n_tensors`` tensors,
    so a writer can lay out the header before the data is hashed and fill it in afterwards."""
    return {DIGEST_KEY: _PREFIX + "0" * _HEX, DIGESTS_KEY: "0" * (_HEX * (n_tensors + 1))}


def recorded(metadata: Mapping[str, str], path: Path | None) -> list[bytes] | None:
    """The entry digests a file records (config first), or None when it records none.

    Raises:
        FormatError: ``metadata-invalid`` when either key is malformed, one is present without
            the other, or the entry digests do not combine to ``adapterkit.digest`` ([R5.5-4]).
    """
    digest, digests = metadata.get(DIGEST_KEY), metadata.get(DIGESTS_KEY)
    if digest is None and digests is None:
        return None
    for key, value, pattern, want in (
        (DIGEST_KEY, digest, _DIGEST, "sha256: and 64 lowercase hex digits"),
        (DIGESTS_KEY, digests, _DIGESTS, "a non-empty run of 64-hex-digit entry digests"),
    ):
        if value is None or not pattern.fullmatch(value):
            raise FormatError(
                "malformed content digest" if value is not None else "content digest incomplete",
                code="metadata-invalid", path=path, key=f"__metadata__.{key}", expected=want,
                actual="absent" if value is None else (value[:24] + "..." if len(value) > 24 else value),
            )
    assert digests is not None
    entries = [bytes.fromhex(digests[i : i + _HEX]) for i in range(0, len(digests), _HEX)]
    if combine(entries) != digest:
        raise FormatError(
            "the entry digests do not combine to the recorded digest", code="metadata-invalid", path=path,
            key=f"__metadata__.{DIGESTS_KEY}", expected=digest, actual=combine(entries),
        )
    return entries


def mismatch(
    entries: list[bytes], config_entry: bytes, tensor_entries: Mapping[str, bytes], path: str | None,
) -> Problem | None:
    """The first difference between the recorded ``entries`` and the recomputed ones, as a
    ``digest-mismatch`` problem naming ``config`` or a tensor key (sorted order); None if equal.

    A recomputed tensor entry counts as differing when it is not among the recorded ones (an
    entry digest covers the key, so this names changed and added tensors alike); when every
    recomputed entry is recorded but the counts differ, a recorded tensor is missing; when the
    entries are all there but in another order, the first key recorded at another place is
    named (the record is not this content's: [R5.5-1] fixes code-point order)."""
    if config_entry != entries[0]:
        return Problem("digest-mismatch", "the config differs from the one the content digest records", path=path,
                       key=CONFIG_ENTRY, expected=f"entry {entries[0].hex()[:16]}...", actual=f"entry {config_entry.hex()[:16]}...")
    known = set(entries[1:])
    aligned = len(entries) - 1 == len(tensor_entries)
    for i, key in enumerate(sorted(tensor_entries)):
        if tensor_entries[key] not in known:
            want = f"entry {entries[1 + i].hex()[:16]}..." if aligned else "an entry recorded in adapterkit.digests"
            return Problem("digest-mismatch", "the tensor differs from the one the content digest records (bytes, dtype or shape)",
                           path=path, key=key, expected=want, actual=f"entry {tensor_entries[key].hex()[:16]}...")
    if len(entries) - 1 != len(tensor_entries):
        return Problem("digest-mismatch", "tensors the content digest records are missing", path=path,
                       expected=f"{len(entries) - 1} tensors", actual=f"{len(tensor_entries)} tensors")
    for i, key in enumerate(sorted(tensor_entries)):  # every entry recorded, but not in code-point order of the keys
        if tensor_entries[key] != entries[1 + i]:
            return Problem("digest-mismatch", "the content digest records this tensor's entry out of code-point order of the keys",
                           path=path, key=key, expected=f"entry {tensor_entries[key].hex()[:16]}... at place {1 + i}",
                           actual=f"entry {entries[1 + i].hex()[:16]}...")
    return None
