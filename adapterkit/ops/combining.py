"""Combining adapters into one: PEFT's ``add_weighted_adapter`` as a function of Adapters.

``combine(adapters, weights, method)`` returns a new Adapter whose modules are the union of
the inputs' (a module an adapter lacks counts as a zero ΔW).  LoRA methods, with ΔWᵢ =
sᵢ·Bᵢ·Aᵢ (sᵢ the module's scaling in adapter i, Bᵢ m×rᵢ, Aᵢ rᵢ×n; ``ops.lowrank``):

  cat                  B = [B₁ | B₂ | ...], A = [w₁s₁A₁; w₂s₂A₂; ...]: exactly Σ wᵢ·ΔWᵢ, rank Σrᵢ
  linear               exactly Σ wᵢ·ΔWᵢ, stored as ``cat``; with ``rank``, as ``svd`` at that rank
  svd                  the best rank-k approximation of Σ wᵢ·ΔWᵢ, from the factors
                       (``linalg.factored_svd``: the dense out×in matrix is never formed)
  ties, dare_linear,   PEFT's factor-space variants: the operator (``ops.task_arithmetic``) applied
  dare_ties,           to the A's with weights sign(wᵢsᵢ)·√|wᵢsᵢ| and to the B's with weights √|wᵢsᵢ|
  magnitude_prune      separately; factors zero-padded to the largest rank among the adapters
  ties_svd, dare_*_svd, the operator applied to the dense ΔWᵢ with weights wᵢ, then the best rank-k
  magnitude_prune_svd  approximation by a dense SVD (fp32 on ``device``)

SVD factors follow PEFT's convention (B = U·diag(S), A = Vh) and ``svd_clamp`` clamps them as
PEFT does.  IA3: ``linear`` only, ia3_l = Σ wᵢ·lᵢ over the adapters that hold the module
(PEFT's rule: an absent module contributes nothing, not the identity 1).

Where ours deliberately differs from PEFT (the ``linear`` method, rank patterns that reload,
different ranks zero-padded, ranks above min(out, in), one adapter, DARE seeded per module, list
and regex targets joined, ``modules_to_save`` refused, the 16M quantile limit, the SVD routine
options, ``target_parameters``): :mod:`adapterkit.differences` lists each case, with the test
that shows PEFT's result beside ours.  Details of ours that those entries rely on:
  * the result has scaling 1 (``lowrank.scaling_one_config``), so rsLoRA inputs give an
    adapter without ``use_rslora`` (PEFT 0.22.0 computes the same ΔW).
  * DARE masks come from one generator per module, seeded from (``seed``, module name)
    (:func:`module_seed`).  Per module, masks are drawn in PEFT's order and layout (all A's,
    then all B's; or the ΔW's as PEFT lays them out, (B·A)ᵀ for embeddings and fan_in_fan_out),
    then the biases' masks, so a module matches PEFT's result when PEFT's global generator is
    seeded with its module seed.
  * DoRA inputs and trained biases (``bias="all"|"lora_only"``) are refused (``not-supported``),
    as PEFT 0.22.0 refuses DoRA.  Base layers PEFT saves beside targeted embeddings are copies
    of the base and are kept (they must agree).
  * adapters whose saved ``fan_in_fan_out`` disagree on a module (PEFT's first and second
    adapters on GPT-2) are refused (``orientation-unknown``) unless ``fan_in_fan_out`` names the
    orientation: PEFT follows the live layer, which a file does not show (``ops.orientation``);
    the factors themselves combine alike in either orientation.

Bias (``lora_bias``): the bias of the result is Σ wᵢ·sᵢ·biasᵢ for cat, linear and svd, and for
the TIES/DARE/magnitude family the same operator applied to the vectors sᵢ·biasᵢ with weights
wᵢ: a task-vector merge treats every parameter of the task vector (TIES and DARE prune and
elect per tensor), and the bias is one that the low-rank factors do not carry.

Output: the first adapter's config with scaling 1 (``r = lora_alpha``, anchored patterns where
ranks differ), ``target_modules`` the union as PEFT builds it (lists: their union; a regex:
``(t₁)|(t₂)``, a list joining a regex becoming one), tensors in the first adapter's dtype,
computed in fp32 (fp64 inputs in fp64) on ``device``.  Where the adapters disagree on
``exclude_modules``, ``layers_to_transform`` or ``layers_pattern``, ``target_modules`` lists the
result's modules by full name instead (and those fields are cleared), so the result reloads.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..adapter import Adapter
from ..devices import resolve_device
from ..errors import ArgumentError, TensorError, UnsupportedError
from ..io.outputs import derived
from ..io.recipe import step
from ..kinds.lora import PREFIX
from ..kinds.patterns import matches_modules_to_save
from ..linalg import dense_svd, factored_svd
from ..progress import progress
from ..threads import factor_work, intra_op, svd_work
from .lowrank import ModuleFactors, all_factors, module_tensors, scaling_one_config
from .orientation import oriented_modules, with_orientation
from .task_arithmetic import SIGN_RULES, merge_tensors

METHODS = ("linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd",
           "magnitude_prune", "magnitude_prune_svd")
FACTOR_METHODS = ("ties", "dare_linear", "dare_ties", "magnitude_prune")  # the operator on A's and B's apart
DENSE_METHODS = tuple(m + "_svd" for m in FACTOR_METHODS)  # the operator on dense ΔW's, then an SVD
DENSITY_METHODS = FACTOR_METHODS + DENSE_METHODS
QUANTILE_LIMIT = 1 << 24  # torch.quantile refuses inputs with more elements


@dataclass(frozen=True)
class _Request:
    method: str
    rank: int | None
    density: float
    sign_rule: str
    seed: int
    svd_clamp: float | None
    device: torch.device


def _label(adapter: Adapter, i: int) -> str:
    """How errors name an adapter: its file, or its position for one built in memory."""
    return str(adapter.source) if adapter.source is not None else f"adapters[{i}]"


def module_seed(seed: int, module: str) -> int:
    """The DARE seed of one module: the first 8 bytes (little-endian) of SHA-256 of
    ``f"{seed}:{module}"``, less its top bit (a stable hash, the same in every process)."""
    digest = hashlib.sha256(f"{seed}:{module}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def quantile(x: torch.Tensor, q: float, *, limit: int = QUANTILE_LIMIT) -> torch.Tensor:
    """``torch.quantile(x, q)`` (linear interpolation) for a tensor of any size.

    Up to ``limit`` elements it is torch.quantile itself; above, the two order statistics
    around q·(N−1) (one ``kthvalue`` and one pass for the next value) are interpolated as torch
    does (the rank in x's dtype while N−1 is exact there, else in fp64): no sort of the whole tensor.
    """
    x = x.reshape(-1)
    if x.numel() <= limit:
        return torch.quantile(x, q)
    n = x.numel()
    exact = n - 1 <= 2 / torch.finfo(x.dtype).eps  # integers up to 2^24 (fp32) are exact
    rank = torch.tensor(q, dtype=x.dtype if exact else torch.float64, device=x.device) * (n - 1)
    below, above = int(rank.floor()), min(int(rank.ceil()), n - 1)
    low = torch.kthvalue(x, below + 1).values
    high = low  # the next order statistic: low again if it repeats, else the least value above it
    if above > below and int((x <= low).sum()) <= above:
        high = x[x > low].min()
    return torch.lerp(low, high, (rank - below).to(x.dtype))


def clamp_factors(B: torch.Tensor, A: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PEFT's ``svd_clamp``: hi = the q-quantile of the signed entries of B (= U·S) and A (= Vh)
    together; both clamped to [−hi, hi]."""
    hi = quantile(torch.cat([B.flatten(), A.flatten()]), q)
    return B.clamp(-hi, hi), A.clamp(-hi, hi)


# ----------------------------------------------------------------------------- arguments


def _check_arguments(adapters: Sequence[Adapter], weights: Sequence[float], method: str, rank: int | None,
                     density: float | None, majority_sign: str, seed: int, svd_clamp: float | None) -> list[float]:
    def bad(key: str, message: str, expected: Any, actual: Any) -> ArgumentError:
        return ArgumentError(message, key=key, expected=expected, actual=actual)

    if method not in METHODS:
        raise bad("method", "unknown combination method", " | ".join(METHODS), method)
    if not adapters:
        raise bad("adapters", "combine needs at least one adapter", ">= 1 adapter", 0)
    weights = list(weights)
    if len(weights) != len(adapters):
        raise bad("weights", "one weight per adapter", f"{len(adapters)} weights", len(weights))
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights):
        raise bad("weights", "weights must be finite numbers", "finite numbers", weights)
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
            raise bad("rank", "rank must be a positive integer", "> 0", rank)
        if method in ("cat", *FACTOR_METHODS):
            raise bad("rank", f"{method} keeps the adapters' ranks; rank applies to linear, svd and *_svd", "no rank", rank)
    if method in DENSITY_METHODS:
        if density is None or isinstance(density, bool) or not isinstance(density, (int, float)) or not 0 < density <= 1:
            raise bad("density", f"{method} needs a density in (0, 1]", "0 < density <= 1", density)
    elif density is not None:
        raise bad("density", f"{method} prunes nothing; density applies to {', '.join(DENSITY_METHODS)}", "no density", density)
    if majority_sign not in SIGN_RULES:
        raise bad("majority_sign", "unknown sign election rule", " | ".join(SIGN_RULES), majority_sign)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise bad("seed", "seed must be an integer", "an integer", seed)
    if svd_clamp is not None:
        if isinstance(svd_clamp, bool) or not isinstance(svd_clamp, (int, float)) or not 0 <= svd_clamp <= 1:
            raise bad("svd_clamp", "svd_clamp is a quantile in [0, 1]", "0 <= svd_clamp <= 1", svd_clamp)
        if method in ("cat", *FACTOR_METHODS) or (method == "linear" and rank is None):
            raise bad("svd_clamp", f"{method} computes no SVD; svd_clamp applies to svd, *_svd and linear with a rank", "no svd_clamp", svd_clamp)
    return [float(w) for w in weights]


