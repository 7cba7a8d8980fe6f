"""Strict JSON for safetensors headers and adapter configs (spec §1, rule R1-1).

Python's ``json`` accepts more than RFC 8259: the literals ``NaN``, ``Infinity`` and
``-Infinity``, numbers that overflow to infinity (``1e400``), and objects with
repeated member names (the last one silently wins).  ``loads_strict`` refuses all
of these, so that every reader sees one meaning for one text.
"""

from __future__ import annotations

import json
import math
from typing import Any


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
            a number out of the range of an IEEE double, or an over-long integer.
        RecursionError: excessive nesting.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return json.loads(text, object_pairs_hook=_unique_object, parse_constant=_no_constant, parse_float=_finite_float)


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
