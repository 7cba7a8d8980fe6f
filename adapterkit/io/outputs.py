"""The output guard: what a command writes never is, holds or lies inside what it reads.

Every writer calls :func:`check_output` before it writes anything (``save``, the checkpoint
writer behind ``merge``/``unmerge``, ``pull``, ``plot_spectrum``), and the CLI calls it once more
with the paths as the user named them, before torch is imported, so that the message names
the argument (``BASE``, ``ADAPTER``, ...).  ``--overwrite`` changes nothing here: it replaces an
existing output, never an input.

What an input is (each compared with the output twice: as spelled, made absolute, and with
every link resolved, ``os.path.realpath``; an input that does not exist is skipped):

* a model checkpoint (``BASE``, ``MERGED``, ``FINETUNED``): its folder (a merge copies every
  file of it) and each shard, or the one ``.safetensors`` file it is;
* an adapter in PEFT's directory layout (``adapter_model.safetensors`` or ``.bin``): its
  folder, whichever of its files was named; an adapter found in a subfolder of the folder
  named (``adapter_name``, or the one subfolder holding an adapter): the folder named too;
* a single-file adapter: its file and, when there is one, the ``adapter_config.json`` beside
  it (read for a weights file without a config inside).  The folder holding the file is not
  an input: an output beside the file (``a.safetensors`` -> ``b.safetensors``) is fine;
* a repo id: the cache snapshot folder its files were read from (and, through the links,
  the cached blobs);
* an adapter an operation made in memory (``combine``, ``resize``, ``extract``, ...): every input
  of that operation (``Adapter.inputs``), so that ``save`` of the result protects them too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import WriteError

if TYPE_CHECKING:
    from ..adapter import Adapter

Input = tuple[str, Path]  # (role, path): "ADAPTER", "BASE", "base checkpoint", ...

DIR_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # io.reader's WEIGHTS_NAME, BIN_NAME
CONFIG_NAME = "adapter_config.json"


def _forms(path: str | os.PathLike[str]) -> set[Path]:
    """``path`` made absolute as spelled, and with every link resolved."""
    return {Path(os.path.abspath(path)), Path(os.path.realpath(path))}


def _relation(out: Path, given: Path) -> str | None:
    """How the output relates to one input: "is", "holds", "lies inside", or None."""
    try:
        if os.path.lexists(out) and os.path.samefile(out, given):
            return "is"
    except OSError:
        pass
    for o in _forms(out):
        for i in _forms(given):
            if o == i:
                return "is"
            if i.is_relative_to(o):
                return "holds"
            if o.is_relative_to(i):
                return "lies inside"
    return None


def check_output(out: str | os.PathLike[str], inputs: Iterable[tuple[str, str | os.PathLike[str] | None]]) -> None:
    """Refuse ``out`` when it is, holds or lies inside one of ``inputs`` ((role, path) pairs; a
    path that is None or does not exist is skipped).  Call it before writing anything, whatever
    ``overwrite`` says.

    Raises:
        WriteError: ``overwrite-input`` naming the output, the input and its role.
    """
    out = Path(out)
    for role, given in inputs:
        if given is None or not os.path.lexists(given):
            continue
        how = _relation(out, Path(given))
        if how is not None:
            raise WriteError(
                f"the output {how} the {role} {given}: an output never is, holds or lies inside an input",
                code="overwrite-input", path=out, key=role,
                expected="a path outside every input", actual=f"{role} {given}",
            )


def adapter_inputs(adapter: Adapter, role: str = "adapter") -> list[Input]:
    """What ``adapter`` was read from (see the module doc), then the inputs of the operation
    that made it."""
    found: list[Input] = []
    source = adapter.source
    if source is not None:
        if source.name in DIR_WEIGHTS:
            found.append((role, source.parent))
        # the files themselves too: behind links (a Hub cache snapshot) they live elsewhere
        found.append((role, source))
        found.append((f"{role}'s config", source.parent / CONFIG_NAME))
    return found + [(r, Path(p)) for r, p in adapter.inputs]


def derived(result: Adapter, sources: Iterable[tuple[str, Adapter]]) -> Adapter:
    """``result`` recording the inputs of the ``sources`` it was made from ((role, adapter)
    pairs), so that saving it never writes over them."""
    inputs = [(r, str(p)) for role, a in sources for r, p in adapter_inputs(a, role)]
    return replace(result, inputs=tuple(dict.fromkeys(inputs)))


def checkpoint_inputs(ckpt, role: str = "base checkpoint") -> list[Input]:
    """A checkpoint's folder (or its one file) and each of its shards."""
    return [(role, Path(ckpt.path)), *((role, Path(s)) for s in ckpt.shards)]
