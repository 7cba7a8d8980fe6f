"""PEFT's own test matrix as an oracle: every case of ``peft_matrix_cases`` × every operation.

Each case is built by PEFT 0.22.0 (``get_peft_model`` on a tiny base model, every adapter
parameter filled with ``randn``: PEFT starts lora_B at zero, which would make most checks
vacuous), run on PEFT's input and saved with ``save_pretrained``.  Then each check does one
thing with adapterkit and compares it with what PEFT computes:

  validate        ``adapterkit.validate`` of PEFT's directory finds no error
  load            ``adapterkit.load`` gives PEFT's tensors (``get_peft_model_state_dict``)
  scaling         every LoRA module's scaling is PEFT's layer scaling (rsLoRA, rank/alpha patterns)
  save_dir        ``save`` to a directory; PEFT loads it and computes PEFT's outputs
  save_file       ``save`` to one .safetensors file; ``load`` gives the same config and tensors
  attach          ``attach`` on a fresh base: PEFT's outputs (both adapters active for the
                  multi-adapter cases)
  merge_and_unload  ``adapterkit.merge_and_unload``: PEFT's merged state dict
  offline_merge   ``merge_checkpoint`` of the base saved as a checkpoint: PEFT's merged state dict
  combine         ``combine([a, a'])`` attached: the outputs of PEFT's ``add_weighted_adapter``
                  (cat and svd for LoRA, IA3's linear); for two active adapters, ``cat`` with
                  weights 1 gives the outputs of both active (PEFT's own assertion)

A check passes when the result equals PEFT's, or when adapterkit refuses BY NAME: an
``AdapterkitError`` with code ``not-supported`` (``peft-type-unsupported`` for a kind not
implemented yet) whose message names a feature the case actually uses (``FEATURES``).  A
refusal that blames the user's model or base (``base-mismatch``, ``model-mismatch``,
``adapters-incompatible``, ``shape-mismatch``), any other error or a different result fails.
Where PEFT itself refuses (merging prompt learning, DoRA in ``add_weighted_adapter``),
adapterkit must refuse by name too.  The refusals are counted by feature and printed at the
end of the run (``summary``, via conftest's terminal summary).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("transformers")

from peft import PeftModel, get_peft_model, get_peft_model_state_dict
from peft_matrix_cases import CASES, CUSTOM, MatrixCase, build_base, inputs_for
from safetensors.torch import load_file, save_file

import adapterkit
from adapterkit.differences import DIFFERENCES
from adapterkit.errors import AdapterkitError
from adapterkit.ops import merge_checkpoint

CHECKS = ("validate", "load", "scaling", "save_dir", "save_file", "attach", "merge_and_unload", "offline_merge", "combine")
KIND_CHECKS = ("validate", "load", "offline_merge")  # a kind adapterkit does not read: what takes a path
# not-supported; peft-type-unsupported: a kind not implemented yet; groups-unsupported: LoRA on a
# grouped convolution, which the format (spec) does not define yet
REFUSAL_CODES = ("not-supported", "peft-type-unsupported", "groups-unsupported")
WEIGHTS = (0.7, -0.4)
RTOL, ATOL = 1e-5, 1e-5
DIFFERENCE_NAMES = {d.name for d in DIFFERENCES}

# feature label -> the words a refusal may name it by (case-insensitive); a refusal must name a
# feature its case uses: a config field it sets, its kind, or a layer type of its base model
FEATURES: dict[str, tuple[str, ...]] = {
    "use_dora": ("use_dora", "dora"),
    "modules_to_save": ("modules_to_save",),
    "lora_bias": ("lora_bias",),
    "alora_invocation_tokens": ("alora",),
    "trainable_token_indices": ("trainable_token",),
    "target_parameters": ("target_parameters",),
    "kasa_config": ("kasa", "lora_diag"),
    "velora_config": ("velora",),
    "monteclora_config": ("monteclora",),
    "use_bdlora": ("bdlora", "bd-lora", "bd_lora"),
    "init_lora_weights": ("init_lora_weights", "mica"),
    "rank_pattern": ("rank_pattern",),
    "alpha_pattern": ("alpha_pattern",),
    "use_rslora": ("rslora",),
}
# what a kind does not do yet, by the words of its refusal (issue 21: LoHa is read, merged and
# converted; attach and the low-rank operations come later)
KIND_FEATURES: dict[str, dict[str, tuple[str, ...]]] = {
    "LOHA": {"LoHa in the low-rank operations": ("a LOHA adapter is a LoRA exactly: convert it first",)},
    "LOKR": {"LoKr in the low-rank operations": ("a LOKR adapter is a LoRA exactly: convert it first",)},
}
MODEL_FEATURES: dict[str, dict[str, tuple[str, ...]]] = {
    "MHA": {"nn.MultiheadAttention": ("multiheadattention",)},
    "EmbConv1D": {"Conv1D orientation": ("fan_in_fan_out",)},
    "gpt2": {"Conv1D orientation": ("fan_in_fan_out",)},
    "Conv2dGroups": {"grouped convolution": ("grouped convolution",)},
    "Conv2dGroups2": {"grouped convolution": ("grouped convolution",)},
}
PROMPT_WORDS = ("prompt", "prefix", "p_tuning", "virtual token")

# (case name, check) -> refused feature, or "" for a pass; printed by ``summary``
RESULTS: dict[tuple[str, str], str] = {}

# Cases a known gap of adapterkit fails, as {case: (checks, reason)}: xfail(strict=True), so that
# a fix shows as XPASS and its entry must go.  Empty: every case passes or is refused by name.
XFAIL: dict[str, tuple[tuple[str, ...], str]] = {}


def summary() -> str:
    if not RESULTS:
        return ""
    cases = {c for c, _ in RESULTS}
    refused = Counter(f for f in RESULTS.values() if f and not f.startswith("difference: "))
    differences = Counter(f[len("difference: "):] for f in RESULTS.values() if f.startswith("difference: "))
    lines = [f"PEFT matrix: {len(cases)} cases, {len(RESULTS)} checks passed: {sum(1 for f in RESULTS.values() if not f)} equal to PEFT, "
             f"{sum(refused.values())} refused by name, {sum(differences.values())} deliberate differences"]
    lines += [f"  refused, {feature}: {n}" for feature, n in sorted(refused.items())]
    lines += [f"  difference, {what}: {n}" for what, n in sorted(differences.items())]
    gaps = Counter(reason for checks, reason in XFAIL.values() for _ in checks)
    if gaps:
        lines.append(f"  xfail (known gaps, whole matrix): {sum(gaps.values())}")
        lines += [f"    {reason}: {n}" for reason, n in sorted(gaps.items())]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- building (PEFT side)


def _quiet() -> Any:
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("ignore")
    return ctx


def run(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out


def randomize(model: torch.nn.Module, adapter_name: str, seed: int) -> None:
    """Fill every parameter of adapter ``adapter_name`` with randn·0.3 (PEFT's lora_B starts at 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if adapter_name in name.split("."):
                p.copy_((torch.randn(p.shape, generator=g) * 0.3).to(p.dtype))


def set_active_everywhere(model: Any, names: list[str]) -> None:
    """PEFT's own way to activate several adapters (TestMultipleActiveAdapters)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import AuxiliaryTrainingWrapper

    for module in model.modules():
        if isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            module.set_adapter(names)


class PeftRefuses(Exception):
    """PEFT itself refuses the operation: adapterkit must refuse it by name too."""


@dataclass
class Built:
    """A case built by PEFT: the model (active adapters = ``names``), its outputs, the saved folder."""

    case: MatrixCase
    model: Any
    names: list[str]  # the active adapters, in order
    dirs: list[Path]  # their saved folders
    other: Path | None  # a second adapter of the same config, for combine ('other'), or None
    output: torch.Tensor
    root: Path
    cache: dict[str, Any] = field(default_factory=dict)

    def adapters(self) -> list[Any]:
        if "adapters" not in self.cache:
            self.cache["adapters"] = [adapterkit.load(d) for d in self.dirs]
        return self.cache["adapters"]

    def peft_merged(self, only: str | None = None) -> dict[str, torch.Tensor]:
        """PEFT's merge_and_unload state dict (the active adapters, or ``only``); raises
        PeftRefuses where PEFT cannot merge (prompt learning, aLoRA)."""
        key = f"merged {only}"
        if key not in self.cache:
            if self.case.prompt:
                raise PeftRefuses("prompt learning has no weights to merge")
            model = copy.deepcopy(self.model)
            ctx = _quiet()
            try:
                if only is not None:
                    model.set_adapter(only)
                self.cache[key] = {k: v.detach().clone() for k, v in model.merge_and_unload().state_dict().items()}
            except (NotImplementedError, ValueError) as exc:
                self.cache[key] = PeftRefuses(f"{type(exc).__name__}: {exc}")
            finally:
                ctx.__exit__(None, None, None)
        if isinstance(self.cache[key], PeftRefuses):
            raise self.cache[key]
        return self.cache[key]


def build(case: MatrixCase, root: Path) -> Built:
    ctx = _quiet()
    try:
        model = get_peft_model(build_base(case.model), case.make_config(), adapter_name="adapter_1" if case.second else "default")
        names = ["adapter_1"] if case.second else ["default"]
        other = None
        if case.second is not None:
            model.add_adapter("adapter_2", case.make_config(case.second))
            names.append("adapter_2")
        elif case.supported_kind and not case.prompt:
            try:
                model.add_adapter("other", case.make_config())
                other = root / "peft" / "other"
            except Exception:  # PEFT cannot hold a second adapter of this config: no combine
                other = None
        for i, name in enumerate([*names, *(["other"] if other else [])]):
            randomize(model, name, 1234 + i)
        if len(names) > 1:
            set_active_everywhere(model, names)
        model.eval()
        output = run(model, inputs_for(case.model))
        # the model card (README.md) is not compared, and writing it costs more than the rest of a case
        with mock.patch.object(PeftModel, "create_or_update_model_card", lambda self, output_dir: None):
            model.save_pretrained(root / "peft")
    finally:
        ctx.__exit__(None, None, None)
    dirs = [root / "peft" if n == "default" else root / "peft" / n for n in names]
    return Built(case, model, names, dirs, other, output, root)


_BUILT: OrderedDict[str, Built] = OrderedDict()
_BASES: dict[str, Path] = {}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and on a busy machine by far
    try:
        yield tmp_path_factory.mktemp("peft_matrix")
    finally:
        torch.set_num_threads(threads)


def built(case: MatrixCase, workdir: Path) -> Built:
    if case.name not in _BUILT:
        _BUILT[case.name] = build(case, workdir / case.name)
        while len(_BUILT) > 2:  # tests run case by case: keep the current case (and one more)
            _BUILT.popitem(last=False)
    return _BUILT[case.name]


def base_checkpoint(model: str, workdir: Path) -> Path:
    """The base model saved as a checkpoint folder: transformers' save_pretrained for the
    decoders (config.json, tied embeddings stored once), the plain state dict otherwise."""
    if model not in _BASES:
        path = workdir / "bases" / model
        base = build_base(model)
        ctx = _quiet()
        try:
            if model in CUSTOM:
                path.mkdir(parents=True)
                save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(path / "model.safetensors"))
            else:
                base.save_pretrained(path)
        finally:
            ctx.__exit__(None, None, None)
        _BASES[model] = path
    return _BASES[model]


# ----------------------------------------------------------------------------- outcome rules


def case_features(case: MatrixCase) -> dict[str, tuple[str, ...]]:
    used: dict[str, tuple[str, ...]] = {}
    for kwargs in (case.kwargs, case.second or {}):
        for key in kwargs:
            if key in FEATURES:
                used[key] = FEATURES[key]
    if not case.supported_kind:
        used[f"kind {case.kind} not supported yet"] = (case.make_config().peft_type.value,)
    if case.prompt:
        used["prompt learning"] = PROMPT_WORDS
    used.update(MODEL_FEATURES.get(case.model, {}))
    used.update(KIND_FEATURES.get(case.kind, {}))
    return used


def refused_feature(case: MatrixCase, exc: AdapterkitError) -> str | None:
    """The feature of ``case`` that ``exc`` refuses by name, or None (not a refusal by name)."""
    if exc.code not in REFUSAL_CODES:
        return None
    text = " ".join(str(x) for x in (exc, exc.key, exc.expected, exc.actual) if x is not None).lower()
    for feature, words in case_features(case).items():
        if any(w.lower() in text for w in words):
            return feature
    return None


def outcome(case: MatrixCase, check: str, fn: Callable[[], None]) -> None:
    """Run ``fn`` (which compares with PEFT); accept a refusal by name; record the result."""
    try:
        fn()
    except PeftRefuses as exc:
        pytest.fail(f"{case.name} / {check}: PEFT refuses ({exc}) but adapterkit went ahead")
    except AdapterkitError as exc:
        feature = refused_feature(case, exc)
        if feature is None:
            pytest.fail(f"{case.name} / {check}: adapterkit raised [{exc.code}], not a refusal by name of a feature "
                        f"the case uses ({', '.join(case_features(case)) or 'none'}): {exc}")
        RESULTS[(case.name, check)] = feature
        return
    RESULTS.setdefault((case.name, check), "")


def assert_outputs(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL, msg=lambda m: f"{what}: {m}")


def assert_state(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    assert sorted(actual) == sorted(expected), f"{what}: keys differ: {sorted(set(actual) ^ set(expected))}"
    for key in expected:
        torch.testing.assert_close(actual[key].float(), expected[key].float(), rtol=RTOL, atol=ATOL, msg=lambda m, k=key: f"{what}: {k}: {m}")


# ----------------------------------------------------------------------------- checks (adapterkit side)


def check_validate(b: Built) -> None:
    for d in b.dirs:
        errors = [p for p in adapterkit.validate(d) if p.severity == "error"]
        if errors:
            raise errors[0].to_error()


def check_load(b: Built) -> None:
    for name, adapter in zip(b.names, b.adapters()):
        expected = get_peft_model_state_dict(b.model, adapter_name=name)
        assert_state(dict(adapter.tensors.items()), expected, f"load {name}")


def check_scaling(b: Built) -> None:
    from peft.tuners.lora import LoraLayer

    for name, adapter in zip(b.names, b.adapters()):
        layers = {n: m for n, m in b.model.base_model.model.named_modules() if isinstance(m, LoraLayer) and name in m.scaling}
        assert layers, "PEFT adapted no module"
        for module, layer in layers.items():
            assert math.isclose(adapter.module(module).scaling, layer.scaling[name], rel_tol=1e-12), module


def _peft_load(b: Built, dirs: list[Path]) -> torch.Tensor:
    ctx = _quiet()
    try:
        model = PeftModel.from_pretrained(build_base(b.case.model), str(dirs[0]), adapter_name=b.names[0])
        for name, d in zip(b.names[1:], dirs[1:]):
            model.load_adapter(str(d), adapter_name=name)
        if len(b.names) > 1:
            set_active_everywhere(model, b.names)
    finally:
        ctx.__exit__(None, None, None)
    return run(model.eval(), inputs_for(b.case.model))


def check_save_dir(b: Built) -> None:
    dirs = [b.root / f"ours_dir_{i}" for i in range(len(b.names))]
    for adapter, d in zip(b.adapters(), dirs):
        adapterkit.save(adapter, d, overwrite=True)
    assert_outputs(_peft_load(b, dirs), b.output, "PEFT loading adapterkit's directory")


def check_save_file(b: Built) -> None:
    for i, adapter in enumerate(b.adapters()):
        path = b.root / f"ours_file_{i}.safetensors"
        adapterkit.save(adapter, path, overwrite=True)
        back = adapterkit.load(path)
        assert back.config == adapter.config
        assert_state(dict(back.tensors.items()), dict(adapter.tensors.items()), "single file")


def _attached(b: Built) -> torch.nn.Module:
    model = build_base(b.case.model)
    for name, adapter in zip(b.names, b.adapters()):
        adapterkit.attach(model, adapter, name=name)
    if len(b.names) > 1:
        adapterkit.set_active(model, b.names)
    return model


def check_attach(b: Built) -> None:
    assert_outputs(run(_attached(b), inputs_for(b.case.model)), b.output, "attach")


def check_merge_and_unload(b: Built) -> None:
    plain = adapterkit.merge_and_unload(_attached(b))
    assert_state(plain.state_dict(), b.peft_merged(), "merge_and_unload")


def check_offline_merge(b: Built) -> None:
    out = b.root / "merged"
    merge_checkpoint(base_checkpoint(b.case.model, b.root.parent), list(b.dirs), out, overwrite=True)
    assert_state(*_comparable(_shards(out), b.peft_merged()), "offline merge")


def _shards(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _comparable(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    theirs = dict(theirs)
    for key in set(theirs) - set(ours):  # a tied output embedding is stored once
        if key.endswith("lm_head.weight"):
            theirs.pop(key)
    return ours, theirs


def _peft_weighted(b: Built, names: list[str], weights: list[float], method: str) -> torch.Tensor:
    model = copy.deepcopy(b.model)
    ctx = _quiet()
    try:
        if b.case.kind == "IA3":
            model.add_weighted_adapter(names, weights, "mix")
        else:
            model.add_weighted_adapter(names, weights, "mix", combination_type=method)
        model.set_adapter("mix")
    finally:
        ctx.__exit__(None, None, None)
    return run(model.eval(), inputs_for(b.case.model))


def _svd_rank_defect(b: Built) -> bool:
    """Whether some module's rank exceeds min(out, in): PEFT's svd then builds factors that do
    not fit (a deliberate difference: adapterkit zero-pads them, see adapterkit/differences.py)."""
    from peft.tuners.lora import LoraLayer

    for layer in b.model.modules():
        if isinstance(layer, LoraLayer):
            for r in layer.r.values():
                w = layer.get_base_layer().weight
                if r > min(w.shape[0], w[0].numel()):
                    return True
    return False


def _lycoris_rank(layer: Any, name: str) -> int:
    """The rank of a LoHa / LoKr module's exact LoRA form, from PEFT's parameters: r² for LoHa
    (a Hadamard product of two rank-r products), rank(W1)·rank(W2) as stored for LoKr (a whole
    side counts its smaller dimension, flattened after the first)."""
    if hasattr(layer, "hada_w1_a"):
        return layer.r[name] ** 2

    def side(whole: Any, a: Any) -> int:
        if name in whole:
            w = whole[name]
            return min(w.shape[0], w[0].numel())
        return a[name].shape[1] if a[name].dim() == 2 and a is layer.lokr_w1_a else min(a[name].shape)
    r2 = layer.r[name] if name in layer.lokr_w2_a else side(layer.lokr_w2, layer.lokr_w2_a)
    return side(layer.lokr_w1, layer.lokr_w1_a) * r2


def _first_principles(b: Built, names: list[str], weights: list[float], method: str, result: Any, difference: str) -> None:
    """Where PEFT's add_weighted_adapter refuses or breaks: the combination from first principles,
    with Dᵢ = PEFT's merge of adapter i alone − base: cat gives base + Σ wᵢ·Dᵢ, svd the best
    rank-k approximation of Σ wᵢ·Dᵢ per weight (k: the largest rank of the inputs, PEFT's default),
    biases summed.  Compared with adapterkit's offline merge of the result."""
    from peft.tuners.lora import LoraLayer

    assert difference in DIFFERENCE_NAMES, difference
    base = build_base(b.case.model).state_dict()
    delta = {k: torch.zeros_like(v) for k, v in base.items()}
    for name, w in zip(names, weights):
        merged = b.peft_merged(only=name)
        for k in delta:
            delta[k] += w * (merged[k] - base[k])
    if b.case.kind in ("LOHA", "LOKR"):
        k_rank = max(_lycoris_rank(m, n) for m in b.model.modules() if hasattr(m, "hada_w1_a") or hasattr(m, "lokr_w1")
                     for n in names if n in m.r)
    else:
        k_rank = max(r for m in b.model.modules() if isinstance(m, LoraLayer) for n, r in m.r.items() if n in names)
    expected = {}
    for key, d in delta.items():
        if method == "svd" and d.dim() >= 2 and key.endswith("weight") and bool(d.any()):
            u, sv, vh = torch.linalg.svd(d.double().flatten(1), full_matrices=False)
            d = ((u[:, :k_rank] * sv[:k_rank]) @ vh[:k_rank]).reshape(d.shape).to(d.dtype)
        expected[key] = base[key] + d
    adapterkit.save(result, b.root / "combined", overwrite=True)
    merge_checkpoint(base_checkpoint(b.case.model, b.root.parent), [b.root / "combined"], b.root / "combined_merged", overwrite=True)
    assert_state(*_comparable(_shards(b.root / "combined_merged"), expected), f"combine {method} vs first principles ({difference})")
    RESULTS[(b.case.name, "combine")] = f"difference: {difference}"


def _layer_orientation(b: Built) -> dict[str, bool]:
    """What the user knows of the model and a file does not show: which adapted layers are
    transformers Conv1D (transposed), read from the live PEFT model."""
    from transformers.pytorch_utils import Conv1D

    out = {}
    for name, module in b.model.base_model.model.named_modules():
        if hasattr(module, "get_base_layer") and module is not module.get_base_layer():
            out[name] = isinstance(module.get_base_layer(), Conv1D)
    return out


def _combine_with_orientation(b: Built, adapters: list[Any], weights: list[float], method: str) -> Any:
    """combine; where the saved fan_in_fan_out flags disagree (PEFT's second adapter on a
    Conv1D), adapterkit must refuse naming the option, and the option then gives PEFT's result.
    LoHa and LoKr are given the base checkpoint (their plain form does not say Linear or convolution)."""
    try:
        if b.case.kind in ("LOHA", "LOKR"):
            return adapterkit.combine(adapters, weights, method, base=base_checkpoint(b.case.model, b.root.parent))
        return adapterkit.combine(adapters, weights, method)
    except AdapterkitError as exc:
        if exc.code != "orientation-unknown":
            raise
        assert "fan_in_fan_out" in str(exc) and "Conv1D orientation" in case_features(b.case), str(exc)
    return adapterkit.combine(adapters, weights, method, fan_in_fan_out=_layer_orientation(b))


def check_combine(b: Built) -> None:
    if b.case.prompt:
        adapterkit.combine(b.adapters() * 2, [1.0, 1.0], "cat")
        pytest.fail("adapterkit combined prompt-learning adapters (PEFT has no add_weighted_adapter for them)")
    if len(b.names) > 1:
        names, adapters, weights = list(b.names), b.adapters(), [1.0, 1.0]
    elif b.other is not None:
        names, adapters, weights = ["default", "other"], [b.adapters()[0], adapterkit.load(b.other)], list(WEIGHTS)
    else:
        pytest.skip("PEFT cannot add a second adapter of this config")
    for method in (["linear"] if b.case.kind == "IA3" else ["cat", "svd"]):
        result = _combine_with_orientation(b, adapters, weights, method)  # a refusal by name ends the check here
        try:
            expected = _peft_weighted(b, names, weights, method)
        except (ValueError, NotImplementedError, TypeError, RuntimeError, AttributeError) as exc:
            peft_error = f"{type(exc).__name__}: {exc}"
            if b.case.kind in ("LOHA", "LOKR") and isinstance(exc, AttributeError):  # no add_weighted_adapter at all
                _first_principles(b, names, weights, method, result, "lycoris-combined-as-lora")
            elif "nn.Parameter" in peft_error:
                _first_principles(b, names, weights, method, result, "target-parameters-combined")
            elif method == "svd" and _svd_rank_defect(b):
                _first_principles(b, names, weights, method, result, "rank-above-min-dimension")
            else:
                pytest.fail(f"PEFT refuses ({peft_error[:200]}) but adapterkit combined ({method})")
            continue
        model = adapterkit.attach(build_base(b.case.model), result, name="mix")
        got = run(model, inputs_for(b.case.model))
        assert_outputs(got, expected, f"combine {method} vs add_weighted_adapter")
        if len(b.names) > 1 and method == "cat" and b.case.kind == "LORA":
            assert_outputs(got, b.output, "combine cat of two active adapters vs both active")


CHECK_FUNCTIONS: dict[str, Callable[..., None]] = {
    "validate": check_validate, "load": check_load, "scaling": check_scaling, "save_dir": check_save_dir,
    "save_file": check_save_file, "attach": check_attach, "merge_and_unload": check_merge_and_unload,
    "offline_merge": check_offline_merge, "combine": check_combine,
}


def _xfail_reason(case: MatrixCase, check: str) -> str | None:
    checks, reason = XFAIL.get(case.name, ((), ""))
    return reason if check in checks else None


def _params() -> list[Any]:
    assert set(XFAIL) <= {c.name for c in CASES}, set(XFAIL) - {c.name for c in CASES}
    params = []
    for case in CASES:
        for check in (CHECKS if case.supported_kind else KIND_CHECKS):
            if check == "scaling" and case.kind != "LORA":
                continue
            reason = _xfail_reason(case, check)
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            params.append(pytest.param(case, check, id=f"{case.name}-{check}", marks=marks))
    return params


@pytest.mark.parametrize(("case", "check"), _params())
def test_peft_matrix(case: MatrixCase, check: str, workdir: Path) -> None:
    b = built(case, workdir)
    outcome(case, check, lambda: CHECK_FUNCTIONS[check](b))
