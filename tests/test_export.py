"""Serving-engine profiles: check(adapter, consumer) and export(adapter, consumer).

Oracles: ΔW formed by hand from the raw tensors (B·A with the scaling re-typed here from the
config, exact-name patterns only), PEFT 0.21.2 loading the exports (logits equal to the
original PEFT model's), and the hypothesis property export ∘ check == [] with ΔW unchanged.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import adapterkit
from adapterkit import Adapter, LoraConfig
from adapterkit.cli import main
from adapterkit.errors import UnsupportedError
from adapterkit.io.checks import structural_problems
from adapterkit.ops.export import CONSUMERS, check, export
from adapterkit.testing import strategies as aks

P = "base_model.model."
ENGINES = ("vllm", "tgi", "llama.cpp")


def lora(ranks: dict[str, int] | None = None, *, r: int = 2, alpha: float = 4, dtype=torch.float32, bias=False, dora=False,
         embed: tuple[str, ...] = (), conv: tuple[str, ...] = (), extra: dict | None = None, **cfg) -> Adapter:
    """Linear modules (out 5, in 6) at ``ranks`` (default: two q modules at r)."""
    ranks = ranks or {"l.0.q": r, "l.1.q": r}
    g = torch.Generator().manual_seed(7)
    t: dict[str, torch.Tensor] = {}
    for name, k in ranks.items():
        if name in embed:
            t[f"{P}{name}.lora_embedding_A"] = torch.randn(k, 9, generator=g).to(dtype)
            t[f"{P}{name}.lora_embedding_B"] = torch.randn(4, k, generator=g).to(dtype)
            continue
        a_shape, b_shape = ((k, 6, 3, 3), (5, k, 1, 1)) if name in conv else ((k, 6), (5, k))
        t[f"{P}{name}.lora_A.weight"] = torch.randn(a_shape, generator=g).to(dtype)
        t[f"{P}{name}.lora_B.weight"] = torch.randn(b_shape, generator=g).to(dtype)
        if bias:
            t[f"{P}{name}.lora_B.bias"] = torch.randn(5, generator=g).to(dtype)
        if dora:
            t[f"{P}{name}.lora_magnitude_vector"] = torch.rand(5, generator=g).to(dtype) + 0.5
    t.update(extra or {})
    targets = tuple(sorted({n.rsplit(".", 1)[-1] for n in ranks}))
    rank_pattern = {n: k for n, k in ranks.items() if k != r}
    return Adapter.from_tensors(LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, rank_pattern=rank_pattern,
                                           lora_bias=bias, use_dora=dora, **cfg), t)


def hand_scaling(cfg: LoraConfig, name: str) -> float:
    """PEFT's rule re-typed for exact-name or anchored pattern keys (the only ones these tests use)."""
    def lookup(pattern: dict, default):
        for key, value in pattern.items():
            if key in (name, "^" + name.replace(".", "\\.")):
                return value
        return default

    r, alpha = lookup(cfg.rank_pattern, cfg.r), lookup(cfg.alpha_pattern, cfg.lora_alpha)
    return alpha / math.sqrt(r) if cfg.use_rslora else alpha / r


