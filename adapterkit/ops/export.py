"""Serving-engine profiles: what vLLM, TGI, llama.cpp and PEFT accept, checked and exported to.

``check(adapter, consumer)`` lists every rule of the consumer the adapter breaks, each a
:class:`Problem` with code ``profile-violation`` (``peft``: the validation problems that stop a
reload, with their own codes), the rule in the message (``[vllm/scaling] ...``) and the
module or config field as key.  ``export(adapter, consumer)`` rewrites a LoRA adapter so that it
obeys the consumer without changing any module's ΔW:

  * the scaling is folded into B (and into ``lora_B.bias``): ``lora_alpha = r``, rsLoRA off;
  * for TGI and llama.cpp every module is zero-padded to the largest rank (zero rows of A and
    columns of B leave B·A unchanged), so there are no rank or alpha patterns;
  * for vLLM the ranks stay (it reads each module's rank from its tensors, see below), ``r`` is
    the largest of them, smaller ones get anchored patterns of equal rank and alpha for PEFT;
  * for ``peft`` the ranks stay, with anchored patterns (``lowrank.scaling_one_config``).

What vLLM does with ranks and scaling (read in vLLM's ``vllm/lora/``; the same at every recent commit read):
``peft_helper.py`` ``PEFTHelper.from_dict`` keeps only the dataclass's fields (``r``,
``lora_alpha``, ``use_rslora``, ...), so ``rank_pattern`` and ``alpha_pattern`` are dropped;
``PEFTHelper.__post_init__`` computes one ``vllm_lora_scaling_factor`` = ``lora_alpha / r``
(``/ sqrt(r)`` with ``use_rslora``) from the config's global values; ``lora_model.py``
``LoRAModel.from_lora_tensors`` gives every module ``LoRALayerWeights.from_config(module,
peft_helper)`` (``lora_weights.py``), i.e. that one scaling, with the module's own ``lora_A`` /
``lora_B`` tensors, whose scaling ``LoRALayerWeights.optimize`` folds into ``lora_b``; and
``layers/base_linear.py`` ``BaseLinearLayerWithLoRA.set_lora`` copies the tensors into
zero buffers of ``max_lora_rank`` rows, ``[:lora_a.shape[0], :lora_a.shape[1]]``: a module's rank
is its tensors' shape, any rank up to ``--max-lora-rank`` works.  ``PEFTHelper.validate_legal``
compares only the config's ``r`` with ``max_lora_rank``.  So vLLM computes ΔW = B·A·alpha/r for
every module: what PEFT computes exactly when every module's PEFT scaling equals the global
one (adapterkit's operation outputs, at scaling 1 everywhere, do), whatever the ranks.

What an engine cannot express raises :class:`UnsupportedError` naming the module or key:
DoRA, ``modules_to_save`` and other whole tensors, convolutions, ``lora_bias`` (vLLM's
``parse_fine_tuned_lora_name`` refuses ``lora_B.bias`` as an unsupported weight, and
``PEFTHelper.validate_legal`` any ``bias`` but "none"), a rank above ``max_rank``.  Nothing is
dropped.

Rounding: the fold is computed in fp64 and stored in the input dtype, so each stored entry of
B·scaling is rounded once: |ΔW' − ΔW| ≤ u·|scaling|·(|B|·|A|)
elementwise, u the storage unit roundoff (2⁻²⁴ fp32, 2⁻¹¹ fp16, 2⁻⁸ bf16); exact when the
scaling is a power of two.

The rules follow /work/shared/REFERENCE.md "What serving engines accept".
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..adapter import Adapter
from ..errors import ArgumentError, Problem, UnsupportedError
from ..io.recipe import step, with_step
from ..kinds.features import LOWRANK, feature_tensor, require
from ..kinds.lora import LoraConfig
from .lowrank import all_factors, module_factors, module_tensors, scaling_one_config

if TYPE_CHECKING:
    import torch

CONSUMERS = ("vllm", "tgi", "llama.cpp", "peft")
ENGINES = ("vllm", "tgi", "llama.cpp")
PADDED = ("tgi", "llama.cpp")  # engines that need one rank everywhere; vLLM takes each module's from its tensors
CODE = "profile-violation"


def _consumer(consumer: str) -> str:
    if consumer not in CONSUMERS:
        raise ArgumentError("unknown consumer", key="consumer", expected=" | ".join(CONSUMERS), actual=consumer)
    return consumer


def _engine_scaling(consumer: str, cfg: LoraConfig, rank: int) -> float:
    """The scaling the engine applies to a module of rank ``rank`` (it reads no patterns).
    vLLM: one factor for all modules, ``PEFTHelper.__post_init__`` (vllm/lora/peft_helper.py)."""
    if consumer == "llama.cpp":  # one global alpha, divided by each tensor's own rank; no rsLoRA
        return cfg.lora_alpha / rank
    return cfg.lora_alpha / math.sqrt(cfg.r) if cfg.use_rslora else cfg.lora_alpha / cfg.r


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)


def check(adapter: Adapter, consumer: str, *, max_rank: int | None = None) -> list[Problem]:
    """Every rule of ``consumer`` (``vllm``, ``tgi``, ``llama.cpp``, ``peft``) that ``adapter`` breaks.

    ``max_rank``: the engine's configured maximum rank (vLLM's ``--max-lora-rank``); ranks above
    it are violations.  Without it, vLLM gets a warning (``vllm/max-lora-rank``) where a module's
    rank exceeds ``r``: vLLM checks only ``r`` against its maximum, and a module of higher rank
    then fails to load unless ``--max-lora-rank`` is at least that rank.  No error means the
    consumer reads the adapter as PEFT means it.
    """
    _consumer(consumer)
    from ..io.checks import structural_problems, value_problems

    src = str(adapter.source) if adapter.source else None
    if consumer == "peft":
        problems = structural_problems(adapter) + value_problems(adapter)
        return [p for p in problems if p.severity == "error" or p.code == "pattern-order"]
    out: list[Problem] = []

    def add(rule: str, message: str, key: str | None, expected: Any = None, actual: Any = None, severity: str = "error") -> None:
        out.append(Problem(CODE, f"[{consumer}/{rule}] {message}", severity, src, key, expected, actual))

    if adapter.peft_type != "LORA":
        add("lora-only", f"{consumer} serves LoRA adapters only", "peft_type", "LORA", adapter.peft_type)
        return out
    cfg: LoraConfig = adapter.config  # type: ignore[assignment]
    if src is not None and src.endswith(".bin") and consumer == "tgi":
        add("no-bin", "TGI does not read .bin weights", None, "adapter_model.safetensors", src)
    if cfg.use_dora:
        add("dora", f"{consumer} does not serve DoRA", "use_dora", False, True)
    if cfg.modules_to_save:
        fatal = " (fatal on embeddings/lm_head)" if consumer == "llama.cpp" else ""
        add("modules-to-save", f"{consumer} does not load modules_to_save{fatal}", "modules_to_save", None, cfg.modules_to_save)
    if consumer == "vllm" and cfg.bias != "none":
        add("bias", "vLLM rejects bias other than 'none'", "bias", "none", cfg.bias)
    if consumer == "llama.cpp" and cfg.use_rslora:
        add("rslora", "llama.cpp ignores use_rslora (scale alpha / r)", "use_rslora", False, True)
    if cfg.lora_bias:  # vLLM too: vllm/lora/utils.py parse_fine_tuned_lora_name raises "unsupported LoRA weight"
        add("lora-bias", f"{consumer} does not read lora_B.bias", "lora_bias", False, True)
    for key in adapter.tensors:
        parsed = adapter.kind.parse_key(key)
        if parsed is None:
            add("extra-tensor", f"{consumer} reads only LoRA factor tensors (lora_A/B, lora_embedding_A/B)",
                key, "a LoRA factor", key)
    by_type: dict[str, dict[int, str]] = {}
    top = (0, "")  # the largest module rank and its first module
    for name, view in adapter.modules.items():
        if "lora_A" not in view.keys:  # trainable tokens: flagged as an extra tensor above
            continue
        rank = int(adapter.meta(view.keys["lora_A"]).shape[0])
        if view.layer_type.startswith("conv"):
            add("layer-type", f"{consumer} does not serve LoRA on convolutions (`{name}` is {view.layer_type})", name, "linear | embedding", view.layer_type)
        if consumer == "tgi" and rank != cfg.r:
            add("rank-pattern", f"{consumer} ignores rank_pattern and reads r={cfg.r} for `{name}` of rank {rank}", name, cfg.r, rank)
        if not _close(_engine_scaling(consumer, cfg, rank), view.scaling):
            ignored = {"llama.cpp": "alpha_pattern and use_rslora", "vllm": "rank_pattern and alpha_pattern (one lora_alpha/r for all)"}
            add("scaling", f"{consumer} ignores {ignored.get(consumer, 'alpha_pattern')}: "
                f"it scales `{name}` by {_engine_scaling(consumer, cfg, rank):g}, PEFT by {view.scaling:g}", name,
                view.scaling, _engine_scaling(consumer, cfg, rank))
        if max_rank is not None and rank > max_rank:
            add("max-rank", f"rank of `{name}` exceeds the engine's maximum {max_rank}", name, f"<= {max_rank}", rank)
        by_type.setdefault(name.rsplit(".", 1)[-1], {}).setdefault(rank, name)
        if rank > top[0]:
            top = (rank, name)
    if consumer == "vllm" and max_rank is None and top[0] > cfg.r:
        # PEFTHelper.validate_legal checks r only; set_lora then fails on a larger module (base_linear.py)
        add("max-lora-rank", f"vLLM checks only r={cfg.r} against --max-lora-rank, but `{top[1]}` has rank {top[0]}: "
            f"serve with --max-lora-rank >= {top[0]}", top[1], f"--max-lora-rank >= {top[0]}", top[0], severity="warning")
    if consumer == "tgi":
        for mtype, ranks in sorted(by_type.items()):
            if len(ranks) > 1:
                add("rank-per-type", f"TGI stacks `{mtype}` modules, whose ranks differ: {sorted(ranks)} "
                    f"(e.g. `{ranks[max(ranks)]}` has {max(ranks)})", ranks[max(ranks)], "one rank", sorted(ranks))
    return out


def export(adapter: Adapter, consumer: str, *, max_rank: int | None = None) -> Adapter:
    """``adapter`` rewritten to obey ``consumer`` with every module's ΔW unchanged (see the module doc);
    its recipe is the input's with an ``export`` step appended.

    Raises:
        UnsupportedError: ``not-supported`` naming the module or key the consumer cannot express.
        ArgumentError: ``argument-invalid`` for an unknown consumer.
    """
    return with_step(_export(adapter, consumer, max_rank), adapter, step("export", consumer=consumer, max_rank=max_rank))


def _export(adapter: Adapter, consumer: str, max_rank: int | None) -> Adapter:
    import torch

    _consumer(consumer)
    src = adapter.source
    if adapter.peft_type != "LORA":
        if consumer == "peft":
            from ..io.checks import raise_first_error

            raise_first_error(check(adapter, "peft"))
            return adapter
        raise UnsupportedError(f"{consumer} serves LoRA adapters only", path=src, key="peft_type", expected="LORA", actual=adapter.peft_type)
    require(adapter, LOWRANK, what=f"export for {consumer}")
    cfg: LoraConfig = adapter.config  # type: ignore[assignment]
    if consumer in ENGINES:
        def refuse(message: str, key: str | None, expected: Any = None, actual: Any = None) -> None:
            raise UnsupportedError(f"{consumer}: {message}", path=src, key=key, expected=expected, actual=actual)

        views = adapter.modules
        if cfg.use_dora:
            first = next((v.keys["magnitude"] for v in views.values() if "magnitude" in v.keys), "use_dora")
            refuse("DoRA cannot be served: its magnitude rescales W + ΔW by a norm that depends on W", first, False, True)
        for key in adapter.tensors:
            if adapter.kind.parse_key(key) is None and feature_tensor(key) is None:  # VeLoRA's: training state only
                refuse("this tensor (modules_to_save or another whole tensor) cannot be served; nothing is dropped silently", key, "a LoRA factor", key)
        if cfg.modules_to_save:
            refuse("modules_to_save cannot be served", "modules_to_save", None, cfg.modules_to_save)
        for name, view in views.items():
            if view.layer_type.startswith("conv"):
                refuse(f"LoRA on convolutions is not served (`{name}`)", view.keys["lora_A"], "linear | embedding", view.layer_type)
            if "bias" in view.keys:
                refuse("lora_B.bias is not read", view.keys["bias"], None, "lora_B.bias")
    elif cfg.use_dora:
        return _peft_dora(adapter)
    factors = all_factors(adapter, what=f"export for {consumer}")
    ranks = {n: f.rank for n, f in factors.items()}
    target = max(ranks.values(), default=cfg.r) if consumer in ENGINES else None
    pad_to = target if consumer in PADDED else None
    if target is not None and max_rank is not None and target > max_rank:
        name = max(ranks, key=lambda n: ranks[n])
        raise UnsupportedError(f"{consumer}: rank {target} of `{name}` exceeds the maximum {max_rank}; exporting never truncates",
                               path=src, key=name, expected=f"<= {max_rank}", actual=target)
    tensors: dict[str, torch.Tensor] = {}
    for f in factors.values():
        B, A = f.B.double() * f.scaling, f.A.double()  # fp64: the store into the input dtype is the one rounding
        k = pad_to or f.rank
        if k > f.rank:
            B = torch.cat([B, B.new_zeros(B.shape[0], k - f.rank)], dim=1)
            A = torch.cat([A, A.new_zeros(k - f.rank, A.shape[1])], dim=0)
        bias = None if f.bias is None else f.bias.double() * f.scaling
        tensors.update(module_tensors(f, B, A, bias))
    parse = adapter.kind.parse_key
    rest = {key: adapter.tensors[key] for key in adapter.tensors if parse(key) is None}
    out_ranks = {n: (pad_to or r) for n, r in ranks.items()}
    changes: dict[str, Any] = {"bias": "none"} if consumer == "vllm" else {}
    config = scaling_one_config(cfg, out_ranks, lora_bias=cfg.lora_bias, default_rank=target, **changes)
    return Adapter.from_tensors(config, {**rest, **tensors})


def _peft_dora(adapter: Adapter) -> Adapter:
    """DoRA for PEFT: the magnitude normalises W + scaling·B·A as a whole, and folding the
    scaling into B keeps that sum, so fold as for LoRA and carry the magnitudes; ranks stay,
    with anchored patterns."""

    cfg: LoraConfig = adapter.config  # type: ignore[assignment]
    tensors: dict[str, torch.Tensor] = {}
    ranks = {}
    plain_cfg = replace(cfg, use_dora=False)
    for name, view in adapter.modules.items():
        mag = view.keys.get("magnitude")
        # module_factors refuses DoRA: read this module's factors from a DoRA-free view
        plain = Adapter.from_tensors(plain_cfg, {k: adapter.tensors[k] for k in view.keys.values() if k != mag})
        f = module_factors(plain, name, what="export")
        bias = None if f.bias is None else f.bias.double() * f.scaling
        tensors.update(module_tensors(f, f.B.double() * f.scaling, f.A, bias))
        if mag is not None:
            tensors[mag] = adapter.tensors[mag]
        ranks[name] = f.rank
    parse = adapter.kind.parse_key
    rest = {key: adapter.tensors[key] for key in adapter.tensors if parse(key) is None}
    config = replace(scaling_one_config(cfg, ranks, lora_bias=cfg.lora_bias), use_dora=True)
    return Adapter.from_tensors(config, {**rest, **tensors})


__all__ = ["CONSUMERS", "check", "export"]
