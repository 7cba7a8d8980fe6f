"""PEFT's rules for matching config patterns against module names, reproduced exactly.

Module names are paths in the base model (``model.layers.0.self_attn.q_proj``),
i.e. a tensor key minus the ``base_model.model.`` prefix and the adapter part.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def pattern_key(pattern_keys: Iterable[str], module: str) -> str | None:
    """The ``rank_pattern``/``alpha_pattern`` key that applies to ``module``, or None.

    PEFT's rule: the first key, in dict order, for which ``re.match(r"(.*\\.)?(KEY)$", module)``
    succeeds.  A key is a regular expression; a key starting with ``^`` therefore only
    matches when it spells the whole module name.  An invalid regex matches nothing.
    """
    for key in pattern_keys:
        regex = _pattern_regex(key)
        if regex is not None and regex.match(module):
            return key
    return None


@functools.lru_cache(maxsize=4096)
def _pattern_regex(key: str) -> re.Pattern[str] | None:
    """The compiled PEFT pattern for ``key`` (None for an invalid regex); compiled once, as
    checks match every key against every module."""
    try:
        return re.compile(rf"(.*\.)?({key})$")
    except re.error:
        return None


def pattern_value(pattern: Mapping[str, Any], module: str, default: Any) -> tuple[Any, str | None]:
    """(value, matched key) for ``module`` under ``pattern``, falling back to ``default``."""
    key = pattern_key(pattern, module)
    return (pattern[key], key) if key is not None else (default, None)


def _fullmatch(regex: str, module: str) -> bool:
    """``re.fullmatch`` that treats an invalid regex as matching nothing."""
    try:
        return re.fullmatch(regex, module) is not None
    except re.error:
        return False


def matches_target(targets: str | Sequence[str] | None, module: str) -> bool:
    """PEFT's ``target_modules`` rule: a string is a full regex match; a list matches the
    whole name or a dot-separated suffix."""
    if targets is None:
        return False
    if isinstance(targets, str):
        return _fullmatch(targets, module)
    return any(module == t or module.endswith("." + t) for t in targets)


def matches_feedforward(feedforward: str | Sequence[str] | None, module: str) -> bool:
    """PEFT's IA3 feedforward rule: a string is a full regex match; a list uses plain
    ``endswith`` (no dot boundary, unlike ``target_modules``)."""
    if feedforward is None:
        return False
    if isinstance(feedforward, str):
        return _fullmatch(feedforward, module)
    return any(module.endswith(t) for t in feedforward)


def matches_modules_to_save(names: Sequence[str] | None, key: str, prefix: str) -> bool:
    """Whether a whole-module tensor key (``<prefix><module>.<param>``) belongs to a
    ``modules_to_save`` entry: the entry names the module or a dot-suffix of it."""
    if not names or not key.startswith(prefix):
        return False
    path = key[len(prefix):]
    parts = path.split(".")
    modules = {".".join(parts[:i]) for i in range(1, len(parts))}
    return any(m == n or m.endswith("." + n) for m in modules for n in names)


def layer_index(module: str, layers_pattern: str | Sequence[str] | None = None) -> int | None:
    """The layer index PEFT's ``layers_to_transform`` reads from ``module``, or None.

    Without ``layers_pattern``: the first numeric path component that has at least two
    components before it and one after (``model.layers.3.mlp.up_proj`` -> 3; ``layers.3.q``
    -> None), PEFT's lazy ``.*?\\.[^.]*\\.(\\d+)\\.``.  With a pattern (or a list, first match
    wins): the number after the first ``<pattern>.`` component.
    """
    if not layers_pattern:
        m = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", module)
    else:
        for pattern in [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern:
            m = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", module)
            if m is not None:
                break
    return int(m["idx"]) if m else None
