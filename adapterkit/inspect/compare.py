"""How two adapters of one kind relate, module by module: ``diff``.

For LoRA, every module's ΔW = scaling·B·A is taken in factor form (B m×r, A r×n; the
layout of :mod:`adapterkit.ops.lowrank`: m is the output side, n the input side of the
layer, for Conv1D, embeddings and convolutions alike) and compared without forming the
m×n matrix, except for the sign count, which needs the entries:

* ``norm_a``, ``norm_b``: ‖ΔW‖_F, from the exact SVD of the factors.
* ``cosine``: ⟨ΔW_a, ΔW_b⟩_F / (‖ΔW_a‖_F·‖ΔW_b‖_F), with the inner product
  s_a·s_b·tr((B_aᵀB_b)(A_b A_aᵀ)) at a cost of r_a·r_b·(m + n) (s: the scalings); None when
  either ΔW is zero.
* ``col_angles`` / ``row_angles``: the principal angles (radians, ascending) between the
  column spaces of ΔW_a and ΔW_b (span of the output side) and between their row spaces
  (input side).  Each space has the orthonormal basis U (or V) of the module's exact SVD:
  B = Q_B·R_B and Aᵀ = Q_A·R_A in orthonormal frames, then the SVD of the r×r core
  scaling·R_B·R_Aᵀ, keeping the singular vectors whose σ exceeds ``1e-10·σ₁`` (the numerical
  rank, reported as ``rank_a``/``rank_b``); the cosines of the angles are the singular values
  of U_aᵀU_b, which needs only the frames' cross products Q_aᵀQ_b (r_a×r_b).  The frames come
  from the Gram matrices (XᵀX = WΛWᵀ, Q = X·WΛ^-½, R = Λ^½Wᵀ: one m×r product, no m×r result)
  when both factors of a side are well conditioned (κ ≤ 100, :data:`GRAM_RCOND`), else from
  thin QRs of B and Aᵀ (any rank).  There are min(rank_a, rank_b) angles, computed in fp64;
  arccos resolves angles near 0 to about 1e-7·κ rad (≤ 1e-5), larger ones far better.
* ``energy_in_col``: the fraction of ΔW_b's energy inside ΔW_a's column space,
  ‖P_a·ΔW_b‖²_F / ‖ΔW_b‖²_F with P_a = U_aU_aᵀ the orthogonal projector onto col(ΔW_a);
  ``energy_in_row`` likewise ‖ΔW_b·Q_a‖²_F / ‖ΔW_b‖²_F with Q_a = V_aV_aᵀ the projector onto
  row(ΔW_a).  1 when ΔW_b lies in that space, 0 when orthogonal to it; None when ΔW_b = 0.
  Not symmetric: ``diff(b, a)`` gives ΔW_a's energy inside ΔW_b's spaces.
* ``conflict``: the sign-conflict fraction TIES faces, #{(i, j): ΔW_a[i, j]·ΔW_b[i, j] < 0}
  / (m·n), the fraction of all entries where both are non-zero and of opposite sign (a zero
  entry never conflicts; the layout does not change it: ΔW as PEFT merges it is B·A,
  its transpose or its reshape, the same entries).  ``conflict="block"`` counts it exactly
  from row blocks of at most :data:`BLOCK_ELEMENTS` entries computed on ``device`` (in fp32,
  fp64 when a factor is stored so: an entry within rounding of zero may take the rounded
  sign), never the whole matrix; ``conflict="sample"`` counts
  ``sample_rows`` rows drawn without replacement (seeded by ``seed`` and the module name),
  and ``conflict_bound`` is ε such that the true fraction lies within ±ε of the estimate with
  probability at least ``confidence``: each row's conflict fraction lies in [0, 1] and the
  estimate is their mean over rows sampled without replacement, so Serfling's inequality
  (Hoeffding's, tightened for a finite population of m rows) gives
  ε = √(ln(2/(1 − confidence))·(1 − (k − 1)/m) / (2k)) for k of m rows.  A module with at most
  ``sample_rows`` rows is counted whole (ε = 0).  ``conflict="off"`` skips the count.

IA3 modules compare their vectors as deltas from the identity, l − 1 (the vectors themselves
all lie near 1, so their own cosine says nothing): norm, cosine and exact sign conflict.
Prompt-learning adapters compare their virtual-token embeddings: norm, cosine of the whole
tensors, ``token_cosines`` (one per virtual token, i.e. per row) and exact sign conflict.

Modules present in one adapter only are listed with their norm.  Different ranks, scalings
(rsLoRA, rank/alpha patterns) and dtypes compare as they are; LoRA biases (``lora_B.bias``)
and ``modules_to_save`` are not compared.  Not for DoRA, whose magnitude vector makes the
change depend on the base weight.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .. import arrays
from ..adapter import Adapter
from ..devices import resolve_device
from ..errors import ArgumentError, TensorError, UnsupportedError
from ..ops.lowrank import ModuleFactors, module_factors
from ..progress import progress
from ..threads import dense_work, factor_work, intra_op

if TYPE_CHECKING:
    import torch

BLOCK_ELEMENTS = 1 << 22  # entries of ΔW per row block of the sign count (16 MB in fp32)
RANK_RTOL = 1e-10  # singular values below this fraction of the largest are zero (the numerical rank)
GRAM_RCOND = 1e-4  # the Gram route only when every eigenvalue of XᵀX is this fraction of the largest (κ(X) ≤ 100)
CONFLICT_MODES = ("block", "sample", "off")


@dataclass(frozen=True)
class ModuleDiff:
    """One module of the comparison (see the module doc for each quantity's definition).

    Attributes:
        name: the module's name; ``present`` is ``both``, ``a`` or ``b``.
        shape: ΔW's matrix shape (m, n) for LoRA; the tensor's shape for IA3 and prompts.
        norm_a, norm_b: ‖ΔW‖_F of each (None where absent).
        inner: ⟨ΔW_a, ΔW_b⟩_F.
        cosine: inner / (norm_a·norm_b), None when a norm is zero.
        rank_a, rank_b: numerical ranks of ΔW_a and ΔW_b (LoRA).
        col_angles, row_angles: principal angles in radians, ascending (LoRA).
        energy_in_col, energy_in_row: fraction of ‖ΔW_b‖² inside ΔW_a's column / row space (LoRA).
        conflict: sign-conflict fraction over all m·n entries; None with ``conflict="off"``.
        conflict_bound: the ± error bound of a sampled ``conflict`` (0 when counted exactly).
        conflict_rows: the rows counted (all of them when exact).
        token_cosines: prompt-learning adapters: the cosine of each virtual token's embedding
            (None for a zero one).
    """

    name: str
    present: str
    shape: tuple[int, ...]
    norm_a: float | None = None
    norm_b: float | None = None
    inner: float | None = None
    cosine: float | None = None
    rank_a: int | None = None
    rank_b: int | None = None
    col_angles: tuple[float, ...] = ()
    row_angles: tuple[float, ...] = ()
    energy_in_col: float | None = None
    energy_in_row: float | None = None
    conflict: float | None = None
    conflict_bound: float | None = None
    conflict_rows: int | None = None
    token_cosines: tuple[float | None, ...] = ()


@dataclass(frozen=True)
class DiffReport:
    """The comparison of adapter ``a`` with adapter ``b``.

    Attributes:
        peft_type: the adapters' kind.
        a, b: labels (the source files, or ``A``/``B``).
        modules: one :class:`ModuleDiff` per module of either adapter, sorted by name.
        conflict_mode: ``block``, ``sample`` or ``off``; ``confidence`` of a sampled bound.
    """

    peft_type: str
    a: str
    b: str
    modules: tuple[ModuleDiff, ...]
    conflict_mode: str
    confidence: float

    @property
    def shared(self) -> list[ModuleDiff]:
        return [m for m in self.modules if m.present == "both"]

    @property
    def only_a(self) -> list[str]:
        return [m.name for m in self.modules if m.present == "a"]

    @property
    def only_b(self) -> list[str]:
        return [m.name for m in self.modules if m.present == "b"]

    @property
    def overlap(self) -> float | None:
        """The cosine of the two adapters as single vectors (every module's ΔW side by side,
        a module of one adapter only being zero in the other): Σ⟨ΔW_a, ΔW_b⟩ / (‖a‖·‖b‖), i.e.
        the modules' cosines weighted by ‖ΔW_a‖·‖ΔW_b‖.  None when either adapter is all zero."""
        na = sum((m.norm_a or 0.0) ** 2 for m in self.modules)
        nb = sum((m.norm_b or 0.0) ** 2 for m in self.modules)
        if na == 0 or nb == 0:
            return None
        return sum(m.inner or 0.0 for m in self.shared) / math.sqrt(na * nb)

    @property
    def energy_in_col(self) -> float | None:
        """Of ΔW_b's energy in the shared LoRA modules, the fraction inside ΔW_a's column spaces."""
        rows = [(m.energy_in_col, (m.norm_b or 0.0) ** 2) for m in self.shared if m.energy_in_col is not None]
        total = sum(w for _, w in rows)
        return sum(e * w for e, w in rows) / total if total else None

    def most_conflicting(self, n: int = 5) -> list[ModuleDiff]:
        """The ``n`` shared modules with the largest sign-conflict fraction (the lowest cosine
        first among equals, and when the conflict was not counted)."""
        def key(m: ModuleDiff) -> tuple[float, float]:
            return (-(m.conflict if m.conflict is not None else 0.0), m.cosine if m.cosine is not None else 1.0)
        return sorted(self.shared, key=key)[:n]

    def summary(self, top: int = 5) -> str:
        """One line: overlap, modules of one adapter only, and the modules that conflict most."""
        overlap = "undefined (an adapter is zero)" if self.overlap is None else f"{self.overlap:+.4f}"
        text = (f"{self.peft_type}: overlap (energy-weighted cosine) {overlap} over {len(self.shared)} shared modules, "
                f"{len(self.only_a)} only in A, {len(self.only_b)} only in B")
        if self.energy_in_col is not None:
            text += f"; {100 * self.energy_in_col:.1f}% of B's energy in A's column spaces"
        worst = self.most_conflicting(top)
        if worst and top > 0:
            def one(m: ModuleDiff) -> str:
                if m.conflict is None:
                    return f"{m.name} (cos {_fmt(m.cosine)})"
                bound = f" ± {100 * m.conflict_bound:.1f}%" if m.conflict_bound else ""
                return f"{m.name} ({100 * m.conflict:.1f}%{bound} signs conflict, cos {_fmt(m.cosine)})"
            label = "most conflicting" if self.conflict_mode != "off" else "least aligned"
            text += f"; {label}: " + ", ".join(one(m) for m in worst)
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "peft_type": self.peft_type, "a": self.a, "b": self.b, "conflict_mode": self.conflict_mode,
            "confidence": self.confidence if self.conflict_mode == "sample" else None,
            "overlap": self.overlap, "energy_in_col": self.energy_in_col, "only_a": self.only_a, "only_b": self.only_b,
            "modules": [{**asdict(m), "shape": list(m.shape), "col_angles": list(m.col_angles), "row_angles": list(m.row_angles),
                         "token_cosines": list(m.token_cosines)} for m in self.modules],
        }


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


