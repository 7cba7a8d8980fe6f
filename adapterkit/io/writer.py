"""Writing adapters: the directory form (PEFT's layout) and the single-file form.

Both are deterministic (same adapter -> same bytes, whatever the tensor order) and
atomic: the output is built beside its target and renamed into place, so it appears
whole or not at all.  An existing output is refused unless ``overwrite``, which
replaces it whole; the file or folder an adapter was read from is never replaced.

Format 1.1 files carry a content digest (spec §5.5, ``io/digest.py``).  It sits in the header,
before the data it hashes, so the header is laid out with a placeholder of the same length,
each tensor is hashed on worker threads while it is written, and the header is written
again at the end with the digest filled in: hashing overlaps writing (and a durable save's
fsync of the data, which starts before the last hashes are waited for) instead of adding a
second pass over the data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch

from ..adapter import FORMAT_VERSION, Adapter
from ..dtypes import DTYPE_NAMES
from ..errors import AdapterkitError, WriteError
from . import safetensors_file
from .atomic import discard, install, staging_folder, write_atomic
from .checks import raise_first_error, structural_problems
from .digest import PartsHasher, config_digest, digest_metadata, placeholder_metadata
from .forms import resolve_form
from .jsontext import peft_key_order
from .outputs import adapter_inputs, check_output
from .reader import CONFIG_KEY, CONFIG_NAME, VERSION_KEY, WEIGHTS_NAME
from .recipe import RECIPE_KEY
from .recipe import encode as encode_recipe
from .safetensors_file import encode, encode_header

UNDIGESTED_VERSION = "1.0"  # what ``save(digest=False)`` writes: the last version without a digest


def config_json(adapter: Adapter) -> str:
    """``adapter_config.json`` text exactly as PEFT 0.22.0 writes it: indent 2, every object's
    keys sorted except those of ``rank_pattern``/``alpha_pattern``, whose order decides which key
    applies ([R4.1-1])."""
    return json.dumps(peft_key_order(adapter.config.to_dict()), indent=2)


def _check_target(path: Path, adapter: Adapter, overwrite: bool) -> None:
    """Refuse a target that is, holds or lies inside what the adapter was read or made from
    (``adapterkit.io.outputs``), or that exists without ``overwrite``."""
    check_output(path, adapter_inputs(adapter, "input adapter"))
    if os.path.lexists(path):
        if not overwrite:
            kind = "directory" if path.is_dir() else "file"
            raise WriteError(f"output exists ({kind}); pass overwrite=True (--overwrite) to replace it whole", code="output-exists", path=path, expected="a path that does not exist", actual=f"existing {kind}")


class DigestingEncoder:
    """The bytes of a safetensors file whose metadata records the content digest (spec §5.5):
    iterate for the header (with a placeholder digest) and the data; then :meth:`patch` hashes
    what is left and gives the final header to write at 0.  The tensors are hashed on the
    hashing threads (``digest.PartsHasher``): with ``hash_early``, each as it is yielded, so the
    hashing overlaps the writing; without, once the data is written, while a durable save's fsync
    of it runs (``write_atomic`` starts the fsync before it calls ``patch``), so that the hashing
    does not take CPU from the writing and waits for the disk instead of adding to it (a tensor
    whose bytes had to be copied to be written is hashed early anyway, so that the copy is not
    held to the end).  :meth:`close` stops the hashing threads (the writer calls it whatever
    happened; ``patch`` does too)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], config: dict, *, hash_early: bool = True) -> None:
        self.tensors, self.metadata, self.hash_early = tensors, dict(metadata), hash_early
        self.config_entry = config_digest(config, self.metadata[VERSION_KEY])
        self.head, self.order = encode_header(tensors, {**self.metadata, **placeholder_metadata(len(tensors))})
        self.hasher: PartsHasher | None = None
        self.later: list[tuple[str, str, tuple[int, ...], memoryview]] = []
        self.entries: dict[str, bytes] | None = None

    def __iter__(self) -> Iterator[bytes | memoryview]:
        self.close()
        self.entries, self.later = None, []
        self.hasher = PartsHasher(sum(t.numel() * t.element_size() for t in self.tensors.values()))
        try:
            yield self.head
            for key in self.order:
                t = self.tensors[key]
                data = safetensors_file.tensor_bytes(t)  # looked up here, so a test can make it fail
                part = (key, DTYPE_NAMES[t.dtype], tuple(t.shape), data)
                if self.hash_early or t.device.type != "cpu" or not t.is_contiguous():  # data is a copy: hash it now
                    self.hasher.add(*part)
                else:
                    self.later.append(part)
                yield data
        except BaseException:
            self.close()
            raise

    def final_metadata(self) -> dict[str, str]:
        """The metadata with the digest filled in (after the data has been iterated)."""
        if self.entries is None:
            if self.hasher is None:
                raise WriteError("internal error: the digest was asked for before the data was written")
            try:
                for part in self.later:
                    self.hasher.add(*part)
                self.entries = self.hasher.entries()
            finally:
                self.close()
        return {**self.metadata, **digest_metadata(self.config_entry, self.entries)}

    def patch(self) -> tuple[int, bytes]:
        head, _ = encode_header(self.tensors, self.final_metadata())
        if len(head) != len(self.head):  # the digest's length is fixed; a change means a bug here
            raise WriteError("internal error: the header changed length when the digest was filled in", actual=f"{len(head)} != {len(self.head)}")
        return 0, head

    def close(self) -> None:
        """Stop the hashing threads, cancelling what they have not started (idempotent)."""
        if self.hasher is not None:
            self.hasher.close()
            self.hasher = None
        self.later = []