# ----------------------------------------------------------------------------- config


def _as_regex(targets: Any) -> str:
    """A regex that PEFT's full match gives the same modules as ``targets`` (a regex or a list)."""
    if isinstance(targets, str):
        return targets
    return r"(.*\.)?(" + "|".join(re.escape(t) for t in targets) + ")"


def _union_targets(values: Sequence[Any]) -> Any:
    """PEFT's union of target_modules (or feedforward_modules): lists merge, regexes join."""
    given = [v for v in values if v is not None]
    if not given:
        return None
    if all(not isinstance(v, str) for v in given):
        return tuple(sorted({t for v in given for t in v}))
    return "|".join(f"({_as_regex(v)})" for v in given)


def _output_targets(adapters: Sequence[Adapter], modules: Sequence[str], fields: Sequence[str]) -> dict[str, Any]:
    """target_modules (and the other ``fields``: feedforward_modules) for the result."""
    out = {f: _union_targets([getattr(a.config, f) for a in adapters]) for f in fields}
    scoping = ("exclude_modules", "layers_to_transform", "layers_pattern")
    if any(len({repr(getattr(a.config, f, None)) for a in adapters}) > 1 for f in scoping):
        out["target_modules"] = tuple(modules)  # full names: exactly the result's modules
        out.update({f: None for f in scoping})
    return out


