"""IA3: one learned scaling vector ``ia3_l`` per module.

Shapes: (out, 1) scales the output of an ordinary module; (1, in) scales the
input of a feedforward module (``feedforward_modules``, PEFT's plain-``endswith``
rule for lists); (1, C, 1, 1) / (1, C, 1, 1, 1) for Conv2d / Conv3d.  The effect
is W' = W·diag(l) or diag(l)·W, so there is no delta weight without the base
weight; ``stats`` reports ‖l − 1‖, the distance from the identity.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..arrays import numel, to_float
from ..errors import ConfigError, Problem, UnsupportedError
from .base import BOOL, OPT_STR_LIST, TARGETS, AdapterConfig, Kind, schema_field
from .merging import prepare_targets, whole_module_names
from .patterns import matches_feedforward, matches_modules_to_save

if TYPE_CHECKING:  # torch is imported by the functions that compute: opening and checking an adapter needs none
    import torch

    from ..adapter import Adapter, TensorStore

PREFIX = "base_model.model."
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.(?P<part>ia3_l)$")


@dataclass(frozen=True)
class IA3Config(AdapterConfig):
    """PEFT's ``IA3Config`` fields that determine the tensors and their meaning."""

    peft_type = "IA3"
    target_modules: Any = schema_field(None, TARGETS, doc="regex (string) or names/suffixes (list)")
    exclude_modules: Any = schema_field(None, TARGETS, doc="modules never adapted")
    feedforward_modules: Any = schema_field(None, TARGETS, doc="modules whose input is scaled; subset of targets")
    fan_in_fan_out: bool = schema_field(False, BOOL, doc="base weight stored (in, out)")
    modules_to_save: Any = schema_field(None, OPT_STR_LIST, doc="modules stored whole")

    def check(self, *, path: Any = None) -> None:
        ff, targets = self.feedforward_modules, self.target_modules
        if isinstance(ff, tuple) and isinstance(targets, tuple) and not set(ff) <= set(targets):
            raise ConfigError(
                "feedforward_modules must be a subset of target_modules", path=path,
                key="feedforward_modules", expected=f"subset of {list(targets)}", actual=list(ff),
            )

    def features(self) -> dict[str, Any]:
        ff = self.feedforward_modules
        return {"feedforward_modules": list(ff) if isinstance(ff, tuple) else ff, "fan_in_fan_out": self.fan_in_fan_out}

    def is_feedforward(self, module: str) -> bool:
        return matches_feedforward(self.feedforward_modules, module)


@dataclass(frozen=True)
class IA3Module:
    """One adapted module: its ``ia3_l`` key and whether it scales the input (feedforward)."""

    name: str
    key: str
    is_feedforward: bool
    store: TensorStore
    fan_in_fan_out: bool = False  # the base weight is (in, out), as transformers' Conv1D (2-D ia3_l only)

    @property
    def ia3_l(self) -> torch.Tensor:
        return self.store[self.key]


def parse_key(key: str) -> tuple[str, str] | None:
    m = _KEY.match(key)
    return (m["module"], m["part"]) if m else None


def modules(adapter: Adapter) -> dict[str, IA3Module]:
    cfg: IA3Config = adapter.config  # type: ignore[assignment]
    out = {}
    for key in sorted(adapter.tensors):
        parsed = parse_key(key)
        if parsed:
            out[parsed[0]] = IA3Module(parsed[0], key, cfg.is_feedforward(parsed[0]), adapter.tensors, bool(cfg.fan_in_fan_out))
    return out


def check(adapter: Adapter) -> list[Problem]:
    cfg: IA3Config = adapter.config  # type: ignore[assignment]
    problems: list[Problem] = []
    views = modules(adapter)
    for name, view in views.items():
        shape = adapter.meta(view.key).shape
        if len(shape) == 2 and {"feedforward_modules", "target_modules"} & cfg.unknown:
            ok, want = 1 in shape, "(out, 1) or (1, in)"  # which one depends on the invalid feedforward_modules
        elif len(shape) == 2:
            ok = shape[0] == 1 if view.is_feedforward else shape[1] == 1
            want = "(1, in) for a feedforward module" if view.is_feedforward else "(out, 1)"
        elif len(shape) in (4, 5):
            ok = shape[0] == 1 and all(d == 1 for d in shape[2:])
            want = f"(1, C{', 1' * (len(shape) - 2)})"
        else:
            ok, want = False, "2-D, 4-D or 5-D"
        if not ok:
            problems.append(Problem(
                "shape-mismatch", f"ia3_l for `{name}` has the wrong shape", key=view.key, expected=want, actual=shape,
            ))
    for key in adapter.tensors:
        if parse_key(key) is None and "modules_to_save" not in cfg.unknown and not matches_modules_to_save(cfg.modules_to_save, key, PREFIX):
            problems.append(Problem(
                "unexpected-key", "tensor is neither ia3_l nor part of modules_to_save", "warning", key=key,
                expected=f"{PREFIX}<module>.ia3_l",
            ))
    if not views:
        problems.append(Problem("empty-adapter", "the adapter has no ia3_l tensors", "warning"))
    return problems


