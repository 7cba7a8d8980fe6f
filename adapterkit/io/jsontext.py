"""Strict JSON for safetensors headers and adapter configs (spec §1, rule R1-1).

Python's ``json`` accepts more than RFC 8259: the literals ``NaN``, ``Infinity`` and
``-Infinity``, numbers that overflow to infinity (``1e400``, or an integer of 309
digits), and objects with repeated member names (the last one silently wins).  It
also accepts strings holding an unpaired surrogate escape (``"\ud800"``), which name
no character and have no UTF-8 form, and reads ``-0`` as the integer 0, where the
safetensors library (serde_json) reads a float.  ``loads_strict`` refuses all of
these, so that every reader sees one meaning for one text, and no text the
safetensors library refuses is accepted here.

It also holds the one key order adapterkit writes configs in (``peft_key_order``): PEFT 0.22.0's,
every object's members sorted except those of the pattern objects, whose order decides which
key applies (spec §4.1, §8.3).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# Texts that need the slower checks: a surrogate escape, a "-0", a run of 309+ digits.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_RARE_INT = re.compile(r"-0|[0-9]{309}")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise ValueError(f"duplicate member name {name!r}")
        out[name] = value
    return out


def _no_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a JSON value")


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise ValueError(f"number {token[:40]} is out of the range of a double")
    return value


def loads_strict(text: str | bytes) -> Any:
    """Parse RFC 8259 JSON (bytes are decoded as UTF-8).

    Raises:
        ValueError: bad UTF-8, bad JSON, a repeated member name, a NaN/Infinity literal,
            a number out of the range of an IEEE double, an over-long integer, or a string
            with an unpaired surrogate.  ``-0`` parses as the float -0.0.
        RecursionError: excessive nesting.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    hooks = {"object_pairs_hook": _unique_object, "parse_constant": _no_constant, "parse_float": _finite_float}
    if _RARE_INT.search(text) is not None:  # a hook per integer costs; most texts need none
        hooks["parse_int"] = _finite_int
    value = json.loads(text, **hooks)
    if _SURROGATE_ESCAPE.search(text) is not None:
        _check_strings(value)
    return value


def _finite_int(token: str) -> int | float:
    """An integer token; ``-0`` is read as the float -0.0 (as serde_json reads it), so that
    wherever an integer is required it is refused."""
    if token == "-0":
        return -0.0
    value = int(token)
    try:
        float(value)
    except OverflowError:
        raise ValueError(f"number {token[:40]}... is out of the range of a double") from None
    return value


def _check_strings(value: Any) -> None:
    """Raise ValueError if any string (member names included) holds an unpaired surrogate."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            items: Any = (item,)
        elif isinstance(item, dict):
            items = list(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for s in items:
            try:
                s.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"string {s[:40]!r} holds an unpaired surrogate (no UTF-8 form)") from None


# Config members whose value keeps its member order when a config is written: the first matching
# key of a pattern wins, so sorting them would change the adapter (PEFT 0.22.0's
# CONFIG_KEYS_WITH_PRESERVED_ORDER in peft/config.py).
PRESERVED_ORDER = frozenset({"rank_pattern", "alpha_pattern", "paca_indices_pattern"})


def peft_key_order(value: Any) -> Any:
    """``value`` with every object's members in code-point order of their names, at every level,
    except that the value of a member named in :data:`PRESERVED_ORDER` (at any level) is kept
    exactly as given: what PEFT 0.22.0's ``_sort_keys`` does before it writes
    ``adapter_config.json`` (spec §4.1, [R4.1-1])."""
    if isinstance(value, dict):
        return {k: v if k in PRESERVED_ORDER else peft_key_order(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [peft_key_order(item) for item in value]
    return value


def json_equal(a: Any, b: Any) -> bool:
    """Equality of parsed JSON values: same JSON type (``true`` is not ``1``), objects
    regardless of member order, arrays element by element, numbers by value."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b
