"""Dropping whole modules from an adapter: ``prune``.

Works on every kind with adapted modules (LoRA incl. DoRA and lora_bias, IA3), since it only
removes modules: a dropped module loses all its tensors (``lora_A``/``lora_B``, ``lora_B.bias``,
the DoRA magnitude, ``ia3_l``).  The config is updated so that the result validates cleanly and
PEFT does not re-create the dropped modules when it loads the adapter (PEFT wraps every module
the config targets, whatever the file holds):

* the dropped names are added to ``exclude_modules`` (list semantics: a full name or a
  dot-suffix; PEFT reads a string as a full-match regex, so an existing string, or a dropped
  name that is a dot-suffix of a kept one, turns the whole value into such a regex instead);
* ``rank_pattern`` / ``alpha_pattern`` keys that match no kept module are removed.

Tensors stored whole under a dropped module's wrapper (``<module>.base_layer.bias`` of
``bias="all"``/``"lora_only"``, a saved ``<embedding>.base_layer.weight``) are kept and renamed
to the unwrapped module's name (``<module>.bias``), where PEFT then loads them: the trained
bias is the base layer's, not the LoRA module's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..adapter import Adapter
from ..devices import resolve_device
from ..errors import ArgumentError, UnsupportedError
from ..io.recipe import step, with_step
from ..kinds.features import LOWRANK, feature_tensor, require
from ..kinds.lora import PREFIX
from ..kinds.patterns import layer_index, pattern_key
from ..threads import factor_work, intra_op

WRAPPER = ".base_layer."


@dataclass(frozen=True)
class PruneReport:
    """What ``prune`` dropped and why.

    Attributes:
        kept: the modules left, sorted.
        dropped: dropped module -> the first rule that dropped it (``modules``, ``layers``,
            ``min_energy``, ``keep_fraction``).
        shares: module -> its share of Σ‖ΔW‖²_F (only when an energy rule was given).
        params_before / params_after: tensor elements of the adapter (all tensors).
        exclude_modules: the config's new ``exclude_modules``.
        removed_pattern_keys: ``rank_pattern``/``alpha_pattern`` keys removed (``rank_pattern[key]``).
        renamed: old key -> new key of whole tensors moved off a dropped module's wrapper.
    """

    kept: tuple[str, ...]
    dropped: Mapping[str, str]
    shares: Mapping[str, float]
    params_before: int
    params_after: int
    exclude_modules: Any
    removed_pattern_keys: tuple[str, ...]
    renamed: Mapping[str, str]

    @property
    def energy_kept(self) -> float | None:
        """The kept modules' share of Σ‖ΔW‖²_F (None when no energy rule was given)."""
        return sum(self.shares[m] for m in self.kept) if self.shares else None

    def to_dict(self) -> dict[str, Any]:
        excl = self.exclude_modules
        return {
            "kept": list(self.kept), "dropped": dict(self.dropped), "shares": dict(self.shares), "energy_kept": self.energy_kept,
            "params_before": self.params_before, "params_after": self.params_after,
            "exclude_modules": list(excl) if isinstance(excl, tuple) else excl,
            "removed_pattern_keys": list(self.removed_pattern_keys), "renamed": dict(self.renamed),
        }


def _shares(adapter: Adapter, names: list[str], device: Any) -> dict[str, float]:
    """module -> ‖ΔW‖²_F / Σ‖ΔW‖²_F (0 each for an all-zero adapter), from the kind's statistics.
    For DoRA that is the LoRA part scaling·B·A (the magnitude's effect depends on the base)."""
    energy = {}
    work = factor_work(adapter.meta(k).shape for k in adapter.tensors if adapter.kind.parse_key(k) is not None)
    for name in names:
        with intra_op(work):  # the Gram matrices of the factors
            stats = adapter.kind.stats(adapter, name, device)
        if "delta_norm" not in stats:
            raise UnsupportedError(
                f"{adapter.peft_type} modules have no ΔW without the base weights, so no energy to prune by",
                path=adapter.source, key=name, expected="modules/layers rules", actual="min_energy/keep_fraction",
            )
        energy[name] = stats["delta_norm"] ** 2
    total = sum(energy.values())
    return {n: (e / total if total else 0.0) for n, e in energy.items()}