# ----------------------------------------------------------------------------- shared pieces


@dataclass(frozen=True)
class _Options:
    device: torch.device | None
    conflict: str
    sample_rows: int
    seed: int
    confidence: float


def _label(adapter: Adapter, side: str) -> str:
    return str(adapter.source) if adapter.source is not None else side


def _incompatible(what: str, a: Adapter, b: Adapter, key: str, expected: Any, actual: Any) -> TensorError:
    return TensorError(f"{what} differs between {_label(a, 'A')} and {_label(b, 'B')}", code="adapters-incompatible",
                       path=_label(b, "B"), key=key, expected=expected, actual=actual)


def _cosine(inner: float, na: float, nb: float) -> float | None:
    return None if na == 0 or nb == 0 else max(-1.0, min(1.0, inner / (na * nb)))


def _sign_conflicts(Ma: torch.Tensor, Mb: torch.Tensor) -> int:
    """Entries where both are non-zero with opposite signs (sign(), so no product can underflow)."""
    import torch

    return int((torch.sign(Ma) * torch.sign(Mb) < 0).sum())


def _dense_module(name: str, va: torch.Tensor, vb: torch.Tensor, opts: _Options, **extra: Any) -> ModuleDiff:
    """IA3 and prompt tensors: small enough to compare whole (fp64), the conflict counted exactly."""
    na, nb, inner = arrays.norm(va), arrays.norm(vb), float((va * vb).sum())
    counted = opts.conflict != "off"
    return ModuleDiff(
        name, "both", tuple(va.shape), na, nb, inner, _cosine(inner, na, nb),
        conflict=_sign_conflicts(va, vb) / arrays.numel(va) if counted and arrays.numel(va) else (0.0 if counted else None),
        conflict_bound=0.0 if counted else None, conflict_rows=(int(va.shape[0]) if va.ndim else 1) if counted else None, **extra,
    )