# ----------------------------------------------------------------------------- inputs


def _whole_tensors(adapters: Sequence[Adapter]) -> dict[str, torch.Tensor]:
    """The tensors stored whole that the result keeps: base layers PEFT saves beside targeted
    embeddings (copies of the base, which must agree).  modules_to_save and trained biases
    are refused (see the module doc)."""
    kept: dict[str, tuple[torch.Tensor, str]] = {}
    for i, adapter in enumerate(adapters):
        saved = getattr(adapter.config, "modules_to_save", None)
        for key in adapter.kind.whole_module_tensors(adapter):
            if key.endswith(".bias") or matches_modules_to_save(saved, key, PREFIX):
                raise UnsupportedError(
                    "the adapter stores a whole module (modules_to_save or a trained bias): a replacement, not a delta, "
                    "so it has no weighted combination", path=_label(adapter, i), key=key,
                    expected="LoRA/IA3 tensors only", actual="a whole-module tensor",
                )
            tensor = adapter.tensors[key]
            if key in kept and not torch.equal(kept[key][0], tensor):
                raise TensorError(
                    f"`{key}` is a saved copy of a base layer, and it differs between {kept[key][1]} and {_label(adapter, i)}: "
                    "the adapters were made for different base models", code="adapters-incompatible",
                    path=_label(adapter, i), key=key,
                )
            kept.setdefault(key, (tensor, _label(adapter, i)))
    return {k: t for k, (t, _) in kept.items()}


