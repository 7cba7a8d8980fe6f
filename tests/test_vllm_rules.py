"""`check --for vllm` and `convert --for vllm` against what vLLM's loader computes.

Oracle: vLLM's loader re-typed here from its source (``vllm/lora/``): ``peft_helper.py``
``PEFTHelper.from_dict`` keeps only its own fields (``r``, ``lora_alpha``, ``use_rslora``, ...;
``rank_pattern`` and ``alpha_pattern`` are dropped) and ``PEFTHelper.__post_init__`` computes
one ``vllm_lora_scaling_factor`` = ``lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``);
``lora_model.py`` ``LoRAModel.from_lora_tensors`` gives every module that factor with its own
``lora_A``/``lora_B`` tensors; ``layers/base_linear.py`` ``BaseLinearLayerWithLoRA.set_lora``
copies them into zero buffers of ``max_lora_rank`` rows, so a module's rank is its tensors'.
That is applied to the files on disk and compared with PEFT 0.22.0's ΔW of the same files
(``PeftModel.from_pretrained`` then ``get_delta_weight``).  The rule under test: ``check``
reports no error exactly when vLLM computes PEFT's ΔW for every module.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

pytest.importorskip("peft")
pytest.importorskip("transformers")

from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from peft.tuners.lora.layer import LoraLayer
from peft_models import LLAMA_ALL, llama, randomize_adapter

import adapterkit
from adapterkit.cli import main
from adapterkit.ops.export import check, export

P = "base_model.model."
VLLM_FIELDS = ("r", "lora_alpha", "target_modules", "bias", "modules_to_save", "use_rslora", "use_dora")  # PEFTHelper's


def vllm_deltas(path: Path) -> dict[str, torch.Tensor]:
    """ΔW per module as vLLM computes it from the files at ``path`` (see the module doc)."""
    raw = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    helper = {k: raw[k] for k in VLLM_FIELDS if k in raw}  # from_dict: the patterns are gone here
    scaling = helper["lora_alpha"] / (math.sqrt(helper["r"]) if helper.get("use_rslora") else helper["r"])
    tensors = load_file(path / "adapter_model.safetensors")
    out = {}
    for key in tensors:  # utils.py parse_fine_tuned_lora_name: anything else is "unsupported LoRA weight"
        if not key.endswith((".lora_A.weight", ".lora_B.weight", ".lora_embedding_A", ".lora_embedding_B")):
            raise ValueError(f"{key} is unsupported LoRA weight")
    for key, A in tensors.items():
        if key.endswith(".lora_A.weight"):
            B = tensors[key.replace(".lora_A.", ".lora_B.")]
            out[key[len(P):-len(".lora_A.weight")]] = (B.double() @ A.double()) * scaling
        elif key.endswith(".lora_embedding_A"):
            B = tensors[key.replace("lora_embedding_A", "lora_embedding_B")]
            out[key[len(P):-len(".lora_embedding_A")]] = (B.double() @ A.double()).T * scaling
    return out


def peft_deltas(path: Path) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(llama(), str(path))
    with torch.no_grad():
        return {n: m.get_delta_weight("default").double() for n, m in model.base_model.model.named_modules()
                if isinstance(m, LoraLayer) and "default" in m.lora_A}


def agree(path: Path) -> bool:
    theirs, ours = peft_deltas(path), vllm_deltas(path)
    assert theirs.keys() == ours.keys()
    return all(torch.allclose(ours[n], theirs[n], rtol=1e-5, atol=1e-6) for n in theirs)


def errors(adapter: adapterkit.Adapter, **kw) -> list:
    return [p for p in check(adapter, "vllm", **kw) if p.severity == "error"]


def peft_adapter(path: Path, **cfg) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(llama(), PeftLoraConfig(target_modules=LLAMA_ALL, task_type="CAUSAL_LM", **cfg))
        randomize_adapter(model)
        model.save_pretrained(path)
    return path


# (config, does vLLM compute PEFT's ΔW?)
CONFIGS = {
    "ranks differ, alpha_pattern keeps alpha/r": (dict(r=4, lora_alpha=8, rank_pattern={"q_proj": 2, "down_proj": 8},
                                                      alpha_pattern={"q_proj": 4, "down_proj": 16}), True),
    "ranks differ, no alpha_pattern": (dict(r=4, lora_alpha=8, rank_pattern={"q_proj": 2, "down_proj": 8}), False),
    "alpha_pattern alone": (dict(r=4, lora_alpha=8, alpha_pattern={"v_proj": 3}), False),
    "rsLoRA, ranks differ, alpha/sqrt(r) kept": (dict(r=4, lora_alpha=8, use_rslora=True, rank_pattern={"up_proj": 16},
                                                     alpha_pattern={"up_proj": 16}), True),
    "rsLoRA, ranks differ, no alpha_pattern": (dict(r=4, lora_alpha=8, use_rslora=True, rank_pattern={"up_proj": 16}), False),
    "one rank": (dict(r=4, lora_alpha=8), True),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_check_complies_exactly_when_vllm_computes_peft_delta(case, tmp_path):
    cfg, served_right = CONFIGS[case]
    path = peft_adapter(tmp_path / "a", **cfg)
    assert agree(path) is served_right  # the oracle itself, so the case means what its name says
    found = errors(adapterkit.load(path))
    assert (not found) is served_right, [str(p) for p in found]
    assert all("[vllm/scaling]" in p.message for p in found)  # never a rank complaint: vLLM reads ranks from tensors


@pytest.mark.parametrize("case", sorted(c for c, (_, ok) in CONFIGS.items() if not ok))
def test_convert_for_vllm_keeps_ranks_and_peft_delta(case, tmp_path):
    cfg, _ = CONFIGS[case]
    src = peft_adapter(tmp_path / "a", **cfg)
    a = adapterkit.load(src)
    out = export(a, "vllm")
    assert check(out, "vllm") == []  # no warning either: r is the largest rank
    dst = adapterkit.save(out, tmp_path / "vllm")
    ranks_in = {n: v.rank for n, v in a.modules.items()}
    assert {n: v.rank for n, v in out.modules.items()} == ranks_in  # no zero padding: vLLM needs none
    assert out.config.r == max(ranks_in.values())
    theirs, served = peft_deltas(src), vllm_deltas(dst)
    for name in theirs:
        torch.testing.assert_close(served[name], theirs[name], rtol=1e-5, atol=1e-7)
    assert agree(dst)  # and PEFT still reads the converted file as the original


def _ops_outputs(tmp_path: Path) -> dict[str, adapterkit.Adapter]:
    a = adapterkit.load(peft_adapter(tmp_path / "a", r=4, lora_alpha=8, rank_pattern={"q_proj": 8}, alpha_pattern={"q_proj": 5}))
    b = adapterkit.load(peft_adapter(tmp_path / "b", r=3, lora_alpha=3, use_rslora=True))
    return {
        "combine cat": adapterkit.combine([a, b], [0.7, 0.3], "cat"),
        "resize --energy": adapterkit.resize(b, energy=0.8)[0],
        "rebalance": adapterkit.rebalance(a, rank=2)[0],
    }


def test_operation_outputs_are_served_as_peft_computes_them(tmp_path):
    """What the README says: outputs at scaling 1 with rank patterns are served right by vLLM."""
    for op, out in _ops_outputs(tmp_path).items():
        ranks = {v.rank for v in out.modules.values()}
        assert len(ranks) > 1, (op, ranks)  # a rank pattern, or the case shows nothing
        path = adapterkit.save(out, tmp_path / op.replace(" ", "_"))
        assert agree(path), op
        assert errors(adapterkit.load(path)) == [], op


def test_max_lora_rank_warning_and_cli(tmp_path):
    out = _ops_outputs(tmp_path)["combine cat"]
    top = max(v.rank for v in out.modules.values())
    assert out.config.r < top
    problems = check(out, "vllm")
    assert [(p.severity, p.actual) for p in problems] == [("warning", top)]
    assert f"--max-lora-rank >= {top}" in problems[0].message and problems[0].key in out.modules
    assert check(out, "vllm", max_rank=top) == []
    assert {p.key for p in check(out, "vllm", max_rank=top - 1)} == {n for n, v in out.modules.items() if v.rank == top}
    path = adapterkit.save(out, tmp_path / "cat")
    res = CliRunner().invoke(main, ["check", str(path), "--for", "vllm"])
    assert res.exit_code == 0, res.output
    assert "warning:" in res.output and res.output.rstrip().endswith("complies with vllm (0 violations, 1 warning)")
    res = CliRunner().invoke(main, ["check", str(path), "--for", "vllm", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["complies"] is True
    res = CliRunner().invoke(main, ["check", str(path), "--for", "vllm", "--max-rank", str(top - 1)])
    assert res.exit_code == 1 and "[vllm/max-rank]" in res.output


def test_lora_bias_is_not_served(tmp_path):
    """vLLM's loader refuses a ``lora_B.bias`` tensor: the check says so, the export refuses by key."""
    from adapterkit.errors import UnsupportedError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(llama(bias=True), PeftLoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], lora_bias=True))
        randomize_adapter(model)
        model.save_pretrained(tmp_path / "a")
    with pytest.raises(ValueError, match="unsupported LoRA weight"):
        vllm_deltas(tmp_path / "a")
    a = adapterkit.load(tmp_path / "a")
    assert [p.message.split("]")[0] for p in errors(a)] == ["[vllm/lora-bias"]
    with pytest.raises(UnsupportedError) as err:
        export(a, "vllm")
    assert err.value.code == "not-supported" and err.value.key.endswith("q_proj.lora_B.bias")
