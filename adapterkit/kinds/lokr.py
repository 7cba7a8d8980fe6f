"""LoKr (PEFT's ``LOKR``; LyCORIS's Kronecker-product adapter): ΔW = (W1 ⊗ W2) · alpha/r.

Keys ``base_model.model.<module>.<part>``; each side is stored whole or as a product:

- W1 (a, c): ``lokr_w1``, or ``lokr_w1_a`` (a, r) @ ``lokr_w1_b`` (r, c);
- W2 (b, d'): ``lokr_w2`` (b, d[, k1[, k2]]), or ``lokr_w2_a`` (b, r) @ ``lokr_w2_b`` (r, d')
  with d' = d·k1·k2 for a convolution (flattened), or, in the CP form (``use_effective_conv2d``),
  ``einsum("i j k l, i p, j r -> p r k l", lokr_t2 (r, r, k1, k2), lokr_w2_a (r, b), lokr_w2_b (r, d))``.

out = a·b and in = c·d, with (a, b) and (c, d) PEFT's ``factorization`` of out and in by
``decompose_factor``; PEFT stores W1 as a product only with ``decompose_both`` and r <
max(a, c)/2, and W2 as a product only when r < max(b, d)/2 (checked where the file tells the
sizes).  ΔW = kron(W1, W2) · scaling, reshaped to the base weight (a 4-D W2 takes W1 as
(a, c, 1, 1)); scaling = alpha / r with ``rank_pattern`` / ``alpha_pattern`` as LoRA's.  Merge and
unmerge add and subtract it, computed as PEFT's ``get_delta_weight`` does (bit-identical in
fp32).  ``rank_dropout``, ``rank_dropout_scale``, ``module_dropout`` and ``init_weights`` act only
in training.

Low rank in disguise: with W1 = U1·V1 and W2 = U2·V2 (a whole side as U = W, V = I or U = I,
V = W, whichever is smaller), kron(W1, W2) = kron(U1, U2) · kron(V1, V2): an exact LoRA of rank
rank(W1)·rank(W2) (:func:`lora_factors`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..arrays import is_numpy, to_float
from ..errors import Problem, UnsupportedError
from .base import BOOL, OPT_INT_LIST, OPT_STR_LIST, OPT_STR_OR_LIST, TARGETS, Kind, schema_field
from .lycoris import PREFIX, LycorisConfig, LycorisModule, einsum, grouped, key_parser, module_views, stray_keys
from .merging import Flat, prepare_targets, whole_module_names

if TYPE_CHECKING:
    import torch

    from ..adapter import Adapter

PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
INT = {"type": "integer"}


@dataclass(frozen=True)
class LoKrConfig(LycorisConfig):
    """PEFT's ``LoKrConfig`` fields that determine the tensors and their meaning."""

    peft_type = "LOKR"
    decompose_both: bool = schema_field(False, BOOL, doc="W1 stored as a product too (when r < max(a, c)/2)")
    decompose_factor: int = schema_field(-1, INT, doc="the factor out and in are split near (-1: near the square root)")
    use_effective_conv2d: bool = schema_field(False, BOOL, doc="convolutions with a kernel > 1 store W2 in the CP form")
    target_modules: Any = schema_field(None, TARGETS, doc="regex (string) or names/suffixes (list)")
    exclude_modules: Any = schema_field(None, TARGETS, doc="modules never adapted, same rule as target_modules")
    modules_to_save: Any = schema_field(None, OPT_STR_LIST, doc="modules stored whole")
    layers_to_transform: Any = schema_field(None, OPT_INT_LIST, doc="layer indices adapted")
    layers_pattern: Any = schema_field(None, OPT_STR_OR_LIST, doc="name of the layer list")

    def features(self) -> dict[str, Any]:
        return {"r": self.r, "alpha": self.alpha, "decompose_both": self.decompose_both,
                "decompose_factor": self.decompose_factor, "use_effective_conv2d": self.use_effective_conv2d,
                "rank_pattern_keys": len(self.rank_pattern), "alpha_pattern_keys": len(self.alpha_pattern)}


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """PEFT's (and LyCORIS's) split of ``dimension`` into m·n: ``factor`` and the rest where it
    divides, else the divisor pair nearest the square root with m at most ``factor``."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    if factor == -1:
        factor = dimension
    m, n = 1, dimension
    while m < n:
        new_m = m + 1
        while dimension % new_m:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > m + n or new_m > factor:
            break
        m, n = new_m, new_n
    return (n, m) if m > n else (m, n)


@dataclass(frozen=True)
class LoKrModule(LycorisModule):
    @property
    def cp(self) -> bool:
        return "lokr_t2" in self.keys


parse_key = key_parser(r"lokr_(?:w[12](?:_[ab])?|t2)")


def _grouped(adapter: Adapter) -> dict[str, dict[str, str]]:
    return grouped(adapter, parse_key)


def modules(adapter: Adapter) -> dict[str, LoKrModule]:
    return module_views(adapter, LoKrModule, parse_key)


# -- the structural rules ------------------------------------------------------------------------

def _sides(parts: dict[str, str]) -> tuple[str | None, str | None, str | None]:
    """(W1's form, W2's form, the first key missing for them): "whole" | "product" | "cp"."""
    if "lokr_w1" in parts:
        w1 = "whole"
    elif "lokr_w1_a" in parts or "lokr_w1_b" in parts:
        w1 = "product"
        if not {"lokr_w1_a", "lokr_w1_b"} <= parts.keys():
            return w1, None, "lokr_w1_a" if "lokr_w1_a" not in parts else "lokr_w1_b"
    else:
        return None, None, "lokr_w1"
    if "lokr_w2" in parts:
        return w1, "whole", None
    w2 = "cp" if "lokr_t2" in parts else "product"
    for need in ("lokr_w2_a", "lokr_w2_b"):
        if need not in parts:
            return w1, w2, need
    return w1, w2, None


def check(adapter: Adapter) -> list[Problem]:
    cfg: LoKrConfig = adapter.config  # type: ignore[assignment]
    problems: list[Problem] = []
    meta = adapter.tensors.meta
    groups = _grouped(adapter)
    rank_unknown = bool({"r", "rank_pattern", "decompose_both", "decompose_factor"} & cfg.unknown)

    def bad(code: str, message: str, key: str, expected: Any = None, actual: Any = None) -> None:
        problems.append(Problem(code, message, key=key, expected=expected, actual=actual))

    for name, parts in sorted(groups.items()):
        w1, w2, missing = _sides(parts)
        if missing is not None:
            bad("missing-partner", f"module `{name}` has no {missing}", next(iter(parts.values())),
                expected=PREFIX + name + "." + missing, actual="absent")
            continue
        extra = [p for p in parts if (w1 == "whole" and p in ("lokr_w1_a", "lokr_w1_b"))
                 or (w2 == "whole" and p in ("lokr_w2_a", "lokr_w2_b", "lokr_t2"))]
        if extra:
            bad("unexpected-key", f"module `{name}` stores a side both whole and as a product", parts[extra[0]])
            continue
        shape = {p: tuple(meta(k).shape) for p, k in parts.items()}
        r, r_key = cfg.rank_for(name)
        why = f" (rank_pattern matched {r_key!r})" if r_key is not None else ""
        problem = _shape_problem(shape, w1, w2, r, rank_unknown)
        if problem is not None:
            part, message, expected = problem
            bad("shape-mismatch", f"{part} of `{name}` {message}{why}", parts[part], expected=expected, actual=shape[part])
            continue
        if not rank_unknown:
            problem = _structure_problem(cfg, shape, w1, w2, r)
            if problem is not None:
                part, message = problem
                bad("shape-mismatch", f"`{name}`: {message}", parts[part], actual=shape[part])
    return problems + stray_keys(adapter, parse_key, "LoKr", PARTS, groups)


def _shape_problem(shape: dict[str, tuple[int, ...]], w1: str, w2: str, r: int, rank_unknown: bool):
    """(part, what is wrong, expected) for the first tensor off its form's shape, or None."""
    rr = None if rank_unknown else r
    want: dict[str, tuple[Any, ...]] = {}
    if w1 == "whole":
        want["lokr_w1"] = (None, None)
    else:
        a, c = shape["lokr_w1_a"][0] if len(shape["lokr_w1_a"]) == 2 else None, shape["lokr_w1_b"][-1]
        want |= {"lokr_w1_a": (a, rr), "lokr_w1_b": (rr, c)}
    if w2 == "product":
        want |= {"lokr_w2_a": (shape["lokr_w2_a"][0], rr), "lokr_w2_b": (rr, shape["lokr_w2_b"][-1])}
    elif w2 == "cp":
        b, d = shape["lokr_w2_a"][-1], shape["lokr_w2_b"][-1]
        kernel = shape["lokr_t2"][2:] if len(shape["lokr_t2"]) == 4 else (None, None)
        want |= {"lokr_w2_a": (rr, b), "lokr_w2_b": (rr, d), "lokr_t2": (rr, rr, *kernel)}
    for part, expected in want.items():
        got = shape[part]
        if len(got) != len(expected) or any(e is not None and e != g for e, g in zip(expected, got)):
            return part, f"does not fit rank {r} and its other factors" if not rank_unknown else "has the wrong shape", \
                tuple("*" if e is None else e for e in expected)
    if w2 == "whole" and len(shape["lokr_w2"]) not in (2, 3, 4):
        return "lokr_w2", "must be 2-D (Linear), 3-D (Conv1d) or 4-D (Conv2d)", "(b, d[, k1[, k2]])"
    return None


