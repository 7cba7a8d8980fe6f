"""What the mergeable kinds share: checking the base tensors a merge is handed.

A merge receives the base tensors of one module keyed by role (``"weight"``, and
``"bias"`` where the adapter changes it), in the checkpoint's layout.  These
helpers check them against the shapes the adapter implies (``merge_shapes``) and
bring them to the compute dtype: fp32, or fp64 for fp64 inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import NotFoundError, TensorError

if TYPE_CHECKING:  # torch is imported by the functions that compute: opening and checking an adapter needs none
    import torch

    from ..adapter import Adapter

Shapes = Mapping[str, tuple[tuple[int | None, ...], bool]]


class Flat(int):
    """The last entry of a wanted shape that may also be several dimensions whose product is
    this number: a convolution's (out, C, *k) weight where the adapter sees it flattened to
    (out, C·k) (LoHa and LoKr without the CP form)."""


def shape_fits(shape: tuple[int, ...], want: tuple[int | None, ...]) -> bool:
    """Whether ``shape`` matches ``want``, where None stands for any size."""
    if want and isinstance(want[-1], Flat) and len(shape) > len(want):
        head = len(want) - 1
        return shape_fits(shape[:head], want[:head]) and math.prod(shape[head:]) == want[-1]
    return len(shape) == len(want) and all(w is None or w == s for s, w in zip(shape, want))


def shape_text(want: tuple[int | None, ...]) -> str:
    text = "(" + ", ".join("*" if w is None else str(w) for w in want) + ("," if len(want) == 1 else "") + ")"
    return text + (f" or a convolution whose dimensions after the first multiply to {want[-1]}" if want and isinstance(want[-1], Flat) else "")


def prepare_targets(adapter: Adapter, module: str, targets: Mapping[str, torch.Tensor], shapes: Shapes, device: Any) -> dict[str, torch.Tensor]:
    """The targets a merge of ``module`` uses, checked and converted to the compute dtype.

    Roles the module does not use are ignored; optional roles may be absent.

    Raises:
        NotFoundError: ``base-tensor-missing`` for a required role that is absent.
        TensorError: ``base-shape-mismatch`` for a tensor whose shape disagrees with the adapter.
    """
    import torch

    out = {}
    for role, (want, required) in shapes.items():
        t = targets.get(role)
        if t is None:
            if required:
                raise NotFoundError(
                    f"merging `{module}` needs the base {role}", code="base-tensor-missing", path=adapter.source,
                    key=module, expected=f"targets[{role!r}] {shape_text(want)}", actual="absent",
                )
            continue
        if not shape_fits(tuple(t.shape), want):
            raise TensorError(
                f"the base {role} does not fit the adapter's `{module}`", code="base-shape-mismatch", path=adapter.source,
                key=module, expected=shape_text(want), actual=tuple(t.shape),
            )
        ct = torch.float64 if t.dtype == torch.float64 else torch.float32
        out[role] = t.to(device=device, dtype=ct)
    return out


def whole_module_names(adapter: Adapter, prefix: str, parse_key: Any) -> dict[str, str]:
    """adapter key -> base-relative tensor name for every key under ``prefix`` that is not an
    adapter tensor (``parse_key`` gives None), with PEFT's ``.base_layer`` wrapper removed."""
    out = {}
    for key in adapter.tensors:
        if key.startswith(prefix) and parse_key(key) is None:
            name = key[len(prefix):]
            out[key] = ".".join(p for p in name.split(".") if p != "base_layer")
    return out
