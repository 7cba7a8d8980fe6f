"""Every PEFT config field adapterkit knows, and whether it changes what PEFT computes.

One table (``FIELDS``) per config class of PEFT 0.22.0: field -> what it is, the PEFT release
that introduced it (the first release tag of PEFT's history whose config holds it; ``astra_config``
and ``kasa_config`` appeared after 0.20.0, so 0.22.0 is an upper bound there), and its status:

  inert         changes nothing PEFT computes from a saved adapter (init options, dropout,
                bookkeeping): allowed everywhere, kept verbatim in the config's ``extra``.
  implemented   adapterkit computes it exactly (typed fields of the config dataclasses, and the
                LoRA variants whose inference and merge are plain LoRA: VeLoRA, MonteCLoRA, MiCA).
  unsupported   changes ΔW or the forward pass in a way adapterkit does not compute: every
                operation that would use it refuses with ``not-supported`` naming the field;
                ``validate``/``info`` report ``feature-unsupported`` (a warning: the file is valid).

An implemented field may still be refused by some operations (``refused_by``): trainable tokens
replace embedding rows, which has no ΔW for the low-rank operations (and an unmerged checkpoint
cannot get the replaced rows back: ``kinds.lora.unmerge`` refuses it per module).  aLoRA is refused
everywhere: PEFT cannot merge it ("aLoRA does not support merging."), attach does not implement
its position rule (the LoRA applies from the invocation tokens onward), and a low-rank result
would mix it with other adapters.  ``target_parameters`` on 2-D parameters merges like a Linear
module's LoRA (PEFT's ``ParamWrapper`` adds B·A·scaling to the parameter) and attaches as PEFT's
parametrization does; on 3-D expert stacks (r rows of lora_A per expert) it is refused.
``lora_bias`` with DoRA is refused by merge, unmerge and attach (where the bias meets DoRA's norm),
as PEFT's config refuses it; the factor-space operations read B·A as for any DoRA.
nn.MultiheadAttention (PEFT saves its ``out_proj`` under ``<attn>.base_layer.out_proj``) is
refused by name in every operation.

Fields a later PEFT adds are not in the table; they are kept and ignored, as before.  Tensors
a feature adds beside a module's LoRA factors (KaSA's ``lora_diag``, VeLoRA's
``lora_velora_embed``, MonteCLoRA's ``lora_monteclora_sampler.*``, trainable tokens'
``token_adapter.trainable_tokens_delta``) belong to that feature: they are neither
``unexpected-key`` nor tensors stored whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import Problem, UnsupportedError
from .lora_keys import parse_key

if TYPE_CHECKING:
    from ..adapter import Adapter

INERT, IMPLEMENTED, UNSUPPORTED = "inert", "implemented", "unsupported"

# the operations a refusal can name
MERGE, UNMERGE, ATTACH, LOWRANK = "merge", "unmerge", "attach", "low-rank operations"
ALL_OPERATIONS = frozenset({MERGE, UNMERGE, ATTACH, LOWRANK})


@dataclass(frozen=True)
class Field:
    """One config field: its status, the PEFT release that introduced it, what it does."""

    name: str
    since: str
    status: str
    feature: str = ""
    effect: str = ""
    refused_by: frozenset[str] = frozenset()  # the operations that refuse it (every one for UNSUPPORTED)

    def __post_init__(self) -> None:
        if self.status == UNSUPPORTED and not self.refused_by:
            object.__setattr__(self, "refused_by", ALL_OPERATIONS)
    tensors: tuple[str, ...] = ()  # key parts (after the module name) the feature adds


def _f(name: str, since: str, status: str, feature: str = "", effect: str = "", **kw: Any) -> tuple[str, Field]:
    return name, Field(name, since, status, feature, effect, **kw)


_COMMON = dict([
    _f("peft_type", "0.6.0", IMPLEMENTED),
    _f("task_type", "0.6.0", INERT, effect="selects PEFT's model class; the tensors' meaning is unchanged"),
    _f("base_model_name_or_path", "0.6.0", INERT),
    _f("revision", "0.6.0", INERT),
    _f("inference_mode", "0.6.0", INERT),
    _f("auto_mapping", "0.6.0", INERT),
    _f("peft_version", "0.6.0", INERT),
])

LORA = dict([
    *_COMMON.items(),
    *((n, Field(n, "0.6.0", IMPLEMENTED)) for n in (
        "r", "lora_alpha", "target_modules", "fan_in_fan_out", "bias", "modules_to_save",
        "layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern")),
    _f("exclude_modules", "0.14.0", IMPLEMENTED),
    _f("use_rslora", "0.8.0", IMPLEMENTED),
    _f("use_dora", "0.9.0", IMPLEMENTED),
    _f("lora_bias", "0.14.0", IMPLEMENTED),
    _f("lora_dropout", "0.6.0", INERT, effect="training only"),
    _f("init_lora_weights", "0.6.0", INERT, effect="initialisation only; 'mica' (MiCA, 0.20.0) freezes lora_B in training, "
       "its forward and merge are plain LoRA"),
    _f("loftq_config", "0.7.0", INERT, effect="initialisation only"),
    _f("eva_config", "0.14.0", INERT, effect="initialisation only"),
    _f("corda_config", "0.15.0", INERT, effect="initialisation only"),
    _f("astra_config", "0.22.0", INERT, effect="initialisation only"),
    _f("lora_ga_config", "0.19.0", INERT, effect="initialisation only"),
    _f("megatron_core", "0.7.0", INERT, effect="names the module megatron_config uses"),
    _f("qalora_group_size", "0.16.0", INERT, effect="used only with use_qalora"),
    _f("runtime_config", "0.12.0", INERT, effect="runtime only, never saved"),
    _f("velora_config", "0.20.0", IMPLEMENTED, "VeLoRA",
       "changes only the backward pass of training; inference and merge are plain LoRA",
       tensors=("lora_velora_embed",)),
    _f("monteclora_config", "0.20.0", IMPLEMENTED, "MonteCLoRA",
       "samples lora_A only in training; inference and merge are plain LoRA",
       tensors=("lora_monteclora_sampler.",)),
    _f("alora_invocation_tokens", "0.18.0", UNSUPPORTED, "aLoRA (activated LoRA)",
       "applies the LoRA only from the invocation tokens onward; PEFT refuses to merge it "
       "(\"aLoRA does not support merging.\")"),
    _f("kasa_config", "0.22.0", UNSUPPORTED, "KaSA",
       "truncates the base weight's smallest singular components and scales B·A by lora_diag",
       tensors=("lora_diag",)),
    _f("use_bdlora", "0.19.0", UNSUPPORTED, "BD-LoRA (block-diagonal LoRA)",
       "lora_A or lora_B is block-diagonal, stored compact"),
    _f("trainable_token_indices", "0.15.0", IMPLEMENTED, "trainable tokens",
       "replaces rows of an embedding by token_adapter.trainable_tokens_delta: merged and attached; it has no ΔW "
       "(a replacement), and unmerging a checkpoint refuses it (the replaced rows are not in the adapter)",
       tensors=("token_adapter.trainable_tokens_delta",), refused_by=frozenset({LOWRANK})),
    _f("target_parameters", "0.17.0", IMPLEMENTED, "LoRA on parameters (target_parameters)",
       "adds B·A·scaling to a 2-D parameter (PEFT's ParamWrapper); 3-D expert parameters are unsupported"),
    _f("arrow_config", "0.18.0", UNSUPPORTED, "Arrow routing", "routes each token among LoRA experts"),
    _f("use_qalora", "0.16.0", UNSUPPORTED, "QALoRA", "pools the input in groups before lora_A (GPTQ layers)"),
    _f("megatron_config", "0.7.0", UNSUPPORTED, "Megatron parallel LoRA", "LoRA on Megatron's parallel linear layers"),
    _f("layer_replication", "0.10.0", UNSUPPORTED, "layer replication", "repeats base layers to build a deeper model"),
    _f("ensure_weight_tying", "0.18.0", UNSUPPORTED, "adapter weight tying",
       "ties the adapters of tied layers (embed_tokens / lm_head)"),
])

IA3 = dict([
    *_COMMON.items(),
    *((n, Field(n, "0.6.0", IMPLEMENTED)) for n in (
        "target_modules", "feedforward_modules", "fan_in_fan_out", "modules_to_save", "layers_to_transform",
        "layers_pattern")),
    _f("exclude_modules", "0.14.0", IMPLEMENTED),
    _f("init_ia3_weights", "0.6.0", INERT, effect="initialisation only"),
])

PROMPT_LEARNING = dict([
    *_COMMON.items(),
    _f("tokenizer_kwargs", "0.11.0", INERT, effect="initialisation only"),
    _f("init_weights", "0.19.0", INERT, effect="initialisation only"),
])

LOHA = dict([
    *_COMMON.items(),
    *((n, Field(n, "0.6.0", IMPLEMENTED)) for n in (
        "r", "alpha", "rank_pattern", "alpha_pattern", "use_effective_conv2d", "target_modules", "modules_to_save",
        "layers_to_transform", "layers_pattern")),
    _f("exclude_modules", "0.14.0", IMPLEMENTED),
    _f("rank_dropout", "0.6.0", INERT, effect="training only (drops rows of ΔW)"),
    _f("module_dropout", "0.6.0", INERT, effect="training only (skips the module)"),
    _f("init_weights", "0.6.0", INERT, effect="initialisation only"),
])

LOKR = dict([
    *((n, f) for n, f in LOHA.items()),
    *((n, Field(n, "0.6.0", IMPLEMENTED)) for n in ("decompose_both", "decompose_factor")),
    _f("rank_dropout_scale", "0.10.0", INERT, effect="training only (scales the rank dropout)"),
    _f("init_weights", "0.6.0", INERT, effect="initialisation only (also \"lycoris\")"),
])

FIELDS: dict[str, dict[str, Field]] = {"LORA": LORA, "IA3": IA3, "LOHA": LOHA, "LOKR": LOKR, "PROMPT_LEARNING": PROMPT_LEARNING}


@dataclass(frozen=True)
class Use:
    """An unsupported feature an adapter uses: the field, the feature, why, and where."""

    field: Field
    detail: str = ""
    key: str | None = None

    @property
    def name(self) -> str:
        return self.field.name

    def text(self) -> str:
        what = f"{self.field.feature} (`{self.field.name}`)"
        return f"{what}: {self.detail or self.field.effect}"


def _set(value: Any) -> bool:
    """Whether a config value switches its feature on (PEFT's ``bool(getattr(config, name))``)."""
    return value not in (None, False, 0, "", [], {}, ())


def feature_tensor(key: str) -> Field | None:
    """The feature that owns the tensor ``key`` (a part it adds beside the LoRA factors), if any."""
    for f in LORA.values():
        for part in f.tensors:
            if ("." + part in key) if part.endswith(".") else key.endswith("." + part):
                return f
    return None


_MHA = Field("target_modules", "0.6.0", UNSUPPORTED, "LoRA on nn.MultiheadAttention",
             "PEFT merges it into in_proj_weight and a nested out_proj; adapterkit does not")
_EXPERTS = Field("target_parameters", "0.17.0", UNSUPPORTED, "LoRA on 3-D expert parameters (target_parameters)",
                 "lora_A holds r rows per expert; ΔW is one (in, out) block per expert")


_NESTED = Field("target_parameters", "0.17.0", UNSUPPORTED, "LoRA on several parameters of one module (target_parameters)",
                "PEFT nests one wrapper per parameter (`<module>.base_layer.lora_A`); which factor goes on which "
                "parameter is not in the file")


_DORA_BIAS = Field("lora_bias", "0.14.0", UNSUPPORTED, "lora_bias with DoRA",
                   "PEFT refuses the combination (\"lora_bias=True is not supported for DoRA\"), so no PEFT model "
                   "defines where the bias goes against DoRA's norm", refused_by=frozenset({MERGE, UNMERGE, ATTACH}))


def uses(adapter: Adapter, operation: str | None = None) -> list[Use]:
    """The unsupported features ``adapter`` uses (those ``operation`` refuses, or all), from its
    config and tensor names; reads no tensor data."""
    found = adapter.__dict__.get("_feature_uses")
    if found is None:  # computed once per Adapter value (config and tensor names never change)
        found = adapter.__dict__["_feature_uses"] = _uses(adapter)
    return [u for u in found if operation is None or operation in u.field.refused_by]


def _uses(adapter: Adapter) -> list[Use]:
    cfg = adapter.config
    table = FIELDS.get(cfg.peft_type, PROMPT_LEARNING)
    found: list[Use] = []
    for name, value in cfg.extra.items():
        f = table.get(name)
        if f is None or f.status == INERT or not _set(value):
            continue
        if f.refused_by:
            found.append(Use(f, key=name))
    if cfg.peft_type == "LORA":
        if cfg.use_dora and cfg.lora_bias:
            found.append(Use(_DORA_BIAS, key="lora_bias"))
        found += _structural_uses(adapter)
    return found


def _structural_uses(adapter: Adapter) -> list[Use]:
    """Features seen in the tensors only: nn.MultiheadAttention (PEFT saves its out_proj nested
    as ``<attn>.base_layer.out_proj``) and target_parameters on 3-D (experts) parameters."""
    cfg = adapter.config
    out: list[Use] = []
    names = {parsed[0] for k in adapter.tensors if (parsed := parse_key(k))}
    for name in sorted(names):
        if name.endswith(".base_layer.out_proj") and name[: -len(".base_layer.out_proj")] in names:
            out.append(Use(_MHA, f"`{name[: -len('.base_layer.out_proj')]}` is a MultiheadAttention adapted by PEFT; "
                           "adapterkit does not merge or attach LoRA on it", key=name))
    if _set(cfg.extra.get("target_parameters")):
        nested = sorted(n for n in names if n.endswith(".base_layer") or n == "base_layer")
        if nested:
            out.append(Use(_NESTED, f"`{nested[0].removesuffix('base_layer').rstrip('.') or '(root)'}` has LoRA on several parameters",
                           key=nested[0]))
        for name in sorted(names):
            a_key = next((k for k in (f"base_model.model.{name}.lora_A.weight",) if k in adapter.tensors), None)
            if a_key is None:
                continue
            rows, r = adapter.meta(a_key).shape[0], cfg.rank_for(name)[0]
            if rows != r and r > 0 and rows % r == 0 and _param_targeted(cfg, name):
                out.append(Use(_EXPERTS, f"`{name}` holds {rows // r} experts of rank {r}", key=a_key))
    return out


def _param_targeted(cfg: Any, module: str) -> bool:
    """Whether a ``target_parameters`` entry names a parameter of ``module`` (PEFT's match:
    ``module.param`` equal to an entry or ending with ``.`` + entry)."""
    targets = cfg.extra.get("target_parameters") or ()
    for t in targets:
        mod, _, _ = str(t).rpartition(".")
        if not mod or module == mod or module.endswith("." + mod):
            return True
    return False


def feature_shaped(adapter: Adapter) -> set[str]:
    """Modules whose factor shapes a feature defines, not ``r`` (BD-LoRA's compact blocks, one
    block of rank r per expert): their shapes are reported as that feature, not as malformed."""
    cfg = adapter.config
    names = {parsed[0] for k in adapter.tensors if (parsed := parse_key(k))}
    if _set(cfg.extra.get("use_bdlora")):
        return names
    return {u.key.removeprefix("base_model.model.").removesuffix(".lora_A.weight") for u in uses(adapter) if u.field is _EXPERTS}


def changes_delta(adapter: Adapter) -> bool:
    """Whether the adapter uses an unsupported feature, so that figures computed from its LoRA
    factors alone (``info``'s per-module ‖ΔW‖) would misstate it."""
    return any(LOWRANK in u.field.refused_by for u in uses(adapter))


def problems(adapter: Adapter) -> list[Problem]:
    """``feature-unsupported`` warnings, one per unsupported feature the adapter uses."""
    out = []
    for u in uses(adapter):
        refused = ", ".join(sorted(u.field.refused_by))
        text = f"unsupported feature {u.text()}; refused by {refused}" if u.field.status == UNSUPPORTED else \
            f"feature {u.text()}; not supported by {refused}"
        out.append(Problem(
            "feature-unsupported", text,
            "warning", None, u.field.name,
        ))
    return out


def require(adapter: Adapter, operation: str, *, what: str | None = None, unsupported_only: bool = False) -> None:
    """Refuse ``operation`` on an adapter that uses a feature it does not implement
    (``unsupported_only``: only the unsupported features, not the implemented ones some
    operations refuse, which the caller refuses per module).

    Raises:
        UnsupportedError: ``not-supported`` naming the config field and the feature.
    """
    found = [u for u in uses(adapter, operation) if not unsupported_only or u.field.status == UNSUPPORTED]
    if not found and operation == UNMERGE and any(getattr(v, "layer_type", None) == "tokens" for v in adapter.modules.values()):
        found = [Use(LORA["trainable_token_indices"], "the rows they replaced are not in the adapter (PEFT unmerges "
                     "only from the originals its live module keeps)")]
    if found:
        u = found[0]
        raise UnsupportedError(
            f"{what or operation} does not implement {u.text()}", code="not-supported", path=adapter.source,
            key=u.field.name, expected=f"an adapter without `{u.field.name}`",
            actual=_short(adapter.config, u),
        )


def _short(cfg: Any, u: Use) -> Any:
    value = cfg.extra.get(u.field.name, getattr(cfg, u.field.name, None))
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def require_separable(adapter: Adapter, module: str) -> None:
    """Refuse untying a checkpoint's embeddings for trainable tokens on one of them: PEFT ties
    the output embedding's rows to the input embedding's (a tied token adapter), so both change.

    Raises:
        UnsupportedError: ``not-supported`` naming ``trainable_token_indices``; ``--tied-embeddings
            shared`` computes what PEFT's model does.
    """
    view = adapter.modules.get(module)
    if getattr(view, "layer_type", None) == "tokens":
        raise UnsupportedError(
            f"trainable tokens on `{module}`, which the checkpoint ties to the other embedding: PEFT replaces the rows "
            "of both; untying would change one only (--tied-embeddings shared merges into the one shared matrix, as PEFT)",
            code="not-supported", path=adapter.source, key="trainable_token_indices",
            expected="--tied-embeddings shared", actual="--tied-embeddings untie",
        )


def require_all(adapters: Iterable[Adapter], operation: str, *, what: str | None = None) -> None:
    for adapter in adapters:
        require(adapter, operation, what=what)

