"""LoHa (PEFT's ``LOHA``; LyCORIS's Hadamard-product adapter): ΔW = (w1_a·w1_b) ⊙ (w2_a·w2_b) · alpha/r.

Keys: ``base_model.model.<module>.hada_w1_a`` / ``hada_w1_b`` / ``hada_w2_a`` / ``hada_w2_b``,
and ``hada_t1`` / ``hada_t2`` for a convolution with ``use_effective_conv2d`` (PEFT's "CP" form).

Shapes (r the module's rank, ``rank_pattern`` as LoRA's):

- plain (Linear; a Conv1d/Conv2d flattened, and any 1×1 convolution): w?_a (out, r),
  w?_b (r, in'), where in' is in_features, or in_channels·k (Conv1d) / in_channels·k1·k2
  (Conv2d).  ΔW = ((w1_a @ w1_b) * (w2_a @ w2_b)) * scaling, (out, in'), reshaped to the base
  weight's shape.
- CP (a Conv2d or Conv1d with kernel > 1 under ``use_effective_conv2d``): t? (r, r, k1, k2)
  (k2 = 1 for Conv1d), w?_a (r, out), w?_b (r, in).  rebuild? = einsum("i j k l, j r, i p ->
  p r k l", t?, w?_b, w?_a), ΔW = rebuild1 * rebuild2 * scaling, (out, in, k1, k2), reshaped
  to the base weight's shape.

scaling = alpha / r (``alpha_pattern`` as LoRA's).  Merge: W + ΔW; unmerge: W − ΔW, computed in
fp32 (fp64 for fp64 factors), the operations of PEFT's ``get_delta_weight`` in its order
(bit-identical to PEFT for fp32 factors and base).  ``rank_dropout`` and ``module_dropout`` act
only in training (inert).

Low rank in disguise: with P = w1_a·w1_b and Q = w2_a·w2_b, (P ⊙ Q)[o, i] = Σ_{k,l}
(w1_a[o,k]·w2_a[o,l])·(w1_b[k,i]·w2_b[l,i]), so ΔW = scaling · B·A with B (out, r²) the row-wise
Khatri–Rao product of w1_a and w2_a and A (r², in') that of w1_b and w2_b — an exact LoRA of
rank r² (:func:`lora_factors`); for the CP form B comes from w?_aᵀ the same way and A's kernel
positions from t?·w?_b.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..arrays import to_float
from ..errors import Problem
from .base import BOOL, OPT_INT_LIST, OPT_STR_LIST, OPT_STR_OR_LIST, TARGETS, Kind, schema_field
from .lycoris import PREFIX, LycorisConfig, LycorisModule, einsum, grouped, key_parser, module_views, stray_keys
from .merging import Flat, prepare_targets, whole_module_names

if TYPE_CHECKING:
    import torch

    from ..adapter import Adapter

PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")


@dataclass(frozen=True)
class LoHaConfig(LycorisConfig):
    """PEFT's ``LoHaConfig`` fields that determine the tensors and their meaning."""

    peft_type = "LOHA"
    use_effective_conv2d: bool = schema_field(False, BOOL, doc="convolutions with a kernel > 1 carry hada_t1/hada_t2 (CP form)")
    target_modules: Any = schema_field(None, TARGETS, doc="regex (string) or names/suffixes (list)")
    exclude_modules: Any = schema_field(None, TARGETS, doc="modules never adapted, same rule as target_modules")
    modules_to_save: Any = schema_field(None, OPT_STR_LIST, doc="modules stored whole")
    layers_to_transform: Any = schema_field(None, OPT_INT_LIST, doc="layer indices adapted")
    layers_pattern: Any = schema_field(None, OPT_STR_OR_LIST, doc="name of the layer list")

    def features(self) -> dict[str, Any]:
        return {"r": self.r, "alpha": self.alpha, "use_effective_conv2d": self.use_effective_conv2d,
                "rank_pattern_keys": len(self.rank_pattern), "alpha_pattern_keys": len(self.alpha_pattern)}