def _dims(shape: dict[str, tuple[int, ...]], w1: str, w2: str) -> tuple[int, int, int, int | None]:
    """(a, c, b, d): d None where W2 is a flattened product (d·k unknown)."""
    a, c = (shape["lokr_w1"] if w1 == "whole" else (shape["lokr_w1_a"][0], shape["lokr_w1_b"][1]))
    if w2 == "whole":
        return a, c, shape["lokr_w2"][0], shape["lokr_w2"][1]
    if w2 == "cp":
        return a, c, shape["lokr_w2_a"][1], shape["lokr_w2_b"][1]
    return a, c, shape["lokr_w2_a"][0], None


def _structure_problem(cfg: LoKrConfig, shape: dict[str, tuple[int, ...]], w1: str, w2: str, r: int):
    """(part, message) where the file's forms are not the ones PEFT builds for the config."""
    a, c, b, d = _dims(shape, w1, w2)
    product1 = cfg.decompose_both and r < max(a, c) / 2
    if (w1 == "product") != product1:
        part = "lokr_w1" if w1 == "whole" else "lokr_w1_a"
        rule = "decompose_both and r < max(a, c)/2"
        return part, f"W1 ({a}, {c}) is stored {'as a product' if w1 == 'product' else 'whole'}, but PEFT stores it " \
                     f"{'as a product' if product1 else 'whole'} here ({rule}: decompose_both={cfg.decompose_both}, r={r})"
    if w2 == "whole" or w2 == "cp":
        product2 = r < max(b, d) / 2
        if (w2 != "whole") != product2:
            part = "lokr_w2" if w2 == "whole" else "lokr_w2_a"
            return part, f"W2 ({b}, {d}) is stored {'whole' if w2 == 'whole' else 'as a product'}, but PEFT stores it " \
                         f"{'as a product' if product2 else 'whole'} here (r < max(b, d)/2: r={r})"
    elif r >= max(b, shape["lokr_w2_b"][1]) / 2:  # d ≤ d': PEFT would store it whole, Linear or convolution
        return "lokr_w2_a", f"W2 ({b}, {shape['lokr_w2_b'][1]}) is stored as a product, but PEFT stores it whole at r={r}"
    if (a, b) != factorization(a * b, cfg.decompose_factor):
        return "lokr_w1" if w1 == "whole" else "lokr_w1_a", \
            f"out = {a * b} splits as {factorization(a * b, cfg.decompose_factor)} (decompose_factor={cfg.decompose_factor}), not ({a}, {b})"
    if d is not None and (c, d) != factorization(c * d, cfg.decompose_factor):
        return "lokr_w1" if w1 == "whole" else "lokr_w1_b", \
            f"in = {c * d} splits as {factorization(c * d, cfg.decompose_factor)} (decompose_factor={cfg.decompose_factor}), not ({c}, {d})"
    return None


