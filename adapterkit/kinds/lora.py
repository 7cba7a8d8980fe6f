"""LoRA (and its DoRA, rsLoRA, lora_bias variants): config, key grammar, checks, ΔW.

Shapes (r is the module's rank after ``rank_pattern``):
  Linear / Conv1D   lora_A.weight (r, in)          lora_B.weight (out, r)   lora_B.bias (out,)
  Embedding         lora_embedding_A (r, vocab)    lora_embedding_B (dim, r)
  ConvNd            lora_A.weight (r, in, *k)      lora_B.weight (out, r, 1, ...)
  DoRA              lora_magnitude_vector (out,), or (1, out, 1, ...) for ConvNd
ΔW = B·A·scaling (transposed for ``fan_in_fan_out`` and embeddings), with
scaling = alpha / r, or alpha / sqrt(r) under ``use_rslora``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..arrays import to_float
from ..errors import ConfigError, Problem, TensorError, UnsupportedError
from .base import (
    BOOL,
    NUM_PATTERN,
    NUMBER,
    OPT_INT_LIST,
    OPT_STR_LIST,
    OPT_STR_OR_LIST,
    PATTERN,
    POS_INT,
    TARGETS,
    AdapterConfig,
    Kind,
    schema_field,
)
from .features import feature_shaped, feature_tensor
from .lora_keys import PARTS, PREFIX, parse_key
from .merging import prepare_targets, whole_module_names
from .patterns import matches_modules_to_save, matches_target, pattern_key, pattern_value

if TYPE_CHECKING:  # torch is imported by the functions that compute: opening and checking an adapter needs none
    import torch

    from ..adapter import Adapter, TensorStore



@dataclass(frozen=True)
class LoraConfig(AdapterConfig):
    """PEFT's ``LoraConfig`` fields that determine the tensors and their meaning."""

    peft_type = "LORA"
    r: int = schema_field(8, POS_INT, doc="default rank")
    lora_alpha: float = schema_field(8, NUMBER, doc="default alpha; scaling = alpha / r")
    target_modules: Any = schema_field(None, TARGETS, doc="regex (string) or names/suffixes (list)")
    exclude_modules: Any = schema_field(None, TARGETS, doc="modules never adapted, same rule as target_modules")
    rank_pattern: dict = schema_field({}, PATTERN, doc="module regex -> rank; first match in order wins")
    alpha_pattern: dict = schema_field({}, NUM_PATTERN, doc="module regex -> alpha; first match in order wins")
    use_rslora: bool = schema_field(False, BOOL, doc="scaling = alpha / sqrt(r)")
    use_dora: bool = schema_field(False, BOOL, doc="DoRA: modules carry lora_magnitude_vector")
    fan_in_fan_out: bool = schema_field(False, BOOL, doc="base weight stored (in, out), as transformers' Conv1D")
    lora_bias: bool = schema_field(False, BOOL, doc="modules carry lora_B.bias")
    bias: str = schema_field("none", {"enum": ["none", "all", "lora_only"]}, doc="which biases were trained")
    modules_to_save: Any = schema_field(None, OPT_STR_LIST, doc="modules stored whole")
    layers_to_transform: Any = schema_field(None, OPT_INT_LIST, doc="layer indices adapted")
    layers_pattern: Any = schema_field(None, OPT_STR_OR_LIST, doc="name of the layer list")

    def check(self, *, path: Any = None) -> None:
        for name in ("rank_pattern", "alpha_pattern"):
            for key in getattr(self, name):
                try:  # compiled as PEFT matches it (§8.3), not alone: `(?i)q_proj` fails, `\1` compiles
                    re.compile(rf"(.*\.)?({key})$")
                except re.error as exc:
                    raise ConfigError(f"pattern key is not a valid regex ({exc})", path=path, key=f"{name}[{key!r}]") from exc

    def features(self) -> dict[str, Any]:
        flags = {"DoRA": self.use_dora, "rsLoRA": self.use_rslora, "lora_bias": self.lora_bias, "fan_in_fan_out": self.fan_in_fan_out}
        return {
            "variants": [name for name, on in flags.items() if on],
            "r": self.r, "lora_alpha": self.lora_alpha, "use_dora": self.use_dora, "use_rslora": self.use_rslora,
            "lora_bias": self.lora_bias, "fan_in_fan_out": self.fan_in_fan_out, "bias": self.bias,
            "rank_pattern_keys": len(self.rank_pattern), "alpha_pattern_keys": len(self.alpha_pattern),
        }

    def rank_for(self, module: str) -> tuple[int, str | None]:
        """(rank, matching rank_pattern key) for ``module``, PEFT's rule."""
        return pattern_value(self.rank_pattern, module, self.r)

    def alpha_for(self, module: str) -> tuple[float, str | None]:
        return pattern_value(self.alpha_pattern, module, self.lora_alpha)

    def scaling_for(self, module: str) -> float:
        """PEFT's scaling: alpha / r, or alpha / sqrt(r) with ``use_rslora``."""
        r, _ = self.rank_for(module)
        alpha, _ = self.alpha_for(module)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