@dataclass(frozen=True)
class LoHaModule(LycorisModule):
    @property
    def cp(self) -> bool:
        """The CP form (``hada_t1``/``hada_t2``: a convolution with use_effective_conv2d)."""
        return "hada_t1" in self.keys


parse_key = key_parser(r"hada_(?:w[12]_[ab]|t[12])")


def _grouped(adapter: Adapter) -> dict[str, dict[str, str]]:
    return grouped(adapter, parse_key)


def modules(adapter: Adapter) -> dict[str, LoHaModule]:
    return module_views(adapter, LoHaModule, parse_key)


def expected_shapes(adapter: Adapter, name: str, parts: dict[str, str]) -> dict[str, tuple[Any, ...]] | str:
    """part -> the shape the rules require, given the module's own w1 tensors (out, in and the
    kernel are read from them); a string saying what is wrong where they cannot be read."""
    cfg: LoHaConfig = adapter.config  # type: ignore[assignment]
    meta = adapter.tensors.meta
    r = cfg.rank_for(name)[0]
    a, b = tuple(meta(parts["hada_w1_a"]).shape), tuple(meta(parts["hada_w1_b"]).shape)
    if "hada_t1" in parts or "hada_t2" in parts:
        t = tuple(meta(parts.get("hada_t1") or parts["hada_t2"]).shape)
        if len(a) != 2 or len(b) != 2 or len(t) != 4:
            return "the CP form has 2-D hada_w tensors and 4-D hada_t tensors"
        out, inp, kernel = a[1], b[1], t[2:]
        return {"hada_w1_a": (r, out), "hada_w2_a": (r, out), "hada_w1_b": (r, inp), "hada_w2_b": (r, inp),
                "hada_t1": (r, r, *kernel), "hada_t2": (r, r, *kernel)}
    if len(a) != 2 or len(b) != 2:
        return "hada_w tensors are 2-D"
    out, inp = a[0], b[1]
    return {"hada_w1_a": (out, r), "hada_w2_a": (out, r), "hada_w1_b": (r, inp), "hada_w2_b": (r, inp)}


def check(adapter: Adapter) -> list[Problem]:
    cfg: LoHaConfig = adapter.config  # type: ignore[assignment]
    problems: list[Problem] = []
    meta = adapter.tensors.meta
    groups = _grouped(adapter)
    rank_unknown = bool({"r", "rank_pattern"} & cfg.unknown)
    for name, parts in sorted(groups.items()):
        required = ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"]
        if "hada_t1" in parts or "hada_t2" in parts:
            required += ["hada_t1", "hada_t2"]
        missing = [p for p in required if p not in parts]
        if missing:
            present = next(iter(parts.values()))
            problems.append(Problem("missing-partner", f"module `{name}` has no {missing[0]}", key=present,
                                    expected=PREFIX + name + "." + missing[0], actual="absent"))
            continue
        want = expected_shapes(adapter, name, parts)
        if isinstance(want, str):
            problems.append(Problem("shape-mismatch", f"`{name}`: {want}", key=parts["hada_w1_a"],
                                    expected=want, actual=tuple(meta(parts["hada_w1_a"]).shape)))
            continue
        r, r_key = cfg.rank_for(name)
        why = f" (rank_pattern matched {r_key!r})" if r_key is not None else ""
        for part in required:
            shape = tuple(meta(parts[part]).shape)
            if rank_unknown:  # the rank itself is reported; compare the other dimensions only
                continue
            if shape != want[part]:
                problems.append(Problem("shape-mismatch", f"{part} of `{name}` does not fit rank {r}{why} and its other factors",
                                        key=parts[part], expected=want[part], actual=shape))
    return problems + stray_keys(adapter, parse_key, "LoHa", PARTS, groups)


# -- the math ----------------------------------------------------------------------------------

def _compute_dtype(t: Any) -> Any:
    import torch

    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _factors(view: LoHaModule, device: Any) -> dict[str, torch.Tensor]:
    ct = _compute_dtype(view.tensor("hada_w1_a"))
    return {p: view.tensor(p).to(device=device, dtype=ct) for p in view.keys}