# -- the math ------------------------------------------------------------------------------------

def _factors(view: LoKrModule, device: Any) -> dict[str, torch.Tensor]:
    import torch

    first = view.tensor("lokr_w1" if "lokr_w1" in view.keys else "lokr_w1_a")
    ct = torch.float64 if first.dtype == torch.float64 else torch.float32
    return {p: view.tensor(p).to(device=device, dtype=ct) for p in view.keys}


def _sides_of(f: dict[str, Any], einsum) -> tuple[Any, Any]:
    w1 = f["lokr_w1"] if "lokr_w1" in f else f["lokr_w1_a"] @ f["lokr_w1_b"]
    if "lokr_w2" in f:
        w2 = f["lokr_w2"]
    elif "lokr_t2" in f:
        w2 = einsum("ijkl,ip,jr->prkl", f["lokr_t2"], f["lokr_w2_a"], f["lokr_w2_b"])
    else:
        w2 = f["lokr_w2_a"] @ f["lokr_w2_b"]
    return w1, w2


def delta_weight(adapter: Adapter, module: str, *, device: Any = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """ΔW as PEFT's ``get_delta_weight`` computes it: ``torch.kron(W1, W2)`` (W1 as (a, c, 1, 1)
    beside a 4-D W2), times the scaling; (a·b, c·d') for a 2-D W2, (a·b, c·d, *k) for a 4-D one.
    A 3-D W2 (a Conv1d's, stored whole) meets a 2-D W1, which ``torch.kron`` takes as (1, a, c):
    the result, (b, a·d, c·k), is what PEFT reshapes to the weight's (a·b, c·d, k), as here."""
    import torch

    view: LoKrModule = adapter.module(module)
    f = _factors(view, device)
    w1, w2 = _sides_of(f, torch.einsum)
    if w2.dim() == 4:
        w1 = w1.unsqueeze(2).unsqueeze(2)
    # a standard-strided copy: einsum's output can be contiguous in torch's sense (size-1 dimensions
    # ignored) with strides torch.kron cannot view, which makes PEFT's own get_delta_weight raise
    # (docs/differences.md: lokr-cp-kron-strides)
    out = _kron(w1, w2).mul_(view.scaling)
    if w2.dim() == 3:  # (b, a·d, c·k) as torch.kron gives it: the bytes of PEFT's reshape to (a·b, c·d, k)
        out = out.reshape(w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1], w2.shape[2])
    first = view.tensor("lokr_w1" if "lokr_w1" in view.keys else "lokr_w1_a")
    return out.to(dtype or first.dtype)