def hand_delta(adapter: Adapter, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(scaling·B·A as an m×n fp64 matrix, scaling·bias) from the raw tensors."""
    t, cfg = adapter.tensors, adapter.config
    a_key = next(f"{P}{name}.{p}" for p in ("lora_A.weight", "lora_embedding_A") if f"{P}{name}.{p}" in t)
    b_key = a_key.replace("lora_A", "lora_B").replace("lora_embedding_A", "lora_embedding_B")
    A, B = t[a_key].double(), t[b_key].double()
    s = hand_scaling(cfg, name)
    bias = t.get(f"{P}{name}.lora_B.bias")
    return s * (B.reshape(B.shape[0], -1) @ A.reshape(A.shape[0], -1)), None if bias is None else s * bias.double()


def assert_same_delta(before: Adapter, after: Adapter, *, rtol: float = 1e-6) -> None:
    cfg = after.config
    assert cfg.lora_alpha == cfg.r and not cfg.use_rslora and cfg.rank_pattern == cfg.alpha_pattern  # scaling 1
    assert set(before.modules) == set(after.modules)
    for name in before.modules:
        (d0, b0), (d1, b1) = hand_delta(before, name), hand_delta(after, name)
        assert hand_scaling(cfg, name) == 1.0
        torch.testing.assert_close(d1, d0, rtol=rtol, atol=rtol * float(d0.abs().max()))
        assert (b0 is None) == (b1 is None)
        if b0 is not None:
            torch.testing.assert_close(b1, b0, rtol=rtol, atol=rtol)


def rules(problems) -> set[str]:
    return {p.message.split("]")[0].split("/")[1] for p in problems if p.code == "profile-violation"}


# ----------------------------------------------------------------------------- check


VIOLATIONS = [
    # (adapter builder, consumer, rules expected)
    (lambda: lora({"l.0.q": 2, "l.1.q": 4}), "vllm", {"scaling"}),  # ranks from the tensors; one alpha/r (tests/test_vllm_rules.py)
    (lambda: lora({"l.0.q": 2, "l.1.q": 4}), "tgi", {"rank-pattern", "scaling", "rank-per-type"}),
    (lambda: lora({"l.0.q": 2, "l.1.q": 4}), "llama.cpp", set()),  # alpha / each tensor's rank: what PEFT does
    (lambda: lora({"l.0.q": 2, "l.0.v": 4}, r=4, alpha=8), "tgi", {"rank-pattern", "scaling"}),  # ranks agree per type
    (lambda: lora(alpha_pattern={"l.1.q": 16}), "vllm", {"scaling"}),
    (lambda: lora(alpha_pattern={"l.1.q": 16}), "tgi", {"scaling"}),
    (lambda: lora(alpha_pattern={"l.1.q": 16}), "llama.cpp", {"scaling"}),
    (lambda: lora(use_rslora=True), "vllm", set()),  # vLLM reads use_rslora
    (lambda: lora(use_rslora=True), "tgi", set()),
    (lambda: lora(use_rslora=True), "llama.cpp", {"rslora", "scaling"}),
    (lambda: lora(r=1, use_rslora=True), "llama.cpp", {"rslora"}),  # alpha/√1 = alpha/1: only the flag
    (lambda: lora(dora=True), "vllm", {"dora"}),
    (lambda: lora(dora=True), "tgi", {"dora"}),
    (lambda: lora(dora=True), "llama.cpp", {"dora"}),
    (lambda: lora(modules_to_save=("lm_head",), extra={P + "lm_head.weight": torch.ones(3, 4)}), "vllm", {"modules-to-save", "extra-tensor"}),
    (lambda: lora(modules_to_save=("lm_head",), extra={P + "lm_head.weight": torch.ones(3, 4)}), "tgi", {"modules-to-save", "extra-tensor"}),
    (lambda: lora(modules_to_save=("lm_head",), extra={P + "lm_head.weight": torch.ones(3, 4)}), "llama.cpp", {"modules-to-save", "extra-tensor"}),
    (lambda: lora(bias=True), "vllm", {"lora-bias"}),  # vllm/lora/utils.py: "unsupported LoRA weight"
    (lambda: lora(bias=True), "tgi", {"lora-bias"}),
    (lambda: lora(bias=True), "llama.cpp", {"lora-bias"}),
    (lambda: Adapter.from_tensors(replace(lora().config, bias="all"), dict(lora().tensors)), "vllm", {"bias"}),
    (lambda: lora({"l.0.c": 2}, conv=("l.0.c",)), "vllm", {"layer-type"}),
    (lambda: lora({"l.0.e": 2, "l.0.q": 2}, embed=("l.0.e",)), "vllm", set()),
]


@pytest.mark.parametrize(("make", "consumer", "expected"), VIOLATIONS)
def test_check_flags_each_rule(make, consumer, expected):
    problems = [p for p in check(make(), consumer) if p.severity == "error"]  # warnings: tests/test_vllm_rules.py
    assert rules(problems) == expected, [str(p) for p in problems]
    assert all(p.key for p in problems)


def test_check_names_the_module_and_max_rank():
    problems = check(lora({"l.0.q": 2, "l.1.q": 4}), "vllm", max_rank=2)
    assert {p.key for p in problems} == {"l.1.q"}
    assert "max-rank" in rules(problems)
    assert check(lora({"l.0.q": 2, "l.1.q": 2}), "vllm", max_rank=2) == []
    assert "max-rank" in rules(check(lora({"l.0.q": 2, "l.1.q": 3}), "vllm", max_rank=2))  # one above the maximum


def test_check_peft_reports_pattern_order_and_validation_errors():
    a = Adapter.from_tensors(replace(lora().config, alpha_pattern={"q": 8, r"l\.1\.q": 2}), dict(lora().tensors))
    assert {p.code for p in check(a, "peft")} == {"pattern-order"}
    bad = Adapter.from_tensors(LoraConfig(r=3, lora_alpha=4, target_modules=("q",)), dict(lora().tensors))
    assert "shape-mismatch" in {p.code for p in check(bad, "peft")}
    assert check(lora(), "peft") == []


def test_unknown_consumer_is_an_argument_error():
    with pytest.raises(adapterkit.AdapterkitError, match="argument-invalid"):
        check(lora(), "onnx")


# ----------------------------------------------------------------------------- export


EXPORTABLE = [
    lambda: lora({"l.0.q": 2, "l.1.q": 4, "l.0.v": 3}, alpha_pattern={"l.1.q": 16}),
    lambda: lora({"l.0.q": 2, "l.1.q": 4}, use_rslora=True, alpha=3),
    lambda: lora({"l.0.e": 3, "l.0.q": 2}, embed=("l.0.e",), alpha=5),
    lambda: lora(fan_in_fan_out=True, alpha=1),
]


@pytest.mark.parametrize("consumer", CONSUMERS)
@pytest.mark.parametrize("make", EXPORTABLE)
def test_export_obeys_validates_and_keeps_delta(make, consumer):
    a = make()
    assert check(a, consumer) or consumer in ("peft", "llama.cpp") or a.config.fan_in_fan_out
    out = export(a, consumer)
    assert check(out, consumer) == []
    assert [p for p in structural_problems(out) if p.severity == "error" or p.code == "pattern-order"] == []
    assert_same_delta(a, out)
    if consumer == "vllm":  # vLLM takes each module's rank from its tensors: kept, r the largest
        ranks = {n: int(out.meta(v.keys["lora_A"]).shape[0]) for n, v in out.modules.items()}
        assert ranks == {n: int(a.meta(v.keys["lora_A"]).shape[0]) for n, v in a.modules.items()}
        assert out.config.r == max(ranks.values())
    elif consumer != "peft":
        ranks = {int(out.meta(v.keys["lora_A"]).shape[0]) for v in out.modules.values()}
        assert ranks == {out.config.r} and out.config.rank_pattern == {}
        for name, v in a.modules.items():  # the padding is zeros in both factors, past each module's own rank
            k = int(a.meta(v.keys["lora_A"]).shape[0]) if "lora_A" in v.keys else v.rank
            keys = out.modules[name].keys
            if "lora_A" in keys:
                assert not out.tensors[keys["lora_A"]][k:].any() and not out.tensors[keys["lora_B"]][:, k:].any(), name


def test_vllm_export_resets_a_bias_setting_that_saved_no_tensors():
    # bias="all" on a model without biases: PEFT saved none, but vLLM refuses the config value
    a = lora()
    a = Adapter.from_tensors(replace(a.config, bias="all"), dict(a.tensors))
    assert "bias" in rules(check(a, "vllm"))
    out = export(a, "vllm")
    assert out.config.bias == "none" and check(out, "vllm") == []
    assert_same_delta(a, out)


@pytest.mark.parametrize("consumer", ["peft"])
def test_export_folds_lora_bias(consumer):
    a = lora({"l.0.q": 2, "l.1.q": 4}, bias=True, alpha=6)
    out = export(a, consumer)
    assert check(out, consumer) == [] and out.config.lora_bias
    assert_same_delta(a, out)


def test_export_peft_keeps_dora_and_modules_to_save():
    a = lora({"l.0.q": 2, "l.1.q": 3}, dora=True, alpha=5, modules_to_save=("lm_head",), extra={P + "lm_head.weight": torch.ones(3, 4)})
    out = export(a, "peft")
    assert out.config.use_dora and check(out, "peft") == []
    assert torch.equal(out.tensors[P + "lm_head.weight"], torch.ones(3, 4))
    assert_same_delta(a, out)
    for name in a.modules:
        torch.testing.assert_close(out.module(name).magnitude, a.module(name).magnitude)


UNCONVERTIBLE = [
    (lambda: lora(dora=True), ENGINES, "l.0.q.lora_magnitude_vector"),
    (lambda: lora(modules_to_save=("lm_head",), extra={P + "lm_head.weight": torch.ones(3, 4)}), ENGINES, "lm_head.weight"),
    (lambda: lora(bias=True), ENGINES, "l.0.q.lora_B.bias"),
    (lambda: lora({"l.0.c": 2}, conv=("l.0.c",)), ENGINES, "l.0.c.lora_A.weight"),
]


@pytest.mark.parametrize(("make", "consumers", "key"), UNCONVERTIBLE)
def test_export_refuses_what_cannot_be_served_naming_the_key(make, consumers, key):
    for consumer in consumers:
        with pytest.raises(UnsupportedError, match="not-supported") as info:
            export(make(), consumer)
        assert info.value.key.endswith(key), str(info.value)


def test_export_refuses_a_rank_above_max_rank():
    with pytest.raises(UnsupportedError, match=r"l\.1\.q"):
        export(lora({"l.0.q": 2, "l.1.q": 4}), "vllm", max_rank=2)


@pytest.mark.parametrize(("dtype", "u"), [(torch.bfloat16, 2.0**-8), (torch.float16, 2.0**-11), (torch.float32, 2.0**-24)])
def test_half_precision_fold_rounds_once_within_the_documented_bound(dtype, u):
    """|ΔW' − ΔW| ≤ u·|s|·(|B|·|A|) + fp64 slack, ΔW from the raw (rounded) input tensors."""
    a = lora({"l.0.q": 2, "l.1.q": 4}, alpha=3, dtype=dtype, use_rslora=True)
    out = export(a, "vllm")
    for name in a.modules:
        d0, _ = hand_delta(a, name)
        d1, _ = hand_delta(out, name)
        A = a.tensors[f"{P}{name}.lora_A.weight"].double()
        B = a.tensors[f"{P}{name}.lora_B.weight"].double()
        s = abs(hand_scaling(a.config, name))
        bound = u * s * (B.abs() @ A.abs()) + 1e-12
        assert bool(((d1 - d0).abs() <= bound).all())
        assert out.tensors[f"{P}{name}.lora_A.weight"].dtype == dtype


@settings(max_examples=40, deadline=None)
@given(aks.lora_adapters(layer_types=("linear", "embedding"), use_dora=st.just(False), modules_to_save=False,
                         dtypes=st.just(torch.float32)),
       st.sampled_from(CONSUMERS))
def test_property_export_keeps_delta_and_complies(a, consumer):
    try:
        out = export(a, consumer)
    except UnsupportedError:
        assert consumer in ENGINES and a.config.lora_bias
        return
    assert check(out, consumer) == []
    for name in a.modules:  # the strategies' patterns use exact names, so PEFT's delta is the oracle here
        torch.testing.assert_close(out.delta_weight(name, dtype=torch.float64), a.delta_weight(name, dtype=torch.float64),
                                   rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- PEFT loads the exports

peft = pytest.importorskip("peft")
pytest.importorskip("transformers")

from peft import PeftModel  # noqa: E402
from peft_models import CASES_BY_NAME, build_peft_model, run  # noqa: E402


@pytest.mark.parametrize(("case_name", "consumers"), [
    ("lora_rslora_patterns", CONSUMERS), ("lora_patterns", CONSUMERS), ("lora_bias", ("peft",)), ("lora_dora", ("peft",)),
    ("lora_embedding", CONSUMERS),
])
def test_peft_loads_exports_with_the_same_outputs(case_name, consumers, tmp_path):
    case = CASES_BY_NAME[case_name]
    model = build_peft_model(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(tmp_path / "in")
    a = adapterkit.load(tmp_path / "in")
    want = run(model, case.inputs())
    for consumer in consumers:
        out = export(a, consumer)
        assert check(out, consumer) == []
        path = adapterkit.save(out, tmp_path / consumer)
        assert adapterkit.validate(path) == []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = PeftModel.from_pretrained(case.base(), str(path)).eval()
        torch.testing.assert_close(run(loaded, case.inputs()), want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- CLI


def test_cli_check_and_convert_for(tmp_path):
    src = adapterkit.save(lora({"l.0.q": 2, "l.1.q": 4}, alpha_pattern={"l.1.q": 16}), tmp_path / "in")
    runner = CliRunner()
    res = runner.invoke(main, ["check", str(src), "--for", "tgi"])
    assert res.exit_code == 1 and "rank-per-type" in res.output and "does NOT comply" in res.output
    res = runner.invoke(main, ["check", str(src), "--for", "vllm", "--json"])
    assert res.exit_code == 1 and not json.loads(res.output)["complies"]
    assert runner.invoke(main, ["check", str(src), "--for", "peft"]).exit_code == 0
    assert runner.invoke(main, ["check", str(tmp_path / "nope"), "--for", "vllm"]).exit_code == 2
    res = runner.invoke(main, ["convert", str(src), str(tmp_path / "out"), "--for", "tgi"])
    assert res.exit_code == 0, res.output
    assert runner.invoke(main, ["check", str(tmp_path / "out"), "--for", "tgi"]).exit_code == 0
    assert_same_delta(adapterkit.load(src), adapterkit.load(tmp_path / "out"))
    assert runner.invoke(main, ["convert", str(src), str(tmp_path / "o.safetensors"), "--for", "vllm"]).exit_code == 2
    res = runner.invoke(main, ["convert", str(src), str(tmp_path / "plain")])  # without --for: unchanged
    assert res.exit_code == 0 and adapterkit.load(tmp_path / "plain") == adapterkit.load(src)
    dora = adapterkit.save(lora(dora=True), tmp_path / "dora")
    res = runner.invoke(main, ["convert", str(dora), str(tmp_path / "d2"), "--for", "vllm"])
    assert res.exit_code == 2 and "lora_magnitude_vector" in res.output and "not-supported" in res.output


def test_non_lora_adapters_are_refused_by_engines_and_pass_through_for_peft():
    from adapterkit import IA3Config

    ia3 = Adapter.from_tensors(IA3Config(target_modules=("k",)), {P + "m.k.ia3_l": torch.ones(3, 1)})
    for consumer in ENGINES:
        assert rules(check(ia3, consumer)) == {"lora-only"}
        with pytest.raises(UnsupportedError, match="peft_type"):
            export(ia3, consumer)
    passed = export(ia3, "peft")  # the same tensors and config; only the recipe gains the export step
    assert check(ia3, "peft") == [] and passed.tensors is ia3.tensors and passed.config is ia3.config
    assert [s["op"] for s in passed.recipe] == ["export"] and ia3.recipe == ()
