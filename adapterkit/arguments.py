"""The operations' numeric arguments checked without torch, so that the CLI refuses a bad one
(``--rank 0``, a ``--weights`` count that differs from the adapters, ``ties`` without
``--density``, ...) with ``argument-invalid`` before the library, and torch, is imported.

The rules are the library's own (``ops.combining._check_arguments``, ``linalg.select_rank``,
``ops.rebalancing``, ``ops.pruning._check``, ``checkpoint.writer``): the operations still check
every argument themselves; tests/test_cli.py holds both to the same values.  ``key`` names the
option as the user typed it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from .errors import ArgumentError

# adapterkit.ops.combining's method families (a test keeps them equal)
FACTOR_METHODS = ("ties", "dare_linear", "dare_ties", "magnitude_prune")
DENSITY_METHODS = FACTOR_METHODS + tuple(m + "_svd" for m in FACTOR_METHODS)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(key: str, value: Any) -> None:
    """``value`` is None or an integer > 0 (a rank, a budget)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ArgumentError(f"{key} must be a positive integer", key=key, expected="> 0", actual=value)


def fraction(key: str, value: Any, *, zero: bool = False) -> None:
    """``value`` is None or in (0, 1] (``zero``: [0, 1])."""
    if value is None:
        return
    if not _number(value) or not (0 <= value <= 1 if zero else 0 < value <= 1):
        expected = f"0 <= {key} <= 1" if zero else f"0 < {key} <= 1"
        raise ArgumentError(f"{key} is a fraction", key=key, expected=expected, actual=value)


def check_resize(rank: Any, energy: Any, sv_ratio: Any, *, prefix: str = "--") -> None:
    """resize (and extract's ``rank``/``energy``)."""
    positive_int(f"{prefix}rank", rank)
    fraction(f"{prefix}energy", energy)
    if sv_ratio is not None and (not _number(sv_ratio) or not sv_ratio >= 1):
        raise ArgumentError("sv-ratio keeps the singular values within this ratio of the largest", key=f"{prefix}sv-ratio",
                            expected=">= 1", actual=sv_ratio)


def check_combine(count: int, weights: Sequence[float], method: str, rank: Any, density: Any, svd_clamp: Any) -> None:
    """combine: ``count`` adapters with ``weights``, by ``method``."""
    if len(weights) != count:
        raise ArgumentError(f"one weight per adapter: {len(weights)} weights for {count} adapters", key="--weights",
                            expected=f"{count} weights", actual=len(weights))
    if not all(_number(w) and math.isfinite(w) for w in weights):
        raise ArgumentError("weights must be finite numbers", key="--weights", expected="finite numbers", actual=list(weights))
    positive_int("--rank", rank)
    if rank is not None and method in ("cat", *FACTOR_METHODS):
        raise ArgumentError(f"{method} keeps the adapters' ranks; --rank applies to linear, svd and *_svd", key="--rank",
                            expected="no --rank", actual=rank)
    if method in DENSITY_METHODS:
        if density is None:
            raise ArgumentError(f"{method} needs --density, the fraction of entries kept", key="--density",
                                expected="0 < density <= 1", actual=None)
        fraction("--density", density)
    elif density is not None:
        raise ArgumentError(f"{method} prunes nothing; --density applies to {', '.join(DENSITY_METHODS)}", key="--density",
                            expected="no --density", actual=density)
    if svd_clamp is not None:
        fraction("--svd-clamp", svd_clamp, zero=True)
        if method in ("cat", *FACTOR_METHODS) or (method == "linear" and rank is None):
            raise ArgumentError(f"{method} computes no SVD; --svd-clamp applies to svd, *_svd and linear with --rank",
                                key="--svd-clamp", expected="no --svd-clamp", actual=svd_clamp)


_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str | None, key: str = "--max-shard-size") -> int | None:
    """``5GB`` (10^9, as transformers counts), ``2GiB``, or a number of bytes; at least 1 byte."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = m[2].upper() if m else ""
    if not m or unit not in _SIZE_UNITS or int(float(m[1]) * _SIZE_UNITS[unit]) < 1:
        raise ArgumentError("not a size such as 5GB, 500MB, 2GiB or a number of bytes", key=key,
                            expected="a positive size", actual=repr(text))
    return int(float(m[1]) * _SIZE_UNITS[unit])