def _out_in(adapter: Adapter, view: LoKrModule) -> tuple[int, int, tuple[int, ...]]:
    """(out, in', kernel) from the header: in' = c·d' for a 2-D W2, c·d with the kernel otherwise."""
    meta = adapter.tensors.meta
    shape = {p: tuple(meta(k).shape) for p, k in view.keys.items()}
    a, c = shape["lokr_w1"] if "lokr_w1" in shape else (shape["lokr_w1_a"][0], shape["lokr_w1_b"][1])
    if "lokr_w2" in shape:
        w2 = shape["lokr_w2"]
        return a * w2[0], c * w2[1], w2[2:]
    if "lokr_t2" in shape:
        return a * shape["lokr_w2_a"][1], c * shape["lokr_w2_b"][1], shape["lokr_t2"][2:]
    return a * shape["lokr_w2_a"][0], c * shape["lokr_w2_b"][1], ()


def merge_shapes(adapter: Adapter, module: str) -> dict[str, tuple[tuple[int | None, ...], bool]]:
    """(out, in') or a convolution whose dimensions after the first multiply to in' for a 2-D W2;
    (out, in, *k) for a 3-/4-D W2 (a Conv1d's (out, in, k) for a CP core (r, r, k, 1))."""
    view: LoKrModule = adapter.module(module)
    out, inp, kernel = _out_in(adapter, view)
    if not kernel:
        return {"weight": ((out, Flat(inp)), True)}
    if len(kernel) == 2 and kernel[1] == 1:
        return {"weight": ((out, inp, Flat(kernel[0])), True)}
    return {"weight": ((out, inp, *kernel), True)}