def _exclusion(current: Any, dropped: list[str], kept: list[str]) -> Any:
    """``exclude_modules`` with ``dropped`` added (see the module doc)."""
    if not dropped:
        return current
    clash = any(k.endswith("." + d) for k in kept for d in dropped)
    if isinstance(current, str) or clash:
        old = [f"(?:{current})"] if isinstance(current, str) else [rf"(?:.*\.)?{re.escape(t)}" for t in current or ()]
        return "|".join(old + [re.escape(d) for d in dropped])
    have = tuple(current or ())
    return have + tuple(d for d in dropped if d not in have)


def _check(adapter: Adapter, modules: str | None, layers: Iterable[int] | None, min_energy: float | None,
           keep_fraction: float | None) -> tuple[re.Pattern[str] | None, set[int] | None]:
    def bad(key: str, message: str, value: Any, expected: str) -> ArgumentError:
        return ArgumentError(message, path=adapter.source, key=key, expected=expected, actual=value)

    if modules is None and layers is None and min_energy is None and keep_fraction is None:
        raise bad("modules/layers/min_energy/keep_fraction", "give at least one rule for the modules to drop", None, "at least one")
    regex = None
    if modules is not None:
        try:
            regex = re.compile(modules)
        except (re.error, TypeError) as exc:
            raise bad("modules", f"not a regular expression ({exc})", modules, "a regex searched in module names") from None
    wanted = None
    if layers is not None:
        wanted = set(layers) if not isinstance(layers, str) else {"?"}
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in wanted):
            raise bad("layers", "layers must be non-negative integers", layers, "layer indices such as [0, 1, 5]")
    if min_energy is not None and not 0 <= min_energy <= 1:
        raise bad("min_energy", "min_energy is a fraction of the adapter's energy", min_energy, "0 <= min_energy <= 1")
    if keep_fraction is not None and not 0 < keep_fraction <= 1:
        raise bad("keep_fraction", "keep_fraction is the fraction of modules to keep", keep_fraction, "0 < keep_fraction <= 1")
    return regex, wanted  # type: ignore[return-value]


