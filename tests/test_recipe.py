"""Recipes (spec §5.6): every operation that makes an adapter records its step in
``adapterkit.recipe``; load reads it back; the model card and ``info`` show it.

Expected recipes are written out literally here and the files' metadata is read with the
safetensors library and ``json``, not with adapterkit's recipe code; the card is parsed with a
regex of its own.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

import adapterkit
from adapterkit import Adapter, IA3Config, LoraConfig
from adapterkit.cli import main
from adapterkit.errors import AdapterkitError
from adapterkit.hub.card import adapter_card

V = adapterkit.__version__
P = "base_model.model."
MODS = ("model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj")  # 16 -> 16, as tests/peft_models.llama


def lora(seed: int, r: int = 4) -> Adapter:
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for m in MODS:
        tensors[f"{P}{m}.lora_A.weight"] = torch.randn(r, 16, generator=g)
        tensors[f"{P}{m}.lora_B.weight"] = torch.randn(16, r, generator=g)
    return Adapter.from_tensors(LoraConfig(r=r, lora_alpha=2 * r, target_modules=("q_proj",)), tensors)


def metadata(path: Path) -> dict[str, str]:
    """The safetensors ``__metadata__`` of an adapter file or PEFT folder, read by the safetensors library."""
    weights = path / "adapter_model.safetensors" if path.is_dir() else path
    with safe_open(str(weights), "pt") as f:
        return f.metadata() or {}


def recorded(path: Path) -> list[dict]:
    return json.loads(metadata(path)["adapterkit.recipe"])


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def ok(*args):
    res = run(*args)
    assert res.exit_code == 0, res.output
    return res


FORMS = ["out.safetensors", "out"]


# ----------------------------------------------------------------------------- the Python API


def _ops() -> dict:
    a, b = lora(1), lora(2, r=2)
    return {
        "combine": (lambda: adapterkit.combine([a, b], [0.7, -0.3], "ties_svd", rank=3, density=0.5, names=["a", "org/b@v1"]),
                    {"op": "combine", "method": "ties_svd", "inputs": ["a", "org/b@v1"], "weights": [0.7, -0.3], "rank": 3,
                     "density": 0.5, "majority_sign": "total"}),
        "combine_dare": (lambda: adapterkit.combine([a, b], [1, 1], "dare_linear", density=0.5, seed=7, svd_clamp=None, names=["a", "b"]),
                         {"op": "combine", "method": "dare_linear", "inputs": ["a", "b"], "weights": [1.0, 1.0], "density": 0.5, "seed": 7}),
        "resize": (lambda: adapterkit.resize(a, energy=0.9, balanced=False)[0], {"op": "resize", "energy": 0.9, "balanced": False}),
        "resize_sv": (lambda: adapterkit.resize(a, sv_ratio=4.0)[0], {"op": "resize", "sv_ratio": 4.0, "balanced": True}),
        "rebalance": (lambda: adapterkit.rebalance(a, rank=2)[0], {"op": "rebalance", "rank": 2, "balanced": True}),
        "rebalance_budget": (lambda: adapterkit.rebalance(a, budget=200)[0], {"op": "rebalance", "budget": 200, "balanced": True}),
        "prune": (lambda: adapterkit.prune(a, layers=[1, 1], modules="v_proj", min_energy=0.0)[0],
                  {"op": "prune", "layers": [1], "modules": "v_proj", "min_energy": 0.0}),
        "prune_keep": (lambda: adapterkit.prune(a, keep_fraction=0.5)[0], {"op": "prune", "keep_fraction": 0.5}),
        "export": (lambda: adapterkit.export(a, "vllm", max_rank=8), {"op": "export", "consumer": "vllm", "max_rank": 8}),
    }


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("op", list(_ops()))
def test_each_operation_records_its_step_and_it_round_trips(tmp_path, op, form):
    make, want = _ops()[op]
    result = make()
    want = {**want, "adapterkit": V}
    assert list(result.recipe) == [want]
    out = adapterkit.save(result, tmp_path / form)
    assert recorded(out) == [want]
    assert list(adapterkit.load(out).recipe) == [want]
    assert list(adapterkit.open_adapter(out).recipe) == [want]


def test_default_names_are_the_sources(tmp_path):
    a = adapterkit.save(lora(1), tmp_path / "a.safetensors")
    b = adapterkit.save(lora(2), tmp_path / "b")
    result = adapterkit.combine([adapterkit.load(a), adapterkit.load(b), lora(3)], [1, 1, 1], "linear")
    assert result.recipe[0]["inputs"] == [str(a), str(b), "adapters[2]"]
    for names in (["only-one"], ["a", "b", "c"], "ab"):
        with pytest.raises(AdapterkitError, match="one name per adapter") as info:
            adapterkit.combine([lora(1), lora(2)], [1, 1], names=names)
        assert info.value.code == "argument-invalid"


def test_extract_records_what_was_given(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    base = {"model.layers.0.mlp.up_proj.weight": torch.randn(12, 8, generator=g), "model.norm.weight": torch.ones(8)}
    ft = {k: v.clone() for k, v in base.items()}
    ft["model.layers.0.mlp.up_proj.weight"] += torch.randn(12, 2, generator=g) @ torch.randn(2, 8, generator=g)
    ft["model.norm.weight"] += 0.5
    save_file(base, tmp_path / "base.safetensors")
    save_file(ft, tmp_path / "ft.safetensors")
    monkeypatch.chdir(tmp_path)  # relative paths are recorded as given, not resolved
    adapter, _ = adapterkit.extract(Path("base.safetensors"), "ft.safetensors", rank=2, targets="mlp", save_changed=True)
    want = {"op": "extract", "base": "base.safetensors", "finetuned": "ft.safetensors",
            "rank": 2, "targets": "mlp", "save_changed": True, "adapterkit": V}
    assert list(adapter.recipe) == [want]
    res = ok("extract", tmp_path / "base.safetensors", tmp_path / "ft.safetensors", tmp_path / "x", "--energy", "0.99")
    assert "extracted" in res.output
    assert recorded(tmp_path / "x") == [{"op": "extract", "base": str(tmp_path / "base.safetensors"),
                                          "finetuned": str(tmp_path / "ft.safetensors"), "energy": 0.99, "save_changed": False,
                                          "adapterkit": V}]


def test_chains_append_and_a_combined_input_keeps_its_own_recipe(tmp_path):
    resized, _ = adapterkit.resize(adapterkit.combine([lora(1), lora(2)], [0.5, 0.5], rank=4, names=["x", "y"]), rank=2)
    assert [s["op"] for s in resized.recipe] == ["combine", "resize"]
    pruned, _ = adapterkit.prune(adapterkit.load(adapterkit.save(resized, tmp_path / "r")), layers=[0])
    assert [s["op"] for s in pruned.recipe] == ["combine", "resize", "prune"]
    again = adapterkit.combine([pruned, lora(3)], [1, 1], "cat", names=["p", "q"])
    step = again.recipe[0]
    assert len(again.recipe) == 1 and step["inputs"] == ["p", "q"]
    assert [[s["op"] for s in r] for r in step["input_recipes"]] == [["combine", "resize", "prune"], []]
    card = adapter_card(again, "org/again")
    assert re.search(r"^1\. combine by cat .*`p` ×1, `q` ×1", card, re.M)
    assert re.search(r"^   - `p` was made by:\n {5}1\. combine by svd .*\n {5}2\. resize to rank 2.*\n {5}3\. prune \(layers \[0\]\)", card, re.M)


def test_recipe_is_provenance_not_content(tmp_path):
    a = lora(1)
    resized, _ = adapterkit.resize(a, rank=4)  # at its rank: the same ΔW, other factors
    plain = Adapter.from_tensors(resized.config, dict(resized.tensors))
    assert plain == resized and plain.recipe == () and resized.recipe != ()
    no_recipe = adapterkit.save(plain, tmp_path / "plain.safetensors")
    assert "adapterkit.recipe" not in metadata(no_recipe)  # a file without one stays as before
    assert adapterkit.validate(no_recipe) == [] and adapterkit.load(no_recipe).recipe == ()
    with_recipe = adapterkit.save(resized, tmp_path / "r.safetensors")
    assert adapterkit.validate(with_recipe) == []
    assert adapterkit.load(with_recipe) == adapterkit.load(no_recipe)
    with_meta, without_meta = metadata(with_recipe), metadata(no_recipe)
    assert with_meta["adapterkit.digest"] == without_meta["adapterkit.digest"]  # the content digest (§5.5) ignores the recipe
    assert with_meta["adapterkit.digests"] == without_meta["adapterkit.digests"]


# ----------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("form", FORMS)
def test_cli_records_each_operation_and_convert_keeps_it(tmp_path, form):
    a = adapterkit.save(lora(1), tmp_path / "a")
    b = adapterkit.save(lora(2, r=2), tmp_path / "b.safetensors")
    c = tmp_path / ("c" + Path(form).suffix)
    ok("combine", a, b, "--weights", "0.7,0.3", "--method", "svd", "--rank", "3", "--svd-clamp", "0.99", "-o", c)
    step1 = {"op": "combine", "method": "svd", "inputs": [str(a), str(b)], "weights": [0.7, 0.3], "rank": 3, "svd_clamp": 0.99,
             "adapterkit": V}
    assert recorded(c) == [step1]
    r = tmp_path / ("r" + Path(form).suffix)
    ok("resize", c, r, "--rank", "2", "--no-balanced")
    step2 = {"op": "resize", "rank": 2, "balanced": False, "adapterkit": V}
    assert recorded(r) == [step1, step2]
    rb = tmp_path / ("rb" + Path(form).suffix)
    ok("rebalance", r, rb, "--budget", "100")
    step3 = {"op": "rebalance", "budget": 100, "balanced": True, "adapterkit": V}
    assert recorded(rb) == [step1, step2, step3]
    p = tmp_path / ("p" + Path(form).suffix)
    ok("prune", rb, p, "--layers", "0", "--min-energy", "0.001")
    step4 = {"op": "prune", "layers": [0], "min_energy": 0.001, "adapterkit": V}
    assert recorded(p) == [step1, step2, step3, step4]
    ok("convert", p, tmp_path / "copy.safetensors")  # an unchanged rewrite keeps the recipe
    assert recorded(tmp_path / "copy.safetensors") == [step1, step2, step3, step4]
    ok("convert", p, tmp_path / "served", "--for", "tgi")
    assert recorded(tmp_path / "served") == [step1, step2, step3, step4, {"op": "export", "consumer": "tgi", "adapterkit": V}]


def test_info_shows_the_recipe(tmp_path):
    a = adapterkit.save(lora(1), tmp_path / "a")
    ok("combine", a, a, "--weights", "1,-0.5", "--method", "linear", "-o", tmp_path / "c")
    ok("resize", tmp_path / "c", tmp_path / "r", "--energy", "0.95")
    summary = json.loads(ok("info", tmp_path / "r", "--json").output)
    assert [s["op"] for s in summary["recipe"]] == ["combine", "resize"]
    assert summary["recipe"][0]["weights"] == [1.0, -0.5] and summary["recipe"][1]["energy"] == 0.95
    text = ok("info", tmp_path / "r", "--no-modules").output
    made = text[text.index("made by:"):].splitlines()
    assert made[1].strip().startswith("1. combine by linear") and f"`{a}` ×1, `{a}` ×-0.5" in made[1]
    assert made[2].strip().startswith("2. resize keeping energy 0.95")
    plain = json.loads(ok("info", a, "--json").output)
    assert plain["recipe"] == [] and "made by" not in ok("info", a).output


# ----------------------------------------------------------------------------- the model card


def test_card_lists_the_steps_with_their_parameters(tmp_path):
    c = adapterkit.combine([lora(1), lora(2)], [0.7, 0.3], "dare_ties_svd", rank=8, density=0.4, seed=3, majority_sign="frequency",
                           names=["org/math", "./code"])
    r, _ = adapterkit.rebalance(c, budget=300)
    card = adapter_card(adapterkit.load(adapterkit.save(r, tmp_path / "r.safetensors")), "org/r")
    body = card[card.index("\n---\n", 4):]
    section = body[body.index("## How it was made"):]
    steps = re.findall(r"^(\d+)\. (\w+) (.*)$", section, re.M)
    assert [(n, op) for n, op, _ in steps] == [("1", "combine"), ("2", "rebalance")]
    combine_line, rebalance_line = steps[0][2], steps[1][2]
    for part in ("dare_ties_svd", "rank 8", "density 0.4", "seed 3", "majority sign `frequency`", "`org/math` ×0.7", "`./code` ×0.3",
                 f"adapterkit {V}"):
        assert part in combine_line, (part, combine_line)
    assert "budget of 300 parameters" in rebalance_line and "unbalanced" not in rebalance_line
    assert "not recorded (the adapter's files carry no" in adapter_card(lora(1), "org/x")
    unbalanced, _ = adapterkit.resize(lora(1), rank=2, balanced=False)
    line = re.search(r"^1\. (.*)$", adapter_card(unbalanced, "org/u"), re.M)[1]
    assert line.startswith("resize to rank 2, unbalanced factors")
    balanced, _ = adapterkit.resize(lora(1), rank=2)
    assert "unbalanced" not in adapter_card(balanced, "org/b")


def test_a_card_renders_steps_whose_members_have_unexpected_types():
    from adapterkit.io.recipe import lines

    odd = ({"op": "combine", "adapterkit": "9", "inputs": "ab", "weights": 3, "input_recipes": 5},
           {"op": "combine", "adapterkit": "9", "inputs": ["x"], "weights": [1], "input_recipes": [["not a step"]]},
           {"op": "future-op", "adapterkit": "9", "nested": {"a": [1, 2.5]}})
    text = lines(odd)
    assert text[0].startswith("1. combine by None") and text[1].startswith("2. combine by None of `x` ×1")
    assert len(text) == 3 and text[2].startswith("3. future-op (nested {'a': [1, 2.5]})")


# ----------------------------------------------------------------------------- malformed values, PEFT


BAD = [
    ("[{\"op\":", "not valid JSON", "__metadata__.adapterkit.recipe"),
    ("{\"op\":\"resize\",\"adapterkit\":\"0.1.0\"}", "JSON array", "__metadata__.adapterkit.recipe"),
    ("[\"resize\"]", "must be a JSON object", "__metadata__.adapterkit.recipe[0]"),
    ("[{\"adapterkit\":\"0.1.0\"}]", "string 'op'", "__metadata__.adapterkit.recipe[0].op"),
    ("[{\"op\":\"\",\"adapterkit\":\"0.1.0\"}]", "string 'op'", "__metadata__.adapterkit.recipe[0].op"),
    ("[{\"op\":\"resize\",\"adapterkit\":\"0.1.0\"},{\"op\":\"resize\",\"adapterkit\":1}]", "string 'adapterkit'",
     "__metadata__.adapterkit.recipe[1].adapterkit"),
    ("[{\"op\":\"resize\",\"adapterkit\":\"0.1.0\",\"rank\":NaN}]", "not valid JSON", "__metadata__.adapterkit.recipe"),
]


def _with_recipe(path: Path, value: str, form: str) -> Path:
    """An adapter file written by the safetensors library with ``value`` as its recipe."""
    a = lora(1)
    config = json.dumps(a.config.to_dict(), sort_keys=True, separators=(",", ":"))
    meta = {"format": "pt", "adapterkit.version": "1.0", "adapterkit.recipe": value}
    tensors = {k: a.tensors[k] for k in a.tensors}
    if form == "file":
        save_file(tensors, path, metadata={**meta, "adapterkit.config": config})
        return path
    path.mkdir()
    save_file(tensors, path / "adapter_model.safetensors", metadata=meta)
    (path / "adapter_config.json").write_text(config)
    return path


@pytest.mark.parametrize("form", ["file", "dir"])
@pytest.mark.parametrize(("value", "message", "key"), BAD)
def test_a_malformed_recipe_is_metadata_invalid(tmp_path, value, message, key, form):
    path = _with_recipe(tmp_path / ("a.safetensors" if form == "file" else "a"), value, form)
    weights = path if form == "file" else path / "adapter_model.safetensors"
    with pytest.raises(AdapterkitError) as info:
        adapterkit.load(path)
    assert info.value.code == "metadata-invalid" and message in str(info.value) and info.value.key == key
    assert str(weights) in str(info.value)
    [problem] = adapterkit.validate(path)
    assert (problem.code, problem.key) == ("metadata-invalid", key)
    res = run("info", path)
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and res.output.rstrip().endswith("[metadata-invalid]")


@given(st.text(max_size=60) | st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(["op", "adapterkit", "x"]), c, max_size=3),
                                           max_leaves=8).map(json.dumps))
def test_any_recipe_value_loads_or_is_metadata_invalid(tmp_path_factory, value):
    path = _with_recipe(tmp_path_factory.mktemp("h") / "a.safetensors", value, "file")
    try:
        steps = adapterkit.open_adapter(path).recipe
    except AdapterkitError as exc:
        assert exc.code == "metadata-invalid"
        return
    data = json.loads(value)  # what loaded must be a list of objects with string op (non-empty) and string adapterkit
    assert isinstance(data, list) and list(steps) == data
    assert all(isinstance(s, dict) and isinstance(s.get("op"), str) and s["op"] and isinstance(s.get("adapterkit"), str) for s in data)
    adapter_card(adapterkit.load(path), "org/x")  # renders whatever members a step holds


def test_peft_loads_files_with_a_recipe(tmp_path):
    peft = pytest.importorskip("peft")
    from peft_models import llama

    result, _ = adapterkit.resize(adapterkit.combine([lora(1), lora(2)], [1, 1], rank=4, names=["a", "b"]), rank=2)
    out = adapterkit.save(result, tmp_path / "out")
    assert "adapterkit.recipe" in metadata(out)
    model = peft.PeftModel.from_pretrained(llama(), out).eval()
    for m in MODS:
        layer = model.get_submodule(f"base_model.model.{m}")
        want = result.tensors[f"{P}{m}.lora_B.weight"] @ result.tensors[f"{P}{m}.lora_A.weight"]
        torch.testing.assert_close(layer.get_delta_weight("default"), want)


def test_ia3_combine_records_too(tmp_path):
    cfg = IA3Config(target_modules=("k_proj",), feedforward_modules=())
    a = Adapter.from_tensors(cfg, {f"{P}model.layers.0.k_proj.ia3_l": torch.ones(4, 1)})
    out = adapterkit.save(adapterkit.combine([a, a], [0.5, 0.5], "linear", names=["x", "y"]), tmp_path / "ia3.safetensors")
    assert recorded(out) == [{"op": "combine", "method": "linear", "inputs": ["x", "y"], "weights": [0.5, 0.5], "adapterkit": V}]


def test_a_step_holds_paths_as_the_strings_given_and_drops_unset_parameters():
    from adapterkit.io.recipe import step

    s = step("combine", inputs=[Path("a/b"), "org/x@v1"], base=Path("base"), rank=None, seed=0)
    assert s == {"op": "combine", "inputs": ["a/b", "org/x@v1"], "base": "base", "seed": 0, "adapterkit": V}
    assert json.loads(json.dumps(s)) == s


# ----------------------------------------------------------------------------- the exact words of a step

_STEPS = [
    ({"op": "combine", "method": "svd", "inputs": ["org/a", "./b"], "weights": [0.7, 0.3], "rank": 16, "adapterkit": "0.1.0"},
     "combine by svd (rank 16) of `org/a` ×0.7, `./b` ×0.3 [adapterkit 0.1.0]"),
    ({"op": "combine", "method": "dare_ties", "inputs": ["a", "b"], "weights": [1.0, -0.5], "density": 0.4, "seed": 3,
      "majority_sign": "frequency", "svd_clamp": 0.99, "adapterkit": "0.1.0"},
     "combine by dare_ties (density 0.4, seed 3, majority sign `frequency`, svd clamp 0.99) of `a` ×1, `b` ×-0.5 [adapterkit 0.1.0]"),
    ({"op": "extract", "base": "org/base", "finetuned": "./ft", "rank": 8, "targets": ["q_proj", "v_proj"], "save_changed": True,
      "adapterkit": "0.1.0"},
     "extract `./ft` − `org/base` (rank 8, targets [`q_proj`, `v_proj`], save changed yes) [adapterkit 0.1.0]"),
    ({"op": "resize", "rank": 4, "adapterkit": "0.1.0"}, "resize to rank 4 [adapterkit 0.1.0]"),
    ({"op": "resize", "energy": 0.95, "balanced": False, "adapterkit": "0.1.0"},
     "resize keeping energy 0.95, unbalanced factors (B = U·Σ, A = Vᵀ) [adapterkit 0.1.0]"),
    ({"op": "resize", "sv_ratio": 10.0, "balanced": True, "adapterkit": "0.1.0"}, "resize by σ ratio 10 [adapterkit 0.1.0]"),
    ({"op": "rebalance", "budget": 300, "adapterkit": "0.1.0"}, "rebalance to a budget of 300 parameters [adapterkit 0.1.0]"),
    ({"op": "rebalance", "rank": 4.5, "balanced": False, "adapterkit": "0.1.0"},
     "rebalance to average rank 4.5, unbalanced factors (B = U·Σ, A = Vᵀ) [adapterkit 0.1.0]"),
    ({"op": "prune", "layers": [0, 1], "min_energy": 0.00001, "keep_fraction": 0.5, "adapterkit": "0.1.0"},
     "prune (layers [0, 1], min energy 1e-05, keep fraction 0.5) [adapterkit 0.1.0]"),
    ({"op": "export", "consumer": "vllm", "max_rank": 64, "adapterkit": "0.1.0"}, "export for vllm (max rank 64) [adapterkit 0.1.0]"),
    ({"op": "quantize", "bits": 4, "adapterkit": "0.1.0"}, "quantize (bits 4) [adapterkit 0.1.0]"),
]


@pytest.mark.parametrize(("step", "text"), _STEPS, ids=[f"{s['op']}-{i}" for i, (s, _) in enumerate(_STEPS)])
def test_each_step_is_described_in_these_words(step, text):
    """The one line a step becomes (info, model card): the operation, its rule, the parameters given in
    their recorded order (names with spaces, booleans yes/no, floats shortest, strings in backticks),
    the inputs with their weights in order, and the adapterkit version last."""
    from adapterkit.io.recipe import describe

    assert describe(step) == text


_NESTED = (
    {"op": "combine", "method": "cat", "inputs": ["x", "y"], "weights": [1, 1],
     "input_recipes": [[{"op": "resize", "rank": 2, "adapterkit": "0.1.0"}], []], "adapterkit": "0.1.0"},
    {"op": "resize", "rank": 2, "adapterkit": "0.1.0"},
)
_NESTED_LINES = [
    "1. combine by cat of `x` ×1, `y` ×1 [adapterkit 0.1.0]",
    "   - `x` was made by:",
    "     1. resize to rank 2 [adapterkit 0.1.0]",
    "2. resize to rank 2 [adapterkit 0.1.0]",
]


def test_a_recipe_is_a_numbered_list_with_each_inputs_own_recipe_indented_under_its_step():
    from adapterkit.io.recipe import lines

    assert lines(_NESTED) == _NESTED_LINES


def test_info_and_the_model_card_show_the_recipe_in_these_words(tmp_path):
    import dataclasses

    made = dataclasses.replace(lora(1), recipe=_NESTED)
    path = adapterkit.save(made, tmp_path / "made")
    text = ok("info", path, "--no-modules").output.splitlines()
    at = text.index("made by:")
    assert text[at + 1 : at + 1 + len(_NESTED_LINES)] == ["  " + line for line in _NESTED_LINES]
    assert len(text) == at + 1 + len(_NESTED_LINES) or not text[at + 1 + len(_NESTED_LINES)].startswith("  ")
    card = adapter_card(adapterkit.load(path), "org/made").splitlines()
    start = card.index("## How it was made")
    end = start + 2 + len(_NESTED_LINES)
    assert card[start:end] == ["## How it was made", "", *_NESTED_LINES]
    assert card[end:end + 1] in ([], [""])  # nothing more in the list
    plain = adapter_card(lora(1), "org/plain").splitlines()
    assert "How it was made: not recorded (the adapter's files carry no adapterkit.recipe)." in plain