def _apply(adapter: Adapter, module: str, targets: dict[str, torch.Tensor], weight: float, device: Any, sign: int) -> dict[str, torch.Tensor]:
    t = prepare_targets(adapter, module, targets, merge_shapes(adapter, module), device)
    W = t["weight"]
    delta = delta_weight(adapter, module, device=W.device, dtype=W.dtype).reshape(W.shape)
    if weight != 1:
        delta = delta * weight
    return {"weight": W + delta if sign > 0 else W - delta}


def merge(adapter: Adapter, module: str, targets: dict[str, torch.Tensor], *, weight: float = 1.0, device: Any = None,
          base: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """W + weight·ΔW in fp32 (fp64 for fp64 factors): PEFT's ``weight.data += get_delta_weight()``.

    Raises:
        NotFoundError / TensorError: ``base-tensor-missing`` / ``base-shape-mismatch``.
    """
    return _apply(adapter, module, targets, weight, device, +1)


def unmerge(adapter: Adapter, module: str, targets: dict[str, torch.Tensor], *, weight: float = 1.0, device: Any = None) -> dict[str, torch.Tensor]:
    """W − weight·ΔW (PEFT's ``unmerge``)."""
    return _apply(adapter, module, targets, weight, device, -1)


def _kron(x: Any, y: Any) -> Any:
    if is_numpy(x):
        import numpy as np

        return np.kron(x, y)
    import torch

    return torch.kron(x.clone(memory_format=torch.contiguous_format), y.clone(memory_format=torch.contiguous_format))


def _eye(n: int, like: Any) -> Any:
    if is_numpy(like):
        import numpy as np

        return np.eye(n, dtype=like.dtype)
    import torch

    return torch.eye(n, dtype=like.dtype, device=like.device)


def lora_factors(adapter: Adapter, module: str, *, device: Any = None, fp64: bool = True) -> tuple[Any, Any]:
    """(B, A) with ΔW = scaling · B·A exactly: B (out, R) = kron(U1, U2) and A (R, in') =
    kron(V1, V2) (A (R, c·d, *k) for a 3-/4-D W2), R = rank(W1)·rank(W2) as stored."""
    view: LoKrModule = adapter.module(module)
    lora_factors_check(adapter, module)
    f = {p: to_float(view.tensor(p), fp64=fp64, device=device) for p in view.keys}
    if "lokr_w1" in f:
        w1 = f["lokr_w1"]
        U1, V1 = (w1, _eye(w1.shape[1], w1)) if w1.shape[1] <= w1.shape[0] else (_eye(w1.shape[0], w1), w1)
    else:
        U1, V1 = f["lokr_w1_a"], f["lokr_w1_b"]
    kernel: tuple[int, ...] = ()
    if "lokr_w2" in f:
        w2 = f["lokr_w2"]
        kernel = tuple(w2.shape[2:])
        flat = w2.reshape(w2.shape[0], -1)
        U2, V2 = (flat, _eye(flat.shape[1], flat)) if flat.shape[1] <= flat.shape[0] else (_eye(flat.shape[0], flat), flat)
    elif "lokr_t2" in f:
        t = f["lokr_t2"]
        kernel = tuple(t.shape[2:])
        U2 = f["lokr_w2_a"].T  # (b, r)
        V2 = einsum("ijkl,jc->ickl", t, f["lokr_w2_b"]).reshape(t.shape[0], -1)  # (r, d·k1·k2)
    else:
        U2, V2 = f["lokr_w2_a"], f["lokr_w2_b"]
    B, A = _kron(U1, U2), _kron(V1, V2)
    if kernel:
        c, d = V1.shape[1], V2.shape[1] // _prod(kernel)
        A = A.reshape(A.shape[0], c * d, *kernel)
    return B, A


def kron_svd(adapter: Adapter, module: str, *, device: Any = None):
    """The exact SVD of the module's ΔW = s·kron(W1, W2) as a matrix (out × in'), from the SVDs
    of the two small sides: kron(U1 S1 V1ᵀ, U2 S2 V2ᵀ) = kron(U1, U2)·kron(S1, S2)·kron(V1, V2)ᵀ,
    the products of singular values sorted (fp64; each side keeps its stored rank).  Returns
    (``linalg.LowRankSVD``, the kernel of a 4-D W2 or ()), for truncating without the big QRs a
    factored SVD of the LoRA form needs.

    Raises:
        UnsupportedError: as :func:`lora_factors`, for a Conv1d's 3-D W2."""
    import torch

    from ..linalg import LowRankSVD

    lora_factors_check(adapter, module)
    view: LoKrModule = adapter.module(module)
    f = {p: to_float(view.tensor(p), fp64=True, device=device) for p in view.keys}
    w1, w2 = _sides_of(f, torch.einsum)
    kernel = tuple(w2.shape[2:])
    w2 = w2.reshape(w2.shape[0], -1)
    r1 = f["lokr_w1_a"].shape[1] if "lokr_w1_a" in f else min(w1.shape)
    r2 = (f["lokr_w2_a"].shape[0 if "lokr_t2" in f else 1] if "lokr_w2" not in f else min(w2.shape))
    sides = []
    for w, r in ((w1, r1), (w2, r2)):
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        sides.append((u[:, :r], s[:r], vh[:r]))
    (u1, s1, v1), (u2, s2, v2) = sides
    S = torch.kron(s1, s2) * abs(view.scaling)
    order = torch.argsort(S, descending=True, stable=True)
    sign = -1.0 if view.scaling < 0 else 1.0
    return LowRankSVD(_kron(u1, u2)[:, order] * sign, S[order], _kron(v1, v2)[order]), kernel


def lora_factors_check(adapter: Adapter, module: str) -> None:
    """Refuses by name the one storage form with no Kronecker-structured LoRA form (a Conv1d's
    3-D W2 stored whole; see :func:`delta_weight`)."""
    view: LoKrModule = adapter.module(module)
    if "lokr_w2" in view.keys and len(adapter.meta(view.keys["lokr_w2"]).shape) == 3:
        raise UnsupportedError(f"`{module}`: LoKr on a Conv1d with W2 stored whole (3-D): PEFT multiplies a 2-D W1 by it "
                               "as torch.kron does (W1 as (1, a, c)), then reshapes, which interleaves the kernel with "
                               "the channels; that ΔW is merged exactly, but has no Kronecker-structured LoRA form",
                               path=adapter.source, key=view.keys["lokr_w2"], expected="a 2-D or 4-D lokr_w2",
                               actual=tuple(adapter.meta(view.keys["lokr_w2"]).shape))


def _prod(xs: tuple[int, ...]) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def stats(adapter: Adapter, module: str, device: Any = None) -> dict[str, float]:
    """Rank, scaling, the rank of the exact LoRA form (rank(W1)·rank(W2) as stored) and
    ‖ΔW‖ = |s|·‖W1‖·‖W2‖ (the Frobenius norm of a Kronecker product), in fp64."""
    from ..arrays import norm

    view: LoKrModule = adapter.module(module)
    f = {p: to_float(view.tensor(p), fp64=True, device=device) for p in view.keys}
    w1, w2 = _sides_of(f, einsum)
    r1 = f["lokr_w1_a"].shape[1] if "lokr_w1_a" in f else min(w1.shape)
    r2 = (f["lokr_w2_a"].shape[0 if "lokr_t2" in f else 1] if "lokr_w2" not in f
          else min(w2.shape[0], _prod(tuple(w2.shape[1:]))))
    out = {"rank": view.rank, "scaling": view.scaling, "lora_rank": int(r1 * r2),
           "delta_norm": abs(view.scaling) * float(norm(w1.reshape(-1))) * float(norm(w2.reshape(-1)))}
    if "lokr_w2" in f and len(w2.shape) == 3:  # PEFT's kron of a 2-D W1 and a 3-D W2: no LoRA form (lora_factors)
        del out["lora_rank"]
    return out


def whole_tensors(adapter: Adapter) -> dict[str, str]:
    return whole_module_names(adapter, PREFIX, parse_key)


KIND = Kind(
    peft_type="LOKR", config=LoKrConfig, parse_key=parse_key, modules=modules, check=check, stats=stats,
    delta_weight=delta_weight, whole_tensors=whole_tensors, merge=merge, unmerge=unmerge, merge_shapes=merge_shapes,
)
