"""The content digest of an adapter (spec §5.5, format 1.1): what it hashes, how a writer
records it and how a reader checks it.

An adapter's digest is a SHA-256 over one *entry digest* per part: its config (as canonical
JSON) and each tensor (key, dtype, shape and raw little-endian bytes), in sorted key order.
The file records the entry digests too (``adapterkit.digests``), so a reader can name the
first part that differs instead of only saying that something does.  The value depends
only on the content: not on the form (directory or single file), not on the order of the
tensors in the file, not on how ``adapter_config.json`` is laid out.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import FormatError, Problem
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
# threads that hash tensors side by side (hashlib releases the GIL): SHA-256 runs at ~1-2 GB/s per
# core, slower than copying into the page cache, so one thread cannot keep up with a writer
HASH_THREADS = max(1, min(4, os.cpu_count() or 1))


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


def tensor_entries(parts: Iterable[tuple[str, str, tuple[int, ...], bytes | memoryview]]) -> dict[str, bytes]:
    """Entry digests of many tensors, given as (key, dtype, shape, data), hashed on
    ``HASH_THREADS`` threads."""
    parts = list(parts)
    if len(parts) < 2 or HASH_THREADS == 1:
        return {p[0]: tensor_digest(*p) for p in parts}
    with ThreadPoolExecutor(max_workers=HASH_THREADS, thread_name_prefix="adapterkit-digest") as pool:
        return dict(zip((p[0] for p in parts), pool.map(lambda p: tensor_digest(*p), parts)))


def tensor_entries_streamed(parts: Iterable[tuple[str, str, tuple[int, ...], bytes | memoryview]]) -> dict[str, bytes]:
    """Entry digests of tensors given one at a time as (key, dtype, shape, data), each hashed on
    ``HASH_THREADS`` threads as soon as it arrives, while the next is produced (read); at most
    two per thread wait, so a caller streaming a file holds a few tensors, never all of them."""
    if HASH_THREADS == 1:
        return {p[0]: tensor_digest(*p) for p in parts}
    out: dict[str, bytes] = {}
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=HASH_THREADS, thread_name_prefix="adapterkit-digest") as pool:
        for part in parts:
            pending.append((part[0], pool.submit(tensor_digest, *part)))
            while len(pending) > 2 * HASH_THREADS:
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