def _check_layers(adapter: Adapter, names: list[str], wanted: set[int]) -> None:
    """Refuse layer indices no module has: a typo would silently drop nothing."""
    present = {i for i in (layer_index(n, getattr(adapter.config, "layers_pattern", None)) for n in names) if i is not None}
    absent = sorted(wanted - present)
    if absent:
        have = _ranges(sorted(present)) if present else "none (no module has a layer index)"
        raise ArgumentError(f"no module of the adapter is in layer {_ranges(absent)}; its layers are {have}", path=adapter.source,
                            key="layers", expected=f"layers among {have}", actual=_ranges(absent))


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5] -> ``0-2,5``."""
    parts: list[str] = []
    for v in values:
        if parts and v == int(parts[-1].split("-")[-1]) + 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{v}"
        else:
            parts.append(str(v))
    return ",".join(parts)


def prune(adapter: Adapter, *, modules: str | None = None, layers: Iterable[int] | None = None, min_energy: float | None = None,
          keep_fraction: float | None = None, device: Any = "cpu") -> tuple[Adapter, PruneReport]:
    """The adapter without the modules any of the given rules drops.

    Args:
        adapter: a LoRA (incl. DoRA) or IA3 adapter.
        modules: a regex *searched* in each module name (``re.search``: ``q_proj`` drops every
            q_proj, ``^model\\.layers\\.0\\.`` anchors it); matching modules are dropped.
        layers: layer indices whose modules are dropped; a module's index is PEFT's
            (``layers_to_transform``): the first numeric path component after two others, or
            after the config's ``layers_pattern``.  Modules without an index are kept.
        min_energy: drop the modules whose share of Σ‖ΔW‖²_F is below this fraction.
        keep_fraction: keep the ⌈fraction × modules⌉ modules with the most energy (ties by name).
        device: where the energies (from the factors, never the dense ΔW) are computed.

    Returns:
        (the pruned adapter, a :class:`PruneReport`).

    Raises:
        ArgumentError: ``argument-invalid`` for no rule, an invalid regex or value, a layer that
            no module is in (naming the layers there are), or rules that drop every module (an
            empty adapter is of no use).
        UnsupportedError: ``not-supported`` for kinds without modules (prompt learning), and for
            the energy rules on kinds without a ΔW of their own (IA3).
    """
    regex, wanted = _check(adapter, modules, layers, min_energy, keep_fraction)
    cfg = adapter.config
    if not hasattr(cfg, "exclude_modules"):
        raise UnsupportedError(f"{adapter.peft_type} adapters have no modules to prune", path=adapter.source,
                               expected="LORA or IA3", actual=adapter.peft_type)
    names = sorted(adapter.modules)
    if min_energy is not None or keep_fraction is not None:  # energies are ΔW's: a feature changing it is refused
        require(adapter, LOWRANK, what="prune by energy")
    shares = _shares(adapter, names, resolve_device(device)) if min_energy is not None or keep_fraction is not None else {}
    top = set(sorted(names, key=lambda n: (-shares[n], n))[: math.ceil(keep_fraction * len(names))]) if keep_fraction is not None else set(names)
    if wanted is not None:
        _check_layers(adapter, names, wanted)
    dropped: dict[str, str] = {}
    for name in names:
        index = layer_index(name, getattr(cfg, "layers_pattern", None)) if wanted is not None else None
        rules = (("modules", regex is not None and regex.search(name) is not None), ("layers", index is not None and index in wanted),
                 ("min_energy", min_energy is not None and shares[name] < min_energy), ("keep_fraction", name not in top))
        why = next((rule for rule, hit in rules if hit), None)
        if why:
            dropped[name] = why
    kept = [n for n in names if n not in dropped]
    if not kept:
        raise ArgumentError("the rules drop every module; an empty adapter is of no use", path=adapter.source,
                            key="modules/layers/min_energy/keep_fraction", expected="at least one module kept", actual=f"all {len(names)} dropped")
    tensors: dict[str, torch.Tensor] = {}
    renamed: dict[str, str] = {}
    for key in adapter.tensors:
        parsed = adapter.kind.parse_key(key)
        if parsed is not None and parsed[0] in dropped:
            continue
        if parsed is None and feature_tensor(key) is not None and any(key.startswith(f"{PREFIX}{d}.") for d in dropped):
            continue  # a tensor a LoRA variant adds to a dropped module (VeLoRA's lora_velora_embed, KaSA's lora_diag)
        new = key
        if parsed is None and WRAPPER in key and key.startswith(PREFIX) and key[len(PREFIX): key.index(WRAPPER)] in dropped:
            new = key.replace(WRAPPER, ".", 1)
            renamed[key] = new
        tensors[new] = adapter.tensors[key]
    changes: dict[str, Any] = {"exclude_modules": _exclusion(cfg.exclude_modules, [n for n in names if n in dropped], kept)}
    removed = []
    for field_name in ("rank_pattern", "alpha_pattern"):
        pattern = getattr(cfg, field_name, None)
        if pattern:
            changes[field_name] = {k: v for k, v in pattern.items() if any(pattern_key([k], n) == k for n in kept)}
            removed += [f"{field_name}[{k!r}]" for k in pattern if k not in changes[field_name]]
    result = Adapter.from_tensors(replace(cfg, **changes), tensors)
    report = PruneReport(tuple(kept), dropped, shares, adapter.parameter_count(), result.parameter_count(),
                         changes["exclude_modules"], tuple(removed), renamed)
    recorded = step("prune", modules=modules, layers=None if layers is None else sorted(wanted), min_energy=min_energy, keep_fraction=keep_fraction)
    return with_step(result, adapter, recorded), report