def delta_weight(adapter: Adapter, module: str, *, device: Any = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """ΔW of one module with PEFT's operations in PEFT's order: (out, in') for the plain form
    (a convolution's weight flattened), (out, in, k1, k2) for the CP form."""
    import torch

    view: LoHaModule = adapter.module(module)
    f = _factors(view, device)
    scale = torch.tensor(view.scaling, dtype=f["hada_w1_a"].dtype, device=f["hada_w1_a"].device)
    if view.cp:
        rebuild1 = torch.einsum("i j k l, j r, i p -> p r k l", f["hada_t1"], f["hada_w1_b"], f["hada_w1_a"])
        rebuild2 = torch.einsum("i j k l, j r, i p -> p r k l", f["hada_t2"], f["hada_w2_b"], f["hada_w2_a"])
        out = rebuild1 * rebuild2 * scale
    else:
        out = ((f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"])) * scale
    return out.to(dtype or view.tensor("hada_w1_a").dtype)


def merge_shapes(adapter: Adapter, module: str) -> dict[str, tuple[tuple[int | None, ...], bool]]:
    """The base weight: (out, in') for the plain form, or a convolution's (out, C, *k) with
    C·k = in' (``Flat``); (out, in, k1, k2) for the CP form, or a Conv1d's (out, in, k1) where
    k2 = 1."""
    view: LoHaModule = adapter.module(module)
    meta = adapter.tensors.meta
    if view.cp:
        out, inp = meta(view.keys["hada_w1_a"]).shape[1], meta(view.keys["hada_w1_b"]).shape[1]
        k1, k2 = meta(view.keys["hada_t1"]).shape[2:]
        return {"weight": ((out, inp, k1, k2) if k2 != 1 else (out, inp, Flat(k1)), True)}
    return {"weight": ((meta(view.keys["hada_w1_a"]).shape[0], Flat(meta(view.keys["hada_w1_b"]).shape[1])), True)}


def _fit(adapter: Adapter, module: str, targets: dict[str, torch.Tensor], device: Any) -> tuple[dict[str, torch.Tensor], tuple[int, ...]]:
    """The weight checked (``merge_shapes``) and shaped as ΔW is — (out, in') for the plain
    form, (out, in, k1, k2) for the CP form — in the compute dtype; and its own shape."""
    t = prepare_targets(adapter, module, targets, merge_shapes(adapter, module), device)
    W = t["weight"]
    view: LoHaModule = adapter.module(module)
    meta = adapter.tensors.meta
    if view.cp:
        return {"weight": W.reshape(W.shape[0], W.shape[1], *meta(view.keys["hada_t1"]).shape[2:])}, tuple(W.shape)
    return {"weight": W.reshape(W.shape[0], -1)}, tuple(W.shape)


def _apply(adapter: Adapter, module: str, targets: dict[str, torch.Tensor], weight: float, device: Any, sign: int) -> dict[str, torch.Tensor]:
    t, shape = _fit(adapter, module, targets, device)
    W = t["weight"]
    delta = delta_weight(adapter, module, device=W.device, dtype=W.dtype)
    if weight != 1:
        delta = delta * weight
    return {"weight": (W + delta if sign > 0 else W - delta).reshape(shape)}


def merge(adapter: Adapter, module: str, targets: dict[str, torch.Tensor], *, weight: float = 1.0, device: Any = None,
          base: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """W + weight·ΔW in fp32 (fp64 for fp64 factors), PEFT's ``base_layer.weight.data +=
    get_delta_weight()`` (bit-identical for an fp32 base and factors at weight 1).  ``base`` is
    not needed: the term does not depend on the weight.

    Raises:
        NotFoundError / TensorError: ``base-tensor-missing`` / ``base-shape-mismatch``.
    """
    return _apply(adapter, module, targets, weight, device, +1)


def unmerge(adapter: Adapter, module: str, targets: dict[str, torch.Tensor], *, weight: float = 1.0, device: Any = None) -> dict[str, torch.Tensor]:
    """W − weight·ΔW (PEFT's ``unmerge``)."""
    return _apply(adapter, module, targets, weight, device, -1)


def row_delta(adapter: Adapter, module: str, *, weight: float = 1.0, unmerge: bool = False,
              device: Any = None):
    """Rows of ±weight·ΔW of a plain-form module on a 2-D weight (``Kind.row_delta``): rows
    start:stop of ((w1_a @ w1_b) * (w2_a @ w2_b)) * scaling, the products of those rows of the
    a factors (blocks start on the sgemm row tiles: ``ops.merging``).  None for the CP form and
    fp64 factors."""
    import torch

    view: LoHaModule = adapter.module(module)
    if view.cp or adapter.meta(view.keys["hada_w1_a"]).dtype == "F64":
        return None
    factors: dict[str, torch.Tensor] = {}

    def fill(start: int, stop: int, out: torch.Tensor) -> None:
        if not factors:
            factors.update(_factors(view, device))
        f = factors
        torch.mm(f["hada_w1_a"][start:stop], f["hada_w1_b"], out=out)
        out.mul_(f["hada_w2_a"][start:stop] @ f["hada_w2_b"])
        out.mul_(torch.tensor(view.scaling, dtype=out.dtype, device=out.device))
        if weight != 1:
            out.mul_(weight)
        if unmerge:
            out.neg_()

    return fill


def lora_factors(adapter: Adapter, module: str, *, device: Any = None, fp64: bool = True) -> tuple[Any, Any]:
    """(B, A) with ΔW = scaling · B·A exactly: B (out, r²) and A (r², in') for the plain form,
    B (out, r²) and A (r², in, k1, k2) for the CP form (PEFT's conv LoRA layout without B's
    1×1 kernel), in fp64 by default (the products of two fp32 values are exact in fp64)."""
    view: LoHaModule = adapter.module(module)
    f = {p: to_float(view.tensor(p), fp64=fp64, device=device) for p in view.keys}
    r = view.rank
    if view.cp:
        a1, a2 = f["hada_w1_a"].T, f["hada_w2_a"].T  # (out, r)
        B = (a1[:, :, None] * a2[:, None, :]).reshape(a1.shape[0], r * r)
        m1 = einsum("ijkl,jc->ickl", f["hada_t1"], f["hada_w1_b"])  # (r, in, k1, k2)
        m2 = einsum("ijkl,jc->ickl", f["hada_t2"], f["hada_w2_b"])
        A = (m1[:, None] * m2[None, :]).reshape(r * r, *m1.shape[1:])
        return B, A
    a1, a2 = f["hada_w1_a"], f["hada_w2_a"]
    B = (a1[:, :, None] * a2[:, None, :]).reshape(a1.shape[0], r * r)
    b1, b2 = f["hada_w1_b"], f["hada_w2_b"]
    A = (b1[:, None, :] * b2[None, :, :]).reshape(r * r, b1.shape[1])
    return B, A


def stats(adapter: Adapter, module: str, device: Any = None) -> dict[str, float]:
    """Rank, scaling, the rank of the exact LoRA form (r²) and ‖ΔW‖ from its Gram matrices."""
    from .lora import factor_norm

    view: LoHaModule = adapter.module(module)
    B, A = lora_factors(adapter, module, device=device)
    return {"rank": view.rank, "scaling": view.scaling, "lora_rank": view.rank ** 2,
            "delta_norm": abs(view.scaling) * factor_norm(A, B, device)}


def whole_tensors(adapter: Adapter) -> dict[str, str]:
    """adapter key -> base-relative name of the ``modules_to_save`` tensors."""
    return whole_module_names(adapter, PREFIX, parse_key)


KIND = Kind(
    peft_type="LOHA", config=LoHaConfig, parse_key=parse_key, modules=modules, check=check, stats=stats,
    delta_weight=delta_weight, whole_tensors=whole_tensors, merge=merge, unmerge=unmerge, merge_shapes=merge_shapes,
    row_delta=row_delta,
)