# ----------------------------------------------------------------------------- LoRA


def _gram_frame(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """From G = XᵀX: (P, R) with Q = X·P orthonormal and X = Q·R (P = WΛ^-½, R = Λ^½Wᵀ for
    G = WΛWᵀ); None unless every eigenvalue is at least :data:`GRAM_RCOND` of the largest."""
    lam, W = arrays.eigh(G)
    if arrays.numel(lam) == 0 or float(lam[-1]) <= 0 or float(lam[0]) < GRAM_RCOND * float(lam[-1]):
        return None
    root = lam**0.5
    return W / root, root[:, None] * W.T


def _frames(Ya: torch.Tensor, Yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two factors of one side, given transposed (Y = Xᵀ: ra×m and rb×m, fp64, rows contiguous),
    in orthonormal frames: (Ra, Rb, QaᵀQb, XaᵀXb) with Xa = Qa·Ra and Xb = Qb·Rb.  From the Gram
    matrices when both are well conditioned (one r×m by m×r product each, no m×r result); else
    from thin QRs (exact for any rank)."""
    cross = Ya @ Yb.T
    fa, fb = _gram_frame(Ya @ Ya.T), _gram_frame(Yb @ Yb.T)
    if fa is not None and fb is not None:
        return fa[1], fb[1], fa[0].T @ cross @ fb[0], cross
    Qa, Ra = arrays.qr(Ya.T)
    Qb, Rb = arrays.qr(Yb.T)
    return Ra, Rb, Qa.T @ Qb, cross


def _core(RB: torch.Tensor, RA: torch.Tensor, scaling: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """ΔW = Q_B·(scaling·R_B·R_Aᵀ)·Q_Aᵀ: the core's SVD gives ΔW's singular values and, in the
    frames' coordinates, the bases of its column and row spaces, cut at the numerical rank."""
    Uc, S, Vch = arrays.svd((RB @ RA.T) * scaling)
    k = int((S > RANK_RTOL * S[0]).sum()) if arrays.numel(S) and float(S[0]) > 0 else 0
    return Uc[:, :k], S[:k], Vch[:k].T, math.sqrt(float((S**2).sum()))


def _factors(adapter: Adapter, name: str, dev: torch.device | None) -> tuple[ModuleFactors, torch.Tensor, torch.Tensor]:
    """The module's factors, and Bᵀ (r×m) and A (r×n) in fp64, rows contiguous (the layout in
    which their Gram products run fastest; the scaling is applied to the cores)."""
    f = module_factors(adapter, name, device=dev, what="diff")
    return f, arrays.to_float(f.B.T, fp64=True, contiguous=True), arrays.to_float(f.A, fp64=True)


def _angles(C: torch.Tensor) -> tuple[float, ...]:
    """Principal angles from the cross matrix of two orthonormal bases (ascending)."""
    if arrays.numel(C) == 0:
        return ()
    return arrays.angles(C)


def _rows_conflict(fa: ModuleFactors, fb: ModuleFactors, rows: torch.Tensor | None) -> int:
    """Sign conflicts over ``rows`` of ΔW (all when None), in row blocks of ≤ BLOCK_ELEMENTS entries."""
    import torch

    ct = torch.float64 if torch.float64 in (fa.B.dtype, fb.B.dtype) else torch.float32
    Ba, Aa = fa.B.to(ct) * fa.scaling, fa.A.to(ct)
    Bb, Ab = fb.B.to(ct) * fb.scaling, fb.A.to(ct)
    m, n = fa.shape
    count = m if rows is None else int(rows.numel())
    step = max(1, BLOCK_ELEMENTS // max(n, 1))
    conflicts = 0
    for start in range(0, count, step):
        if rows is None:
            ba, bb = Ba[start:start + step], Bb[start:start + step]
        else:
            sel = rows[start:start + step].to(Ba.device)
            ba, bb = Ba[sel], Bb[sel]
        conflicts += _sign_conflicts(ba @ Aa, bb @ Ab)
    return conflicts


def _serfling(k: int, population: int, confidence: float) -> float:
    """ε with P(|mean of k of ``population`` values in [0, 1] drawn without replacement − their
    mean| ≥ ε) ≤ 1 − confidence (Serfling 1974)."""
    return math.sqrt(math.log(2 / (1 - confidence)) * (1 - (k - 1) / population) / (2 * k))


def _lora_conflict(name: str, fa: ModuleFactors, fb: ModuleFactors, opts: _Options) -> tuple[float | None, float | None, int | None]:
    m, n = fa.shape
    if opts.conflict == "off":
        return None, None, None
    if m * n == 0:
        return 0.0, 0.0, m
    if opts.conflict == "block" or m <= opts.sample_rows:
        return _rows_conflict(fa, fb, None) / (m * n), 0.0, m
    import torch

    gen = torch.Generator().manual_seed((opts.seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
    rows = torch.randperm(m, generator=gen)[:opts.sample_rows].sort().values
    k = int(rows.numel())
    return _rows_conflict(fa, fb, rows) / (k * n), _serfling(k, m, opts.confidence), k


def _lora_norm(adapter: Adapter, name: str, opts: _Options) -> tuple[tuple[int, ...], float, int]:
    f, Bt, A = _factors(adapter, name, opts.device)
    RB, _, _, _ = _frames(Bt, Bt)
    RA, _, _, _ = _frames(A, A)
    _, S, _, norm = _core(RB, RA, f.scaling)
    return f.shape, norm, arrays.numel(S)


def _lora_compare(a: Adapter, b: Adapter, name: str, opts: _Options) -> ModuleDiff:
    (fa, Bta, Aa), (fb, Btb, Ab) = _factors(a, name, opts.device), _factors(b, name, opts.device)
    if (fa.layer_type, fa.shape, fa.a_tail) != (fb.layer_type, fb.shape, fb.a_tail):
        raise _incompatible(f"module `{name}`'s layer type or shape", a, b, name,
                            f"{fa.layer_type} {fa.shape} (lora_A tail {fa.a_tail})", f"{fb.layer_type} {fb.shape} (lora_A tail {fb.a_tail})")
    RBa, RBb, crossB, GB = _frames(Bta, Btb)  # output side: B_aᵀB_b among them
    RAa, RAb, crossA, GA = _frames(Aa, Ab)  # input side: A_a·A_bᵀ
    Ua, Sa, Va, na = _core(RBa, RAa, fa.scaling)
    Ub, Sb, Vb, nb = _core(RBb, RAb, fb.scaling)
    inner = fa.scaling * fb.scaling * float((GB * GA).sum())  # s_a·s_b·tr((B_aᵀB_b)(A_b A_aᵀ))
    col = Ua.T @ crossB @ Ub  # U_aᵀU_b: ka×kb
    row = Va.T @ crossA @ Vb  # V_aᵀV_b
    eb = float((Sb**2).sum())
    energy_col = energy_row = None
    if eb > 0:
        energy_col = float(((col * Sb[None, :]) ** 2).sum()) / eb
        energy_row = float(((row * Sb[None, :]) ** 2).sum()) / eb
    conflict, bound, rows = _lora_conflict(name, fa, fb, opts)
    return ModuleDiff(
        name, "both", fa.shape, na, nb, inner, _cosine(inner, na, nb), arrays.numel(Sa), arrays.numel(Sb),
        _angles(col), _angles(row), energy_col, energy_row, conflict, bound, rows,
    )


# ----------------------------------------------------------------------------- IA3 and prompt learning


def _ia3_vector(adapter: Adapter, name: str, opts: _Options) -> torch.Tensor:
    return arrays.to_float(adapter.module(name).ia3_l, fp64=True, device=opts.device) - 1


def _ia3_norm(adapter: Adapter, name: str, opts: _Options) -> tuple[tuple[int, ...], float, int | None]:
    v = _ia3_vector(adapter, name, opts)
    return tuple(v.shape), arrays.norm(v), None


def _ia3_compare(a: Adapter, b: Adapter, name: str, opts: _Options) -> ModuleDiff:
    va, vb = _ia3_vector(a, name, opts), _ia3_vector(b, name, opts)
    if va.shape != vb.shape:
        raise _incompatible(f"module `{name}`'s ia3_l shape", a, b, name, tuple(va.shape), tuple(vb.shape))
    return _dense_module(name, va, vb, opts)


def _prompt_tensor(adapter: Adapter, name: str, opts: _Options) -> torch.Tensor:
    return arrays.to_float(adapter.module(name).prompt_embeddings, fp64=True, device=opts.device)


def _prompt_norm(adapter: Adapter, name: str, opts: _Options) -> tuple[tuple[int, ...], float, int | None]:
    e = _prompt_tensor(adapter, name, opts)
    return tuple(e.shape), arrays.norm(e), None


def _prompt_compare(a: Adapter, b: Adapter, name: str, opts: _Options) -> ModuleDiff:
    ea, eb = _prompt_tensor(a, name, opts), _prompt_tensor(b, name, opts)
    if ea.shape != eb.shape:
        raise _incompatible("the virtual-token embeddings' shape", a, b, name, tuple(ea.shape), tuple(eb.shape))
    na, nb = arrays.norm(ea, axis=1), arrays.norm(eb, axis=1)
    dots = arrays.total(ea * eb, axis=1)
    tokens = tuple(_cosine(float(d), float(x), float(y)) for d, x, y in zip(dots, na, nb))
    return _dense_module(name, ea, eb, opts, token_cosines=tokens)


_Norm = Callable[[Adapter, str, _Options], tuple[tuple[int, ...], float, "int | None"]]
_Compare = Callable[[Adapter, Adapter, str, _Options], ModuleDiff]
_KINDS: dict[str, tuple[_Norm, _Compare]] = {
    "LORA": (_lora_norm, _lora_compare),
    "IA3": (_ia3_norm, _ia3_compare),
    "PROMPT_TUNING": (_prompt_norm, _prompt_compare),
    "P_TUNING": (_prompt_norm, _prompt_compare),
    "PREFIX_TUNING": (_prompt_norm, _prompt_compare),
}


# ----------------------------------------------------------------------------- the public function


def _device(a: Adapter, b: Adapter, device: Any, conflict: str) -> Any:
    """The torch device of the math; None for the torch-free path, where both adapters hold the
    numpy arrays of ``adapterkit.io.array_store`` (from ``load_arrays``): cosines, norms, angles
    and energies only, on the CPU."""
    from ..io.array_store import ArrayStore

    numpy_sides = [x for x in (a, b) if isinstance(x.tensors, ArrayStore)]
    if not numpy_sides:
        return resolve_device(device)
    if len(numpy_sides) == 1 or conflict != "off" or str(device or "cpu") != "cpu":
        raise ArgumentError(
            "adapters read without torch (load_arrays) compare on the CPU, both so, without sign conflicts; "
            "read them with load() for the rest", key="conflict" if conflict != "off" else "device",
            expected="conflict='off', device cpu, both adapters from load_arrays",
            actual=f"conflict={conflict!r}, device={device!r}, {len(numpy_sides)} of 2 from load_arrays")
    return None


def _as_lora(adapter: Adapter) -> Adapter:
    """A LoHa or LoKr adapter as the LoRA it equals (``ops.to_lora``, exact in fp64, plain-form
    modules as Linear: diff compares ΔW as matrices), with its source kept for the report; read
    into torch first if it came by the torch-free path.  Any other adapter as it is."""
    if adapter.peft_type not in ("LOHA", "LOKR"):
        return adapter
    from dataclasses import replace

    import torch

    from ..ops.to_lora import to_lora

    if hasattr(adapter.tensors, "raw"):  # numpy arrays (io.array_store)
        adapter = replace(adapter, tensors=type(adapter).from_tensors(
            adapter.config, {k: torch.from_numpy(adapter.tensors[k].copy()) for k in adapter.tensors}).tensors)
    return replace(to_lora(adapter, strict_layout=False)[0], source=adapter.source)


def diff(a: Adapter, b: Adapter, *, device: Any = "cpu", conflict: str = "block", sample_rows: int = 256, seed: int = 0,
         confidence: float = 0.95) -> DiffReport:
    """Compare adapter ``a`` with adapter ``b`` module by module (see the module doc).

    Args:
        a, b: adapters of the same kind (LoRA but not DoRA, IA3, or a prompt-learning kind);
            LoHa and LoKr adapters, with each other or with LoRA ones, as the LoRA each equals.
        device: where the math runs (the factors are moved there one module at a time).
        conflict: ``block`` (exact sign-conflict count, row block by row block), ``sample``
            (``sample_rows`` rows per module, with an error bound) or ``off``.
        sample_rows: rows counted per module in ``sample`` mode (≥ 1).
        seed: seeds the row sample (with the module name): the same inputs give the same report.
        confidence: of the sampled bound, in (0, 1).

    Returns:
        A :class:`DiffReport`; ``report.summary()`` is the one-line verdict.

    Raises:
        TensorError: ``adapters-incompatible`` for different kinds, or a module whose layer
            type or shape differs between the two (both named).
        ArgumentError: ``argument-invalid`` for an unknown ``conflict``, ``sample_rows`` < 1 or
            ``confidence`` outside (0, 1).
        UnsupportedError: ``not-supported`` for DoRA; ``device-unavailable`` for a bad device.
    """
    if conflict not in CONFLICT_MODES:
        raise ArgumentError("unknown conflict mode", key="conflict", expected=" | ".join(CONFLICT_MODES), actual=conflict)
    if isinstance(sample_rows, bool) or not isinstance(sample_rows, int) or sample_rows < 1:
        raise ArgumentError("sample_rows must be a positive integer", key="sample_rows", expected=">= 1", actual=sample_rows)
    if not 0 < confidence < 1:
        raise ArgumentError("confidence must lie strictly between 0 and 1", key="confidence", expected="(0, 1)", actual=confidence)
    a, b = _as_lora(a), _as_lora(b)  # LoHa / LoKr: compared as the LoRA each equals
    if a.peft_type != b.peft_type:
        raise _incompatible("the adapter kind", a, b, "peft_type", a.peft_type, b.peft_type)
    if a.peft_type not in _KINDS:
        raise UnsupportedError(f"diff does not compare {a.peft_type} adapters", path=_label(a, "A"), key="peft_type",
                               expected=" | ".join(_KINDS), actual=a.peft_type)
    opts = _Options(_device(a, b, device, conflict), conflict, sample_rows, seed, confidence)
    norm, compare = _KINDS[a.peft_type]
    names = sorted(set(a.modules) | set(b.modules))
    out = []
    shapes = [x.meta(k).shape for x in (a, b) for k in x.tensors if x.kind.parse_key(k) is not None]
    work = dense_work(shapes) if conflict != "off" else factor_work(shapes)  # the thread policy (adapterkit.threads)
    # numpy (the torch-free path) computes NaN silently, as torch does; torch's threads follow the policy
    with arrays.quiet() if hasattr(a.tensors, "raw") else intra_op(work):  # both numpy (io.array_store), or both torch
        for name in progress(names, desc="diff", total=len(names)):
            if name in a.modules and name in b.modules:
                out.append(compare(a, b, name, opts))
            else:
                side, adapter = ("a", a) if name in a.modules else ("b", b)
                shape, value, rank = norm(adapter, name, opts)
                out.append(ModuleDiff(name, side, shape, **{f"norm_{side}": value, f"rank_{side}": rank}))
    return DiffReport(a.peft_type, _label(a, "A"), _label(b, "B"), tuple(out), conflict, confidence)
