"""Recipes: how adapterkit made an adapter, recorded in the files it writes (spec §5.6).

A recipe is a list of steps, oldest first; a step is a JSON object ``{"op": ..., parameters...,
"adapterkit": version}`` (``op``: ``combine``, ``resize``, ``rebalance``, ``prune``, ``extract``,
``export``).  An operation on an adapter that has a recipe appends its step to the input's list,
so a resize of a combination reads as two steps.  Paths and repo ids are recorded as the user
gave them (strings); nothing secret (tokens) is ever recorded.

The recipe is provenance only: it is not part of the adapter's content (``Adapter.__eq__`` and
a content digest ignore it).  It lives in the safetensors ``__metadata__`` under
:data:`RECIPE_KEY` as compact JSON; :func:`decode` refuses a malformed value with
``metadata-invalid``.  :func:`describe` renders a step as one readable line (model cards, info).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import FormatError
from .jsontext import loads_strict

if TYPE_CHECKING:
    from ..adapter import Adapter

RECIPE_KEY = "adapterkit.recipe"

Step = dict[str, Any]


def step(op: str, **params: Any) -> Step:
    """One step: ``op``, the parameters that are not None (paths as strings), the adapterkit version."""
    from .._version import __version__

    out: Step = {"op": op}
    for name, value in params.items():
        if value is None:
            continue
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, (list, tuple)):
            value = [str(v) if isinstance(v, Path) else v for v in value]
        out[name] = value
    out["adapterkit"] = __version__
    return out


def with_step(result: Adapter, source: Adapter, s: Step) -> Adapter:
    """``result`` whose recipe is ``source``'s followed by ``s`` (an operation on ``source`` made it),
    and which records ``source``'s files as its input (``save`` never writes over them)."""
    from .outputs import derived

    return derived(replace(result, recipe=(*source.recipe, s)), [("input adapter", source)])


def encode(recipe: Sequence[Step]) -> str:
    """The metadata value: compact JSON (separators ``,`` and ``:``), keys sorted, UTF-8 kept."""
    return json.dumps(list(recipe), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def decode(text: str, *, path: Path | str | None = None) -> tuple[Step, ...]:
    """The steps of a metadata value.

    Raises:
        FormatError: ``metadata-invalid`` when ``text`` is not strict JSON, not an array, or an
            element is not an object with a non-empty string ``op`` and a string ``adapterkit``.
    """
    key = f"__metadata__.{RECIPE_KEY}"
    try:
        data = loads_strict(text)
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{RECIPE_KEY} is not valid JSON ({exc})", code="metadata-invalid", path=path, key=key,
                          expected="a JSON array of steps", actual="not JSON") from None
    if not isinstance(data, list):
        raise FormatError(f"{RECIPE_KEY} must be a JSON array of steps", code="metadata-invalid", path=path, key=key,
                          expected="a JSON array", actual=type(data).__name__)
    for i, item in enumerate(data):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise FormatError("a recipe step must be a JSON object", code="metadata-invalid", path=path, key=where,
                              expected="an object with op and adapterkit", actual=type(item).__name__)
        for member in ("op", "adapterkit"):
            value = item.get(member)
            if not isinstance(value, str) or (member == "op" and not value):
                raise FormatError(f"a recipe step needs a string {member!r}", code="metadata-invalid", path=path,
                                  key=f"{where}.{member}", expected="a non-empty string", actual=value)
    return tuple(data)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, str):
        return f"`{value}`"
    return str(value)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _params(s: Step, skip: Sequence[str]) -> str:
    parts = [f"{k.replace('_', ' ')} {_value(v)}" for k, v in s.items() if k not in ("op", "adapterkit", *skip)]
    return f" ({', '.join(parts)})" if parts else ""


def _balance(s: Step) -> str:
    return ", unbalanced factors (B = U·Σ, A = Vᵀ)" if s.get("balanced") is False else ""


def describe(s: Step) -> str:
    """One line for a step, e.g. ``combine by svd (rank 16) of `a` ×0.7, `b` ×0.3 [adapterkit 0.1.0]``."""
    op, version = str(s.get("op")), s.get("adapterkit")
    tail = f" [adapterkit {version}]"
    if op == "combine":
        inputs, weights = _list(s.get("inputs")), _list(s.get("weights"))
        named = ", ".join(f"{_value(n)} ×{_value(w)}" for n, w in zip(inputs, weights))
        return f"combine by {s.get('method')}{_params(s, ('method', 'inputs', 'weights', 'input_recipes'))} of {named}{tail}"
    if op == "extract":
        return f"extract {_value(s.get('finetuned'))} − {_value(s.get('base'))}{_params(s, ('base', 'finetuned'))}{tail}"
    if op == "resize":
        rule = next((f"{label} {_value(s[k])}" for k, label in (("rank", "to rank"), ("energy", "keeping energy"),
                                                                  ("sv_ratio", "by σ ratio")) if k in s), "")
        return f"resize {rule}{_params(s, ('rank', 'energy', 'sv_ratio', 'balanced'))}{_balance(s)}{tail}"
    if op == "rebalance":
        rule = (f"to a budget of {_value(s['budget'])} parameters" if "budget" in s
                else f"to average rank {_value(s.get('rank'))}")
        return f"rebalance {rule}{_params(s, ('budget', 'rank', 'balanced'))}{_balance(s)}{tail}"
    if op == "export":
        return f"export for {s.get('consumer')}{_params(s, ('consumer',))}{tail}"
    return f"{op}{_params(s, ())}{tail}"


def lines(recipe: Sequence[Step]) -> list[str]:
    """A numbered Markdown list of the steps; a combined input's own recipe indented under its step."""
    out = []
    for i, s in enumerate(recipe, 1):
        out.append(f"{i}. {describe(s)}")
        for name, sub in zip(_list(s.get("inputs")), _list(s.get("input_recipes"))):
            if sub and isinstance(sub, list) and all(isinstance(x, dict) for x in sub):
                out.append(f"   - {_value(name)} was made by:")
                out += ["     " + line for line in lines(sub)]
    return out