def _module_shape(adapter: Adapter, f: ModuleFactors) -> str:
    ffio = " fan_in_fan_out" if adapter.module(f.name).fan_in_fan_out else ""
    return f"{f.layer_type}{ffio} B{(f.shape[0], f.rank, *f.b_tail)} A{(f.rank, *f.a_tail)}"


def _check_shapes(adapters: Sequence[Adapter], factors: Sequence[dict[str, ModuleFactors]]) -> None:
    """One module must have one layer type and one ΔW shape in every adapter that holds it."""
    first: dict[str, tuple[tuple, str, int]] = {}
    for i, fs in enumerate(factors):
        for name, f in fs.items():
            sig = (f.layer_type, adapters[i].module(name).fan_in_fan_out, f.shape[0], f.a_tail, len(f.b_tail))
            if name not in first:
                first[name] = (sig, _module_shape(adapters[i], f), i)
            elif first[name][0] != sig:
                j = first[name][2]
                raise TensorError(
                    f"module `{name}` disagrees between adapters: {first[name][1]} in {_label(adapters[j], j)}, "
                    f"{_module_shape(adapters[i], f)} here", code="adapters-incompatible", path=_label(adapters[i], i),
                    key=name, expected=first[name][1], actual=_module_shape(adapters[i], f),
                )


def _check_lora(adapters: Sequence[Adapter]) -> None:
    for i, adapter in enumerate(adapters):
        if adapter.config.use_dora:
            raise UnsupportedError(
                "combine cannot express DoRA: its magnitude vector rescales W + ΔW by a norm that changes with ΔW, "
                "so DoRA adapters have no weighted sum", path=_label(adapter, i), key="use_dora", expected=False, actual=True,
            )


def _orient(adapters: Sequence[Adapter], fan_in_fan_out: bool | None) -> tuple[list[Adapter], bool | None]:
    """The adapters with one orientation per 2-D module, and the result's ``fan_in_fan_out``.

    PEFT ignores the saved flag (a Conv1D layer is transposed whatever it says, and it saves
    ``false`` for a second adapter on one), so adapters may disagree on it for one module: the
    factors combine alike in either orientation, but which flag is right is unknown without the
    base, so that is refused unless ``fan_in_fan_out`` says it (it then holds for every 2-D
    module).  The result's flag: ``fan_in_fan_out``, else the modules' common one (None where
    different modules carry different flags: the first adapter's stays, as in PEFT's own
    adapters that target Conv1D and Linear layers at once).
    """
    if fan_in_fan_out is not None:
        return [with_orientation(a, dict.fromkeys(oriented_modules(a), bool(fan_in_fan_out))) for a in adapters], bool(fan_in_fan_out)
    seen: dict[str, tuple[bool, int]] = {}
    for i, adapter in enumerate(adapters):
        for name in oriented_modules(adapter):
            flag = bool(adapter.module(name).fan_in_fan_out)
            if name in seen and seen[name][0] != flag:
                j = seen[name][1]
                raise UnsupportedError(
                    f"module `{name}` has fan_in_fan_out={str(seen[name][0]).lower()} in {_label(adapters[j], j)} and "
                    f"{str(flag).lower()} here; PEFT decides the orientation by the layer (a transformers Conv1D is "
                    "transposed whatever the flag; it saves false for a second adapter added to one), so one flag is "
                    "wrong and the adapters alone do not say which: say it with fan_in_fan_out "
                    "(CLI: --fan-in-fan-out true|false)", code="orientation-unknown", path=_label(adapter, i), key=name,
                    expected=seen[name][0], actual=flag,
                )
            seen.setdefault(name, (flag, i))
    flags = {flag for flag, _ in seen.values()}
    return list(adapters), (flags.pop() if len(flags) == 1 else None)