def stats(adapter: Adapter, module: str, device: Any = None) -> dict[str, float]:
    view: IA3Module = adapter.module(module)
    vec = to_float(view.ia3_l, fp64=True, device=device)
    return {"size": numel(vec), "scale_distance": math.sqrt(float(((vec - 1) ** 2).sum()))}


def merge_shapes(adapter: Adapter, module: str) -> dict[str, tuple[tuple[int | None, ...], bool]]:
    """The base tensors a merge of ``module`` reads: the weight, whose scaled dimension
    ``ia3_l`` fixes (the output for ordinary modules, the input for feedforward ones, swapped
    under the module's fan_in_fan_out for 2-D weights), and — optional — the bias of an ordinary module."""
    view: IA3Module = adapter.module(module)
    shape = tuple(adapter.meta(view.key).shape)
    if len(shape) == 2:
        size = shape[1] if view.is_feedforward else shape[0]
        scaled_dim = (0 if view.is_feedforward else 1) if view.fan_in_fan_out else (1 if view.is_feedforward else 0)
        want: list[int | None] = [None, None]
    else:
        size = shape[1]
        scaled_dim = 1 if view.is_feedforward else 0
        want = [None] * len(shape)
    want[scaled_dim] = size
    out: dict[str, tuple[tuple[int | None, ...], bool]] = {"weight": (tuple(want), True)}
    if not view.is_feedforward:
        out["bias"] = ((size,), False)
    return out


def merge_roles(adapter: Adapter, module: str) -> tuple[str, ...]:
    """("weight",) for feedforward modules, ("weight", "bias") otherwise (the bias is optional)."""
    return tuple(merge_shapes(adapter, module))


def _scale(adapter: Adapter, module: str, W: torch.Tensor, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(s shaped to broadcast over W, s as stored) where s = l for weight=1, else 1 + weight·(l − 1)."""
    view: IA3Module = adapter.module(module)
    s = view.ia3_l.to(device=W.device, dtype=W.dtype)
    if weight != 1:
        s = 1 + weight * (s - 1)
    if s.dim() == 2:
        return (s.T if view.fan_in_fan_out else s), s
    return (s if view.is_feedforward else s.transpose(0, 1)), s


def merge(adapter: Adapter, module: str, targets: dict[str, torch.Tensor], *, weight: float = 1.0, device: Any = None,
          base: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """PEFT's IA3 merge in fp32 (fp64 for fp64 targets): W scaled by ``ia3_l`` along its output
    dimension (ordinary modules) or input dimension (feedforward), and, for ordinary modules,
    the bias scaled too when ``targets`` holds one.  ``base`` (what other adapters of the same
    merge started from) is not needed: IA3 scales whatever the layer computes so far.

    ``weight`` interpolates linearly between the base and the full merge: the scale is
    1 + weight·(l − 1), so W' = W + weight·(W·diag(l) − W), as LoRA's W + weight·ΔW; weight=1
    uses l itself (bit-identical to PEFT for fp32 bases), weight=0 leaves W unchanged.

    Raises:
        NotFoundError / TensorError: ``base-tensor-missing`` / ``base-shape-mismatch``.
    """
    import torch

    t = prepare_targets(adapter, module, targets, merge_shapes(adapter, module), device)
    W = t["weight"]
    scale, s = _scale(adapter, module, W, weight)
    out = {"weight": torch.mul(W, scale)}
    if "bias" in t:
        out["bias"] = torch.mul(t["bias"], s.reshape(t["bias"].shape))
    return out


def unmerge(adapter: Adapter, module: str, targets: dict[str, torch.Tensor], *, weight: float = 1.0, device: Any = None) -> dict[str, torch.Tensor]:
    """The inverse of ``merge``: divides by the scale.  Exact division (PEFT adds 1e-8 to l,
    which only matters for |l| near 1e-8); lossy where the scale is tiny, as rows or columns
    scaled towards zero lost their digits in the merge.

    Raises:
        UnsupportedError: ``not-supported`` when a scale is exactly zero (those rows or columns
            were erased by the merge).
        NotFoundError / TensorError: as ``merge``.
    """
    import torch

    t = prepare_targets(adapter, module, targets, merge_shapes(adapter, module), device)
    W = t["weight"]
    scale, s = _scale(adapter, module, W, weight)
    zeros = (s == 0).nonzero()
    if len(zeros):
        raise UnsupportedError(
            f"IA3 scale of `{module}` is exactly zero at {len(zeros)} position(s) (first: index {tuple(zeros[0].tolist())}); "
            "the merge erased those rows/columns, so it cannot be undone", key=module, path=adapter.source,
            expected="nonzero scales", actual="0",
        )
    out = {"weight": torch.div(W, scale)}
    if "bias" in t:
        out["bias"] = torch.div(t["bias"], s.reshape(t["bias"].shape))
    return out


def whole_tensors(adapter: Adapter) -> dict[str, str]:
    """adapter key -> base-relative name of the ``modules_to_save`` tensors."""
    return whole_module_names(adapter, PREFIX, parse_key)


KIND = Kind(
    peft_type="IA3", config=IA3Config, parse_key=parse_key, modules=modules, check=check, stats=stats,
    whole_tensors=whole_tensors, merge=merge, unmerge=unmerge, merge_shapes=merge_shapes,
)