@dataclass(frozen=True)
class LoraModule:
    """One adapted module: its keys, rank, scaling and layer type.  Tensors are read on access."""

    name: str
    layer_type: str  # "linear" | "embedding" | "conv1d" | "conv2d" | "conv3d"
    rank: int
    alpha: float
    scaling: float
    fan_in_fan_out: bool
    keys: dict[str, str]  # part ("lora_A", "lora_B", "bias", "magnitude") -> tensor key
    store: TensorStore

    @property
    def lora_A(self) -> torch.Tensor:
        return self.store[self.keys["lora_A"]]

    @property
    def lora_B(self) -> torch.Tensor:
        return self.store[self.keys["lora_B"]]

    @property
    def bias(self) -> torch.Tensor | None:
        return self.store[self.keys["bias"]] if "bias" in self.keys else None

    @property
    def magnitude(self) -> torch.Tensor | None:
        return self.store[self.keys["magnitude"]] if "magnitude" in self.keys else None


@dataclass(frozen=True)
class TokenRows:
    """Trainable tokens (``trainable_token_indices``): new values for some rows of an embedding
    (or of a Linear's weight), ``token_adapter.trainable_tokens_delta`` of shape (len(indices), dim).
    PEFT's merge replaces the rows (``index_copy``); it adds nothing."""

    name: str
    indices: tuple[int, ...]
    key: str
    store: TensorStore
    layer_type: str = "tokens"

    @property
    def keys(self) -> dict[str, str]:
        return {"tokens": self.key}

    @property
    def values(self) -> torch.Tensor:
        return self.store[self.key]


TOKENS_PART = "token_adapter.trainable_tokens_delta"


def token_indices(cfg: LoraConfig, module: str) -> tuple[int, ...] | None:
    """The rows ``trainable_token_indices`` names for ``module``: a list applies to the input
    embedding (the module the tensor is saved under), a dict maps module names (or suffixes)."""
    spec = cfg.extra.get("trainable_token_indices")
    if isinstance(spec, list):
        return tuple(spec)
    if isinstance(spec, dict):
        for name, rows in spec.items():
            if module == name or module.endswith("." + name):
                return tuple(rows)
    return None


def _token_modules(adapter: Adapter) -> dict[str, TokenRows]:
    cfg: LoraConfig = adapter.config  # type: ignore[assignment]
    out = {}
    for key in adapter.tensors:
        if key.startswith(PREFIX) and key.endswith("." + TOKENS_PART):
            name = key[len(PREFIX): -len(TOKENS_PART) - 1]
            rows = token_indices(cfg, name)
            if rows is not None:
                out[name] = TokenRows(name, rows, key, adapter.tensors)
    return out


_ROLE = {
    "lora_A.weight": "lora_A",
    "lora_embedding_A": "lora_A",
    "lora_B.weight": "lora_B",
    "lora_embedding_B": "lora_B",
    "lora_B.bias": "bias",
    "lora_magnitude_vector": "magnitude",
}