# ----------------------------------------------------------------------------- LoRA


@dataclass
class _Term:
    """One adapter's share of one module: ΔW = scaling·B·A, weight w, bias (m,) or None."""

    B: torch.Tensor
    A: torch.Tensor
    scaling: float
    weight: float
    bias: torch.Tensor | None


def _pad(t: torch.Tensor, rank: int, dim: int) -> torch.Tensor:
    missing = rank - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


def _svd_factors(svd: Any, rank: int, clamp: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    B, A = svd.factors(rank, balanced=False)
    return clamp_factors(B, A, clamp) if clamp is not None else (B, A)


def _work(method: str, terms: list[_Term]) -> float:
    """One module's largest kernel, for the thread policy: the dense ΔW's SVD for ``*_svd``, else
    the QRs of the stacked factors (the factored SVD; cat, linear and the factor methods do less)."""
    m, n = int(terms[0].B.shape[0]), int(terms[0].A.shape[1])
    if method in DENSE_METHODS:
        return svd_work(m, n)
    r = sum(int(t.A.shape[0]) for t in terms)
    return factor_work([(m, r), (n, r)])


def _lora_module(req: _Request, name: str, terms: list[_Term], rank: int, with_bias: bool,
                 transposed: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(B, A, bias) of module ``name`` of the result, at scaling 1.  ``transposed``: PEFT's ΔW of
    the module is (B·A)ᵀ (embeddings, fan_in_fan_out)."""
    method = req.method
    gen = None
    if method.startswith("dare"):  # one generator per module, on the tensors' device
        gen = torch.Generator(device=terms[0].B.device).manual_seed(module_seed(req.seed, name))
    biases = [t.bias * t.scaling if t.bias is not None else t.B.new_zeros(t.B.shape[0]) for t in terms] if with_bias else []
    op = method.removesuffix("_svd")
    if method in ("cat", "linear", "svd"):
        bias = sum((t.weight * b for t, b in zip(terms, biases)), terms[0].B.new_zeros(terms[0].B.shape[0])) if with_bias else None
        if method == "svd" or req.rank is not None:
            svd = factored_svd([(t.B, t.A * t.scaling) for t in terms], [t.weight for t in terms], device=req.device)
            return (*_svd_factors(svd, rank, req.svd_clamp), bias)
        B = torch.cat([t.B for t in terms], dim=1)
        A = torch.cat([t.A * (t.weight * t.scaling) for t in terms], dim=0)
        return B, A, bias
    if method in FACTOR_METHODS:
        r = max(t.A.shape[0] for t in terms)
        ws = [t.weight * t.scaling for t in terms]
        kw = {"density": req.density, "sign_rule": req.sign_rule, "generator": gen}
        A = merge_tensors(op, [_pad(t.A, r, 0) for t in terms], [math.sqrt(abs(w)) * (1 if w >= 0 else -1) for w in ws], **kw)
        B = merge_tensors(op, [_pad(t.B, r, 1) for t in terms], [math.sqrt(abs(w)) for w in ws], **kw)
    else:  # in the layout of PEFT's ΔW (transposed for embeddings and fan_in_fan_out): DARE draws in it
        deltas = [((t.B @ t.A).T if transposed else t.B @ t.A) * t.scaling for t in terms]
        kw = {"density": req.density, "sign_rule": req.sign_rule, "generator": gen}
        dense = merge_tensors(op, deltas, [t.weight for t in terms], **kw)
        B, A = _svd_factors(dense_svd(dense.T if transposed else dense, device=req.device), rank, req.svd_clamp)
    bias = merge_tensors(op, biases, [t.weight for t in terms], **kw) if with_bias else None
    return B, A, bias


def _combine_lora(adapters: Sequence[Adapter], weights: list[float], req: _Request) -> Adapter:
    _check_lora(adapters)
    whole = _whole_tensors(adapters)
    factors = [all_factors(a, device=req.device, what="combine") for a in adapters]
    _check_shapes(adapters, factors)
    names = sorted({n for fs in factors for n in fs})
    dtype = next((f.dtype for fs in factors for f in fs.values()), torch.float32)
    with_bias = any(a.config.lora_bias for a in adapters)
    rank = req.rank
    if rank is None and (req.method == "svd" or req.method in DENSE_METHODS):
        rank = max((f.rank for fs in factors for f in fs.values()), default=adapters[0].config.r)  # PEFT's: the largest
    tensors: dict[str, torch.Tensor] = dict(whole)
    ranks: dict[str, int] = {}
    for name in progress(names, desc="combine", total=len(names)):
        held = [(fs[name], w, i) for i, (fs, w) in enumerate(zip(factors, weights)) if name in fs]
        template = held[0][0]
        ct = torch.float64 if any(f.B.dtype == torch.float64 for f, _, _ in held) else torch.float32
        terms = [_Term(f.B.to(ct), f.A.to(ct), f.scaling, w, None if f.bias is None else f.bias.to(ct)) for f, w, _ in held]
        module_bias = with_bias and template.layer_type != "embedding"
        transposed = template.layer_type == "embedding" or adapters[held[0][2]].module(name).fan_in_fan_out
        with intra_op(_work(req.method, terms)):
            B, A, bias = _lora_module(req, name, terms, rank or 0, module_bias, transposed)
        tensors.update(module_tensors(template, B, A, bias, dtype=dtype))
        ranks[name] = int(A.shape[0])
    first = adapters[0].config
    config = scaling_one_config(
        first, ranks, lora_bias=with_bias, default_rank=rank,
        modules_to_save=None, bias="none", **_output_targets(adapters, names, ("target_modules",)),
    )
    return Adapter.from_tensors(config, tensors)


# ----------------------------------------------------------------------------- IA3


def _combine_ia3(adapters: Sequence[Adapter], weights: list[float], req: _Request) -> Adapter:
    if req.method != "linear":
        raise UnsupportedError("IA3 adapters combine by the weighted sum of their ia3_l vectors only (PEFT's rule)",
                               path=_label(adapters[0], 0), key="method", expected="linear", actual=req.method)
    if req.rank is not None:
        raise ArgumentError("IA3 vectors have no rank", key="rank", expected="no rank", actual=req.rank)
    whole = _whole_tensors(adapters)
    first_shape: dict[str, tuple[tuple[int, ...], int]] = {}
    sums: dict[str, torch.Tensor] = {}
    dtype = None
    for i, (adapter, w) in enumerate(zip(adapters, weights)):
        for name, view in adapter.modules.items():
            vec = view.ia3_l
            dtype = dtype or vec.dtype
            shape = tuple(vec.shape)
            if name in first_shape and first_shape[name][0] != shape:
                j = first_shape[name][1]
                raise TensorError(
                    f"module `{name}` disagrees between adapters: ia3_l {first_shape[name][0]} in {_label(adapters[j], j)}, "
                    f"{shape} here", code="adapters-incompatible", path=_label(adapter, i), key=name,
                    expected=first_shape[name][0], actual=shape,
                )
            first_shape.setdefault(name, (shape, i))
            ct = torch.float64 if vec.dtype == torch.float64 else torch.float32
            with intra_op(vec.numel()):  # a vector's scaling and sum: one thread
                term = vec.to(device=req.device, dtype=ct) * w
                sums[name] = sums[name] + term if name in sums else term
    tensors = dict(whole)
    for name in sorted(sums):
        tensors[f"{PREFIX}{name}.ia3_l"] = sums[name].to(device="cpu", dtype=dtype).contiguous()
    fields = _output_targets(adapters, sorted(sums), ("target_modules", "feedforward_modules"))
    return Adapter.from_tensors(replace(adapters[0].config, modules_to_save=None, **fields), tensors)


_COMBINERS: dict[str, Callable[[Sequence[Adapter], list[float], _Request], Adapter]] = {"LORA": _combine_lora, "IA3": _combine_ia3}


def combine(
    adapters: Sequence[Adapter], weights: Sequence[float], method: str = "svd", *, rank: int | None = None,
    density: float | None = None, majority_sign: str = "total", seed: int = 0, svd_clamp: float | None = None,
    device: Any = "cpu", names: Sequence[str | Path] | None = None, fan_in_fan_out: bool | None = None,
    base: str | Path | None = None,
) -> Adapter:
    """A new adapter combining ``adapters`` with ``weights`` (PEFT's ``add_weighted_adapter``;
    the module doc lists the methods and where ours deliberately differs from PEFT).

    Args:
        adapters: LoRA adapters (linear, Conv1D, embedding, convolution modules; rsLoRA,
            lora_bias, rank/alpha patterns, different ranks and module sets), or IA3 adapters.
        weights: one per adapter, any sign.
        method: one of :data:`METHODS` (IA3: ``linear`` only).
        rank: the result's rank for ``svd`` and ``*_svd`` (default: the largest rank among the
            inputs, as PEFT) and for ``linear`` (default: exact, rank Σrᵢ); not for the others.
        density: fraction of entries kept, in (0, 1]; required by the TIES/DARE/magnitude_prune
            methods, refused by the others.
        majority_sign: TIES' sign election, ``total`` or ``frequency``.
        seed: DARE's seed; each module's masks come from ``module_seed(seed, module)``.
        svd_clamp: PEFT's quantile clamp of the SVD factors, in [0, 1] (methods with an SVD).
        device: where to compute (fp32; fp64 inputs in fp64).  DARE's masks depend on the
            device's generator (CPU and CUDA draw differently).
        names: what to record as the inputs in the result's recipe, one per adapter (the paths or
            repo ids the user gave); default: each adapter's source, or ``adapters[i]``.
        fan_in_fan_out: the orientation of every 2-D module's base weight (True: (in, out), as
            transformers' Conv1D), and the result's flag; needed only where the adapters' saved
            flags disagree on a module (None: they must agree; see ``_orient``).
        base: for LoHa and LoKr inputs, which combine as the LoRA each equals (``to_lora``): a
            checkpoint of the base model, whose layers give a convolution's LoRA layout (without
            it their plain-form modules are taken as Linear layers).

    Returns:
        An Adapter held in memory (no source), valid, that PEFT loads: the first adapter's
        config with scaling 1, tensors in the first adapter's dtype; its recipe is one
        ``combine`` step (the inputs' own recipes nested as ``input_recipes``).

    Raises:
        ArgumentError: ``argument-invalid`` for an unknown method, a weight count (or names count)
            that differs from the adapter count, rank <= 0, a density outside (0, 1] or missing, an argument
            the method does not use.
        TensorError: ``adapters-incompatible`` for different kinds, or a module whose layer type
            or shapes differ between adapters (both named).
        UnsupportedError: ``not-supported`` for DoRA, prompt-learning adapters, modules_to_save,
            IA3 with a method other than linear; ``device-unavailable`` for a bad device;
            ``orientation-unknown`` where the adapters' fan_in_fan_out disagree on a module
            and ``fan_in_fan_out`` is not given.
    """
    weights = _check_arguments(adapters, weights, method, rank, density, majority_sign, seed, svd_clamp)
    adapters = _as_lora(adapters, device, base)
    kinds = {a.peft_type for a in adapters}
    if len(kinds) > 1:
        i = next(i for i, a in enumerate(adapters) if a.peft_type != adapters[0].peft_type)
        raise TensorError(f"adapters of different kinds cannot be combined ({adapters[0].peft_type} first)",
                          code="adapters-incompatible", path=_label(adapters[i], i), key="peft_type",
                          expected=adapters[0].peft_type, actual=adapters[i].peft_type)
    combiner = _COMBINERS.get(adapters[0].peft_type)
    if combiner is None:
        why = ("combine does not implement them yet" if adapters[0].kind.delta_weight is not None
               else "they have no weights to combine")
        raise UnsupportedError(f"{adapters[0].peft_type} adapters: {why} (LoRA and IA3 do)",
                               path=_label(adapters[0], 0), key="peft_type", expected="LORA | IA3", actual=adapters[0].peft_type)
    req = _Request(method, rank, 1.0 if density is None else float(density), majority_sign, seed, svd_clamp, resolve_device(device))
    labels = _names(adapters, names)
    oriented, flag = _orient(adapters, fan_in_fan_out)
    result = combiner(oriented, weights, req)
    if flag is not None and result.config.fan_in_fan_out != flag:
        result = replace(result, config=replace(result.config, fan_in_fan_out=flag))
    result = replace(result, recipe=(_step(adapters, labels, weights, req, density),))
    return derived(result, [(f"input adapter {i + 1}", a) for i, a in enumerate(adapters)])  # save never writes over them


def _as_lora(adapters: Sequence[Adapter], device: Any, base: str | Path | None) -> list[Adapter]:
    """LoHa and LoKr adapters, beside LoRA ones or alone, as the LoRA each equals
    (``ops.to_lora``: exact; F32 factors, F64 for F64 ones), keeping their source for errors and
    the recipe; with ``base`` each module in its layer's layout, else the plain-form modules as
    Linear LoRA.  Anything else is left for the kind checks."""
    from .to_lora import CONVERTIBLE, to_lora

    if not any(a.peft_type in CONVERTIBLE for a in adapters) or not all(a.peft_type in ("LORA", *CONVERTIBLE) for a in adapters):
        return list(adapters)
    out = []
    for a in adapters:
        if a.peft_type in CONVERTIBLE:
            fp64 = any(a.meta(k).dtype == "F64" for k in a.tensors if a.kind.parse_key(k) is not None)
            a = replace(to_lora(a, dtype="F64" if fp64 else "F32", base=base, device=device)[0], source=a.source)
        out.append(a)
    return out


def _names(adapters: Sequence[Adapter], names: Sequence[str | Path] | None) -> list[str]:
    if names is None:  # a PEFT folder by the folder's name
        return [str(a.source.parent if a.source is not None and a.source.name.startswith("adapter_model.") else _label(a, i))
                for i, a in enumerate(adapters)]
    if isinstance(names, (str, Path)) or len(names) != len(adapters):
        raise ArgumentError("give one name per adapter", key="names", expected=f"{len(adapters)} names", actual=names)
    return [str(n) for n in names]


def _step(adapters: Sequence[Adapter], labels: list[str], weights: list[float], req: _Request, density: float | None) -> dict[str, Any]:
    """The recipe step: what was asked (seed only for DARE, the sign election only for TIES)."""
    method = req.method
    return step(
        "combine", method=method, inputs=labels, weights=weights, rank=req.rank, density=density,
        majority_sign=req.sign_rule if "ties" in method else None, seed=req.seed if "dare" in method else None,
        svd_clamp=req.svd_clamp, input_recipes=[list(a.recipe) for a in adapters] if any(a.recipe for a in adapters) else None,
    )