def _write(path: Path, files: dict[str, object], form: str, durable: bool, overwrite: bool,
           patches: Mapping[str, Callable[[], tuple[int, bytes]]] | None = None) -> None:
    """Build the output in a staging folder beside ``path`` (``.<name>.tmp-*/<name>``), then
    install it in one rename (``install``: an output that appeared meanwhile is refused unless
    ``overwrite``).  The staging folder is removed whatever happens.  ``patches``: per file, the
    bytes to write over it once its chunks are written (the digest, see ``write_atomic``)."""
    staging = staging_folder(path)
    try:
        if form == "dir":
            staging.mkdir()
        for name, chunks in files.items():
            target = staging if form == "file" else staging / name
            try:
                write_atomic(target, chunks, durable=durable, patch=(patches or {}).get(name))
            except AdapterkitError as exc:  # name the real target, not the staging path
                exc.path = str(path if form == "file" else path / name)
                exc.args = (str(exc),)
                raise
        os.chmod(staging, 0o644 if form == "file" else 0o755)
        install(staging, path, overwrite=overwrite)
    except OSError as exc:
        raise WriteError(f"cannot write output: {exc.strerror}", path=path) from exc
    finally:
        discard(staging.parent)


def save(
    adapter: Adapter, path: str | Path, *, form: str | None = None, overwrite: bool = False, durable: bool = True,
    digest: bool = True,
) -> Path:
    """Write ``adapter`` to ``path``: PEFT's directory layout, or one ``.safetensors`` file.

    The form follows the name unless given: ``*.safetensors`` is the single-file form,
    anything else the directory form; an explicit ``form`` that contradicts the name is
    refused.  An existing ``path`` is refused unless ``overwrite``, which replaces it
    whole (no file from before remains).  The adapter is checked first; an invalid
    adapter is not written.  ``durable=False`` skips the fsync of each file (still atomic;
    see ``write_atomic``).  The weights file records the content digest (spec §5.5) as format
    1.1; ``digest=False`` writes a format 1.0 file without one.  Returns the path written.

    Raises:
        WriteError: ``overwrite-input`` when the target is, holds or lies inside what the adapter
            was read from or made from (``Adapter.inputs``; see ``adapterkit.io.outputs``),
            ``output-exists``, ``form-mismatch``, or ``write-failed``; other
            AdapterkitErrors for an invalid adapter.
    """
    path = Path(path)
    form = resolve_form(path, form)
    raise_first_error(structural_problems(adapter))
    _check_target(path, adapter, overwrite)
    try:
        tensors = {k: adapter.tensors[k] for k in adapter.tensors}
    except AdapterkitError as exc:
        exc.with_path(adapter.source or path)
        raise
    metadata = {"format": "pt", VERSION_KEY: FORMAT_VERSION if digest else UNDIGESTED_VERSION}
    if adapter.recipe:  # provenance (spec §5.6), in both forms; not part of the digest
        metadata[RECIPE_KEY] = encode_recipe(adapter.recipe)
    config = adapter.config.to_dict()
    weights = WEIGHTS_NAME if form == "dir" else path.name
    if form == "file":
        metadata[CONFIG_KEY] = json.dumps(peft_key_order(config), separators=(",", ":"))  # [R4.2-1]
    encoder = DigestingEncoder(tensors, metadata, config, hash_early=not durable) if digest else None  # durable: hashed during the fsync
    patches = {weights: encoder.patch} if encoder else {}
    if form == "dir":
        files = {WEIGHTS_NAME: encoder or encode(tensors, metadata), CONFIG_NAME: [config_json(adapter).encode("utf-8")]}
    else:
        files = {path.name: encoder or encode(tensors, metadata)}
    try:
        _write(path, files, form, durable, overwrite, patches)
    except AdapterkitError as exc:
        exc.with_path(path)
        raise
    finally:
        if encoder is not None:
            encoder.close()  # no hashing thread outlives a failed write
    return path