def _grouped(adapter: Adapter) -> dict[str, dict[str, str]]:
    groups: dict[str, dict[str, str]] = {}
    for key in adapter.tensors:
        parsed = parse_key(key)
        if parsed:
            groups.setdefault(parsed[0], {})[parsed[1]] = key
    return groups


def _layer_type(adapter: Adapter, parts: dict[str, str]) -> str:
    if "lora_embedding_A" in parts or "lora_embedding_B" in parts:
        return "embedding"
    key = parts.get("lora_A.weight") or parts.get("lora_B.weight")
    ndim = len(adapter.meta(key).shape) if key else 2
    return {3: "conv1d", 4: "conv2d", 5: "conv3d"}.get(ndim, "linear")


def modules(adapter: Adapter) -> dict[str, LoraModule]:
    cfg: LoraConfig = adapter.config  # type: ignore[assignment]
    out = {}
    for name, parts in sorted(_grouped(adapter).items()):
        layer_type = _layer_type(adapter, parts)
        out[name] = LoraModule(
            name=name,
            layer_type=layer_type,
            rank=cfg.rank_for(name)[0],
            alpha=cfg.alpha_for(name)[0],
            scaling=cfg.scaling_for(name),
            fan_in_fan_out=cfg.fan_in_fan_out and layer_type == "linear",
            keys={_ROLE[p]: k for p, k in parts.items()},
            store=adapter.tensors,
        )
    for name, rows in _token_modules(adapter).items():
        if name not in out:  # LoRA and trainable tokens on one module: PEFT refuses to build it
            out[name] = rows
    return dict(sorted(out.items()))


