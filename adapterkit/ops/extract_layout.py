"""Where ``extract --save-changed`` puts what it stores, so that PEFT loads every tensor of it.

PEFT (0.22) loads an adapter file into the model it has wrapped with
``load_state_dict(strict=False)``: a key that names no parameter of the wrapped model is
silently ignored.  What the wrapping does to the names:

- a module with LoRA factors becomes a LoRA layer that holds the original as ``base_layer``:
  its bias is read from ``<module>.base_layer.bias`` (``<module>.bias`` is ignored);
- a ``modules_to_save`` entry ``m`` wraps every module whose name is ``m`` or ends with
  ``.m`` (``_is_valid_match``), and reads *every* entry of each wrapped module's state dict
  from ``<module>.<param>`` (a missing one is a ``KeyError``); no module matching
  ``(^|.*\\.)m($|\\..*)`` gets a LoRA layer (its factors would be ignored);
- a list of ``target_modules`` adapts every module named so or whose name ends with
  ``.<entry>``; a string is a regex matched against the whole name.

:func:`peft_layout` therefore (1) stores whole every module PEFT wraps for a
``modules_to_save`` entry, with all its tensors (unchanged ones too), and drops the LoRA
factors of modules PEFT would not adapt next to one (their tensors are stored whole instead);
(2) stores the changed bias of a LoRA module as ``<module>.base_layer.bias``; (3) writes
``target_modules`` as the list of extracted names where no other module of the checkpoint ends
with one of them, else as a regex matching exactly those names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..kinds.lora import PREFIX


@dataclass(frozen=True)
class Layout:
    """The adapter's whole tensors and the config fields that make PEFT load them.

    Attributes:
        whole: adapter key -> checkpoint key whose fine-tuned value is stored there.
        modules_to_save: the ``modules_to_save`` entries (None: none).
        target_modules: the extracted modules, as a list of names or an exact regex.
        bias: ``"all"`` when biases outside ``modules_to_save`` are stored, else ``"none"``.
        lora: the extracted modules that keep their LoRA factors.
        dropped: extracted modules PEFT would not adapt (inside a ``modules_to_save`` module,
            by PEFT's rule): their tensors are stored whole instead.
    """

    whole: dict[str, str]
    modules_to_save: list[str] | None
    target_modules: list[str] | str
    bias: str
    lora: tuple[str, ...]
    dropped: tuple[str, ...]


def module_names(keys: Iterable[str]) -> set[str]:
    """Every module a checkpoint's keys imply: each dotted prefix of a key."""
    names: set[str] = set()
    for key in keys:
        parts = key.split(".")
        names.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return names


def _ends_with(name: str, entry: str) -> bool:
    return name == entry or name.endswith("." + entry)


def exact_targets(names: Sequence[str], modules: set[str]) -> list[str] | str:
    """``target_modules`` that PEFT matches to ``names`` and no other of ``modules``: the list
    of names where none is a dot-suffix of another module, else ``(?:a|b|...)`` (escaped)."""
    chosen = set(names)
    suffixes = set()
    for other in modules - chosen:
        parts = other.split(".")
        suffixes.update(".".join(parts[i:]) for i in range(1, len(parts)))
    if chosen & suffixes:
        return "(?:" + "|".join(re.escape(n) for n in sorted(chosen)) + ")"
    return sorted(chosen)


def peft_layout(keys: Sequence[str], extracted: Iterable[str], changed: Iterable[str]) -> Layout:
    """The layout (see the module doc) of an extract.

    Args:
        keys: every tensor key of the fine-tuned checkpoint (as the model names it).
        extracted: the modules given LoRA factors.
        changed: the changed keys stored whole (not extracted).
    """
    modules = module_names(keys)
    extracted = set(extracted)
    changed = list(changed)
    roots = sorted({k.rsplit(".", 1)[0] for k in changed
                    if "." in k and not k.endswith(".bias") and k.rsplit(".", 1)[0] not in extracted})
    wrapped = sorted(n for n in modules if any(_ends_with(n, m) for m in roots))
    # PEFT's rule (its regex, entries unescaped as PEFT uses them) for modules it does not adapt
    dropped = sorted(t for t in extracted if any(re.match(rf"(^|.*\.){m}($|\..*)", t) for m in roots))
    inside = tuple(n + "." for n in wrapped + dropped)
    whole = {PREFIX + k: k for k in keys if k.startswith(inside)}
    lora = extracted - set(dropped)
    plain_bias = False
    for k in changed:
        if PREFIX + k in whole:
            continue
        module, _, param = k.rpartition(".")
        if module in lora:  # the LoRA layer holds the original module as base_layer
            whole[f"{PREFIX}{module}.base_layer.{param}"] = k
        else:
            whole[PREFIX + k] = k
        plain_bias |= k.endswith(".bias")
    return Layout(whole, roots or None, exact_targets(sorted(lora), modules), "all" if plain_bias else "none",
                  tuple(sorted(lora)), tuple(dropped))
