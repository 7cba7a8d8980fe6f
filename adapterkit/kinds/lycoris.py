"""What LoHa and LoKr (LyCORIS's kinds, as PEFT has them) share: PEFT's ``LycorisConfig`` fields
and their pattern rule, one module's view, the grouping of keys by module, the unexpected-key
warning, and einsum / kron on torch tensors or the torch-free path's numpy arrays."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..arrays import is_numpy
from ..errors import Problem
from .base import NUM_PATTERN, NUMBER, PATTERN, POS_INT, AdapterConfig, schema_field
from .patterns import matches_modules_to_save, pattern_value

if TYPE_CHECKING:
    from ..adapter import Adapter, TensorStore

PREFIX = "base_model.model."


@dataclass(frozen=True)
class LycorisConfig(AdapterConfig):
    """PEFT's ``LycorisConfig``: the rank and alpha, and their per-module patterns."""

    r: int = schema_field(8, POS_INT, doc="default rank")
    alpha: float = schema_field(8, NUMBER, doc="default alpha; scaling = alpha / r")
    rank_pattern: dict = schema_field({}, PATTERN, doc="module regex -> rank; first match in order wins")
    alpha_pattern: dict = schema_field({}, NUM_PATTERN, doc="module regex -> alpha; first match in order wins")

    def rank_for(self, module: str) -> tuple[int, str | None]:
        """(rank, matching rank_pattern key) for ``module``, PEFT's rule (``get_pattern_key``)."""
        return pattern_value(self.rank_pattern, module, self.r)

    def alpha_for(self, module: str) -> tuple[float, str | None]:
        return pattern_value(self.alpha_pattern, module, self.alpha)

    def scaling_for(self, module: str) -> float:
        return self.alpha_for(module)[0] / self.rank_for(module)[0]


@dataclass(frozen=True)
class LycorisModule:
    """One adapted module: its keys by part, rank and scaling."""

    name: str
    keys: dict[str, str]
    rank: int
    scaling: float
    store: TensorStore

    def tensor(self, part: str) -> Any:
        return self.store[self.keys[part]]


def key_parser(parts: str) -> Callable[[str], tuple[str, str] | None]:
    """``parse_key`` for the part names the regex ``parts`` matches."""
    pattern = re.compile(rf"^base_model\.model\.(?P<module>.+)\.(?P<part>{parts})$")

    def parse_key(key: str) -> tuple[str, str] | None:
        m = pattern.match(key)
        return (m["module"], m["part"]) if m else None

    return parse_key


def grouped(adapter: Adapter, parse_key: Callable[[str], tuple[str, str] | None]) -> dict[str, dict[str, str]]:
    """module -> {part: key} for the adapter's keys ``parse_key`` reads."""
    groups: dict[str, dict[str, str]] = {}
    for key in adapter.tensors:
        parsed = parse_key(key)
        if parsed:
            groups.setdefault(parsed[0], {})[parsed[1]] = key
    return groups


def module_views(adapter: Adapter, view: type, parse_key: Callable[[str], tuple[str, str] | None]) -> dict[str, Any]:
    cfg: LycorisConfig = adapter.config  # type: ignore[assignment]
    return {name: view(name, parts, cfg.rank_for(name)[0], cfg.scaling_for(name), adapter.tensors)
            for name, parts in sorted(grouped(adapter, parse_key).items())}


def stray_keys(adapter: Adapter, parse_key: Callable[[str], tuple[str, str] | None], kind: str, parts: tuple[str, ...],
               groups: dict[str, dict[str, str]]) -> list[Problem]:
    """The warnings for keys that are neither the kind's parts nor ``modules_to_save`` tensors,
    and for an adapter with no module."""
    cfg = adapter.config
    problems = [Problem("unexpected-key", f"tensor is neither a {kind} factor nor part of modules_to_save", "warning",
                        key=key, expected=f"{PREFIX}<module>.<{'|'.join(parts)}>")
                for key in adapter.tensors
                if parse_key(key) is None and "modules_to_save" not in cfg.unknown
                and not matches_modules_to_save(cfg.modules_to_save, key, PREFIX)]
    if not groups:
        problems.append(Problem("empty-adapter", f"the adapter has no {kind} tensors", "warning"))
    return problems


def einsum(spec: str, *operands: Any) -> Any:
    """einsum for torch tensors or numpy arrays (the torch-free inspection path)."""
    if is_numpy(operands[0]):
        import numpy as np

        return np.einsum(spec, *operands)
    import torch

    return torch.einsum(spec, *operands)