def check(adapter: Adapter) -> list[Problem]:
    cfg: LoraConfig = adapter.config  # type: ignore[assignment]
    problems: list[Problem] = []

    def add(code: str, message: str, key: str, expected: Any = None, actual: Any = None, severity: str = "error"):
        problems.append(Problem(code, message, severity, None, key, expected, actual))

    groups = _grouped(adapter)
    meta = adapter.tensors.meta
    rank_unknown = bool({"r", "rank_pattern"} & cfg.unknown)  # an invalid config value, reported already
    own_shapes = feature_shaped(adapter)  # BD-LoRA, expert parameters: reported as features instead
    for name, parts in sorted(groups.items()):
        if name in own_shapes:
            continue
        embedding = "lora_embedding_A" in parts or "lora_embedding_B" in parts
        a_part, b_part = ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A.weight", "lora_B.weight")
        if embedding and ({"lora_A.weight", "lora_B.weight", "lora_B.bias"} & parts.keys()):
            stray = next(k for p, k in parts.items() if p in ("lora_A.weight", "lora_B.weight", "lora_B.bias"))
            add("unexpected-key", f"module `{name}` mixes embedding and linear LoRA tensors", stray)
            continue
        if a_part not in parts or b_part not in parts:
            missing = a_part if a_part not in parts else b_part
            present = parts.get(a_part) or parts.get(b_part) or next(iter(parts.values()))
            add("missing-partner", f"module `{name}` has no {missing}", present, expected=PREFIX + name + "." + missing, actual="absent")
            continue
        a_key, b_key = parts[a_part], parts[b_part]
        a, b = meta(a_key).shape, meta(b_key).shape
        r, r_key = cfg.rank_for(name)
        why = f" (rank_pattern matched {r_key!r})" if r_key is not None else ""
        if embedding or len(a) == 2:
            if len(a) != 2 or len(b) != 2:
                add("shape-mismatch", f"{'embedding' if embedding else 'linear'} LoRA factors must be 2-D", b_key if len(a) == 2 else a_key, expected="2-D", actual=f"{a} and {b}")
                continue
        elif len(a) not in (3, 4, 5) or len(b) != len(a) or any(d != 1 for d in b[2:]):
            add("shape-mismatch", f"conv LoRA for `{name}`: lora_B must be (out, r{', 1' * (len(a) - 2)}) beside lora_A {a}", b_key, expected=f"{len(a)}-D (out, r, 1, ...)", actual=b)
            continue
        if not embedding and len(a) > 2 and not rank_unknown and a[0] == r and 1 <= b[1] < r and r % b[1] == 0 and b[0] % (r // b[1]) == 0:
            add("groups-unsupported", f"`{name}` is LoRA on a grouped convolution (groups={r // b[1]}: lora_B is (out, r/groups, 1, ...)); ΔW is not defined for it", b_key, expected=f"(out, {r}, 1, ...)", actual=b)
            continue
        if a[0] != r and not rank_unknown:
            add("shape-mismatch", f"{a_part} for `{name}` has shape {a} but config r={r}{why}", a_key, expected=f"({r}, ...)", actual=a)
        if b[1] != r and not rank_unknown:
            add("shape-mismatch", f"{b_part} for `{name}` has shape {b} but config r={r}{why}", b_key, expected=f"(..., {r}, ...)", actual=b)
        if a[0] != b[1] and rank_unknown:
            add("shape-mismatch", f"{a_part} and {b_part} of `{name}` disagree on the rank", b_key, expected=f"(..., {a[0]}, ...)", actual=b)
        out = b[0]
        if "lora_bias" in cfg.unknown:
            pass
        elif "lora_B.bias" in parts:
            key = parts["lora_B.bias"]
            if not cfg.lora_bias:
                add("unexpected-key", "lora_B.bias present but config lora_bias=false", key, expected="lora_bias=true", actual="lora_bias=false")
            elif adapter.meta(key).shape != (out,):
                add("shape-mismatch", f"lora_B.bias for `{name}` must be (out,) beside lora_B {b}", key, expected=(out,), actual=adapter.meta(key).shape)
        elif cfg.lora_bias and not embedding:
            add("missing-partner", f"config lora_bias=true but module `{name}` has no lora_B.bias", b_key, expected=PREFIX + name + ".lora_B.bias", actual="absent")
        if "use_dora" in cfg.unknown:
            pass
        elif "lora_magnitude_vector" in parts:
            key = parts["lora_magnitude_vector"]
            want = (out,) if embedding or len(a) == 2 else (1, out) + (1,) * (len(a) - 2)
            if not cfg.use_dora:
                add("unexpected-key", "lora_magnitude_vector present but config use_dora=false", key, expected="use_dora=true", actual="use_dora=false")
            elif adapter.meta(key).shape != want:
                add("shape-mismatch", f"DoRA magnitude for `{name}` has the wrong shape", key, expected=want, actual=adapter.meta(key).shape)
        elif cfg.use_dora:
            add("missing-partner", f"config use_dora=true but module `{name}` has no lora_magnitude_vector", b_key, expected=PREFIX + name + ".lora_magnitude_vector", actual="absent")

    names = list(groups)
    for field_name in ("rank_pattern", "alpha_pattern"):
        pattern = getattr(cfg, field_name)
        for pkey in pattern:
            if not any(pattern_key([pkey], n) == pkey for n in names):
                add("pattern-unmatched", f"{field_name} key {pkey!r} matches no module of the adapter", f"{field_name}[{pkey!r}]", severity="warning")
        saved_order = sorted(pattern)
        for name in names:
            winner, after_save = pattern_key(pattern, name), pattern_key(saved_order, name)
            if winner != after_save and pattern[winner] != pattern[after_save]:
                add("pattern-order", f"{field_name} keys {winner!r} and {after_save!r} both match `{name}`; PEFT before 0.22 and adapterkit format 1.1 and earlier saved configs with sorted keys, after which {after_save!r} wins", f"{field_name}[{winner!r}]", severity="warning")
    whole_unknown = {"modules_to_save", "target_modules", "bias"} & cfg.unknown
    grouped = {k for parts in groups.values() for k in parts.values()}  # exactly the keys parse_key accepts
    for name, param in ((n, p) for n in sorted(groups) for p in ("weight", "bias")):  # PEFT wraps the module as base_layer
        if PREFIX + name + "." + param in adapter.tensors:
            add("unexpected-key", f"`{name}` has LoRA factors, so PEFT loads its {param} from `{name}.base_layer.{param}` and "
                f"ignores `{name}.{param}`", PREFIX + name + "." + param, expected=f"{PREFIX}{name}.base_layer.{param}",
                actual=PREFIX + name + "." + param)
    for key in adapter.tensors:
        if key not in grouped and not whole_unknown and not _whole_module_ok(cfg, key) and feature_tensor(key) is None:
            add("unexpected-key", "tensor is neither a LoRA tensor nor part of modules_to_save", key, expected=f"{PREFIX}<module>.{{{','.join(PARTS)}}}", actual=key, severity="warning")
    for key in adapter.tensors:
        if key.startswith(PREFIX) and key.endswith("." + TOKENS_PART) and "trainable_token_indices" not in cfg.unknown:
            module = key[len(PREFIX): -len(TOKENS_PART) - 1]
            rows, shape = token_indices(cfg, module), adapter.meta(key).shape
            if rows is None:
                add("unexpected-key", f"trainable tokens for `{module}` but config trainable_token_indices names no rows of it", key,
                    expected=f"trainable_token_indices naming `{module}`", actual=cfg.extra.get("trainable_token_indices"))
            elif len(shape) != 2 or shape[0] != len(rows):
                add("shape-mismatch", f"trainable tokens for `{module}`: one row per index of trainable_token_indices", key,
                    expected=f"({len(rows)}, dim)", actual=shape)
    if not groups and not _token_modules(adapter):
        add("empty-adapter", "the adapter has no LoRA tensors", None, severity="warning")
    return problems


def _whole_module_ok(cfg: LoraConfig, key: str) -> bool:
    """modules_to_save tensors, base layers PEFT saves when embeddings are targeted, and the
    biases PEFT saves under ``bias="all"`` (any) or ``bias="lora_only"`` (of adapted modules)."""
    if matches_modules_to_save(cfg.modules_to_save, key, PREFIX):
        return True
    if key.startswith(PREFIX) and key.endswith(".bias"):
        if cfg.bias == "all":
            return True
        if cfg.bias == "lora_only":
            module = key[len(PREFIX): -len(".bias")].removesuffix(".base_layer")
            return matches_target(cfg.target_modules, module)
    for suffix in (".base_layer.weight", ".weight"):
        if key.startswith(PREFIX) and key.endswith(suffix):
            if matches_target(cfg.target_modules, key[len(PREFIX): -len(suffix)]):
                return True
    return False


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    import torch

    return torch.float64 if t.dtype == torch.float64 else torch.float32


def delta_weight(adapter: Adapter, module: str, *, device: Any = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """ΔW of one module, with PEFT's operations in PEFT's order (bit-identical in fp32).

    Shapes: (out, in) for linear ((in, out) with fan_in_fan_out), (vocab, dim) for
    embeddings, (out, in, *k) for convolutions (groups=1).
    """
    import torch.nn.functional as F

    view: LoraModule = adapter.module(module)
    if isinstance(view, TokenRows):
        raise UnsupportedError("trainable tokens replace rows of the embedding; they have no ΔW independent of the base",
                               key="trainable_token_indices", path=adapter.source)
    a_raw, b_raw = view.lora_A, view.lora_B
    store_dtype = b_raw.dtype if view.layer_type == "linear" else a_raw.dtype
    ct = _compute_dtype(b_raw if view.layer_type == "linear" else a_raw)
    A = a_raw.to(device=device, dtype=ct)
    B = b_raw.to(device=device, dtype=ct)
    if view.layer_type == "linear":
        out = B @ A
        if view.fan_in_fan_out:
            out = out.T
        out = out * view.scaling
    elif view.layer_type == "embedding":
        out = (B @ A).T * view.scaling
    elif view.layer_type == "conv2d" and A.shape[2:4] == (1, 1):
        out = (B.squeeze(3).squeeze(2) @ A.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(3) * view.scaling
    else:
        conv = {"conv1d": F.conv1d, "conv2d": F.conv2d, "conv3d": F.conv3d}[view.layer_type]
        out = conv(A.transpose(0, 1), B).transpose(0, 1) * view.scaling
    return out.to(dtype or store_dtype)


def delta_bias(adapter: Adapter, module: str, *, device: Any = None, dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """What the module's ``lora_B.bias`` adds to the base bias: bias · scaling (None without one)."""
    view: LoraModule = adapter.module(module)
    bias = view.bias
    if bias is None:
        return None
    return (bias.to(device=device, dtype=_compute_dtype(bias)) * view.scaling).to(dtype or bias.dtype)


def merge_shapes(adapter: Adapter, module: str) -> dict[str, tuple[tuple[int | None, ...], bool]]:
    """The base tensors a merge of ``module`` reads, with the shapes the factors imply:
    weight (out, in) — (in, out) with fan_in_fan_out —, (vocab, dim) for embeddings,
    (out, in, *k) for convolutions; bias (out,) when the module has ``lora_B.bias``."""
    view: LoraModule = adapter.module(module)
    if isinstance(view, TokenRows):  # rows replaced in the (rows, dim) weight
        return {"weight": ((None, adapter.meta(view.key).shape[1]), True)}
    a = tuple(adapter.meta(view.keys["lora_A"]).shape)
    b = tuple(adapter.meta(view.keys["lora_B"]).shape)
    if view.layer_type == "linear":
        shape = (a[1], b[0]) if view.fan_in_fan_out else (b[0], a[1])
    elif view.layer_type == "embedding":
        shape = (a[1], b[0])
    else:
        shape = (b[0], a[1], *a[2:])
    out: dict[str, tuple[tuple[int | None, ...], bool]] = {"weight": (shape, True)}
    if "bias" in view.keys:
        out["bias"] = ((b[0],), True)
    return out


def merge_roles(adapter: Adapter, module: str) -> tuple[str, ...]:
    """The roles ("weight", and "bias" with ``lora_B.bias``) a merge of ``module`` reads."""
    return tuple(merge_shapes(adapter, module))


def _dora_factor(view: LoraModule, W: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """m / ‖W + ΔW‖, shaped to broadcast over W, with PEFT's operations in PEFT's order.

    The norm is taken per output row of the (out, in) weight for linear layers (the base is
    transposed first under fan_in_fan_out), per embedding dimension (over the vocabulary)
    for embeddings, and per output channel for convolutions.
    """
    import torch

    m = view.magnitude.to(device=W.device, dtype=W.dtype)
    if view.layer_type == "linear":
        if view.fan_in_fan_out:
            norm = torch.linalg.norm(W.T + 1 * delta.T, dim=1).to(W.dtype)
            return (m / norm).view(-1, 1).T
        return (m / torch.linalg.norm(W + 1 * delta, dim=1).to(W.dtype)).view(-1, 1)
    if view.layer_type == "embedding":
        norm = torch.linalg.norm(W.T + 1 * delta.T, dim=1).to(W.dtype)
        return (m / norm).view(1, -1)
    norm = (W + 1 * delta).norm(p=2, dim=tuple(range(1, W.dim())), keepdim=True).transpose(1, 0)
    return (m / norm).view((-1,) + (1,) * (W.dim() - 1))


dora_factor = _dora_factor  # public: adapterkit.inject keeps it to unmerge a DoRA merge, as PEFT caches the norm


def merge(adapter: Adapter, module: str, targets: dict[str, torch.Tensor], *, weight: float = 1.0, device: Any = None,
          base: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The module's base tensors with the adapter merged in, computed in fp32 (fp64 for fp64 targets).

    ``targets`` holds the base tensors in the checkpoint's layout, keyed by role (see
    ``merge_shapes``).  LoRA: W + weight·ΔW, and bias + weight·(lora_B.bias·scaling) for
    ``lora_bias``.  DoRA: PEFT's (m / ‖W + ΔW‖)·(W + ΔW); only weight=1 is defined (PEFT has
    no scaled DoRA).  For weight=1 the result is PEFT's ``merge`` computed in fp32 (bit-identical
    for fp32 bases).

    ``base``: the module's tensors before the other adapters of the same merge changed
    ``targets`` (None: ``targets`` are those).  PEFT's layer with several active adapters
    computes DoRA's norm over the base weight plus its own ΔW alone — ‖W₀ + ΔW‖ — and scales
    what the adapters before it made of the layer: W' = m/‖W₀ + ΔW‖·(W + ΔW) and, for the bias,
    b' = b₀ + m/‖W₀ + ΔW‖·(b − b₀) (its forward scales their outputs, not the base bias).

    Raises:
        NotFoundError: ``base-tensor-missing`` when a required role is absent.
        TensorError: ``base-shape-mismatch`` when a target's shape disagrees with the factors.
        UnsupportedError: ``not-supported`` for DoRA with weight != 1.
    """
    view: LoraModule = adapter.module(module)
    t = prepare_targets(adapter, module, targets, merge_shapes(adapter, module), device)
    W = t["weight"]
    if isinstance(view, TokenRows):
        return {"weight": _replace_rows(adapter, view, W, weight)}
    delta = delta_weight(adapter, module, device=W.device, dtype=W.dtype)
    if view.magnitude is not None:
        if weight != 1:
            raise UnsupportedError(
                "DoRA defines no scaled merge: ‖W + ΔW‖ is not linear in the adapter's weight", key=module,
                path=adapter.source, expected="weight=1", actual=f"weight={weight}",
            )
        b = None if base is None or "weight" not in base else prepare_targets(adapter, module, base, merge_shapes(adapter, module), device)
        factor = _dora_factor(view, W if b is None else b["weight"], delta)
        out = {"weight": factor * (W + delta)}
        if base is not None and targets.get("bias") is not None and base.get("bias") is not None:
            b0 = base["bias"].to(device=W.device, dtype=W.dtype)
            out["bias"] = b0 + factor.reshape(-1) * (targets["bias"].to(device=W.device, dtype=W.dtype) - b0)
    else:
        out = {"weight": W + delta * weight}
    if "bias" in t:
        out["bias"] = t["bias"] + delta_bias(adapter, module, device=W.device, dtype=t["bias"].dtype) * weight
    return out


def row_delta(adapter: Adapter, module: str, *, weight: float = 1.0, unmerge: bool = False,
              device: Any = None) -> Callable[[int, int, torch.Tensor], None] | None:
    """Rows of the term ``merge`` (``unmerge``) adds to a plain LoRA linear weight, a block at a time.

    Returns ``fill(start, stop, out)``, which writes rows start:stop of ±weight·ΔW (ΔW = B·A·scaling,
    out × in) into the fp32 tensor ``out`` (stop − start, in) with the operations of
    ``delta_weight`` and ``merge`` in their order — B[start:stop]·A, times scaling, times weight,
    negated for unmerge — so that W[start:stop] + out is bit for bit those rows of
    ``merge``/``unmerge``'s result for an fp16, bf16 or fp32 base.  None where the merge is not
    a sum row by row in fp32: DoRA, ``lora_bias``, ``fan_in_fan_out``, embeddings and
    convolutions, fp64 factors.
    """
    import torch

    view: LoraModule = adapter.module(module)
    if view.layer_type != "linear" or view.fan_in_fan_out or "magnitude" in view.keys or "bias" in view.keys:
        return None
    if adapter.meta(view.keys["lora_B"]).dtype == "F64":  # fp64 math in delta_weight
        return None
    factors: list[torch.Tensor] = []  # B, A in fp32, read on the first call

    def fill(start: int, stop: int, out: torch.Tensor) -> None:
        if not factors:
            factors.extend([view.lora_B.to(device=device, dtype=torch.float32), view.lora_A.to(device=device, dtype=torch.float32)])
        B, A = factors
        torch.mm(B[start:stop], A, out=out)
        out.mul_(view.scaling)
        if weight != 1:  # x * 1.0 is x: merge's multiplication by weight changes nothing then
            out.mul_(weight)
        if unmerge:
            out.neg_()  # W - x == W + (-x) exactly

    return fill


def _replace_rows(adapter: Adapter, view: TokenRows, W: torch.Tensor, weight: float) -> torch.Tensor:
    """W with the rows of ``trainable_token_indices`` replaced, PEFT's ``index_copy``."""
    import torch

    if weight != 1:
        raise UnsupportedError("trainable tokens replace rows; they have no scaled merge", key=view.name, path=adapter.source,
                               expected="weight=1", actual=f"weight={weight}")
    index = torch.tensor(view.indices, dtype=torch.long, device=W.device)
    if len(view.indices) and (int(index.max()) >= W.shape[0] or int(index.min()) < 0):
        raise TensorError(f"trainable tokens name row {int(index.max())} of `{view.name}`, which has {W.shape[0]} rows",
                          code="base-shape-mismatch", path=adapter.source, key=view.name,
                          expected=f"more than {int(index.max())} rows", actual=tuple(W.shape))
    return W.index_copy(0, index, view.values.to(device=W.device, dtype=W.dtype))


def unmerge(adapter: Adapter, module: str, targets: dict[str, torch.Tensor], *, weight: float = 1.0, device: Any = None) -> dict[str, torch.Tensor]:
    """The inverse of ``merge``: W − weight·ΔW (and the bias likewise), exact up to fp32 rounding.

    Raises:
        UnsupportedError: ``not-supported`` for DoRA: its merge keeps only m/‖W + ΔW‖·(W + ΔW),
            whose rows all have norm |m|, so ‖W + ΔW‖ — which PEFT keeps in a cache of the live
            module — cannot be recovered from a merged checkpoint.
        NotFoundError / TensorError: as ``merge``.
    """
    view: LoraModule = adapter.module(module)
    if isinstance(view, TokenRows):
        raise UnsupportedError(
            "trainable tokens replace rows of the embedding; the rows they replaced are not in the adapter "
            "(PEFT unmerges only from the originals it keeps in the live module)", key="trainable_token_indices", path=adapter.source,
        )
    if view.magnitude is not None:
        raise UnsupportedError(
            "a DoRA merge cannot be undone from the merged weights: the norm ‖W + ΔW‖ it divided by is not "
            "recoverable (PEFT unmerges only from the norm it cached at merge time)", key=module, path=adapter.source,
        )
    t = prepare_targets(adapter, module, targets, merge_shapes(adapter, module), device)
    W = t["weight"]
    out = {"weight": W - delta_weight(adapter, module, device=W.device, dtype=W.dtype) * weight}
    if "bias" in t:
        out["bias"] = t["bias"] - delta_bias(adapter, module, device=W.device, dtype=t["bias"].dtype) * weight
    return out


def whole_tensors(adapter: Adapter) -> dict[str, str]:
    """adapter key -> base-relative name of the tensors stored whole: ``modules_to_save``,
    trained biases (``bias="all"``/``"lora_only"``) and saved base layers.  PEFT's wrapper
    names (``.base_layer``) are removed: ``base_model.model.m.q.base_layer.bias`` -> ``m.q.bias``."""
    return {k: v for k, v in whole_module_names(adapter, PREFIX, parse_key).items() if feature_tensor(k) is None}


def factor_norm(A: Any, B: Any, device: Any = None) -> float:
    """‖B·A‖_F from the factors only: sqrt(trace((BᵀB)(AAᵀ))), an r×r product in fp64 (on
    ``device`` for torch tensors; numpy arrays on the torch-free path, ``adapterkit.arrays``)."""
    A = to_float(A.reshape(A.shape[0], -1), fp64=True, device=device)
    B = to_float(B.reshape(B.shape[0], -1), fp64=True, device=device)
    return math.sqrt(max(float(((B.T @ B) * (A @ A.T)).sum()), 0.0))


def stats(adapter: Adapter, module: str, device: Any = None) -> dict[str, float]:
    view: LoraModule = adapter.module(module)
    if isinstance(view, TokenRows):
        return {"rows": len(view.indices)}
    return {"rank": view.rank, "scaling": view.scaling, "delta_norm": abs(view.scaling) * factor_norm(view.lora_A, view.lora_B, device)}


KIND = Kind(
    peft_type="LORA",
    config=LoraConfig,
    parse_key=parse_key,
    modules=modules,
    check=check,
    stats=stats,
    delta_weight=delta_weight,
    whole_tensors=whole_tensors,
    merge=merge,
    unmerge=unmerge,
    merge_shapes=merge_shapes,
    row_delta=row_delta,
)
