"""The list of deliberate differences with PEFT (``adapterkit.differences``) is complete and backed.

Every entry names a test that runs PEFT and adapterkit side by side; that test must exist.  The
two differences without a home elsewhere have their tests here.
"""

from __future__ import annotations

import ast
import inspect
import warnings
from pathlib import Path

import pytest
import torch

from adapterkit.differences import DIFFERENCES, PEFT_VERSION

TESTS = Path(__file__).parent


def _functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


def test_the_oracle_is_the_installed_peft():
    peft = pytest.importorskip("peft")
    assert peft.__version__ == PEFT_VERSION


@pytest.mark.parametrize("difference", DIFFERENCES, ids=lambda d: d.name)
def test_every_difference_has_its_test(difference):
    file, _, function = difference.test.partition("::")
    path = TESTS.parent / file
    assert path.is_file(), f"{difference.name}: {file} does not exist"
    assert function in _functions(path), f"{difference.name}: {file} has no test {function}"
    assert difference.peft and difference.ours and difference.operation


def test_names_are_unique():
    assert len({d.name for d in DIFFERENCES}) == len(DIFFERENCES)


def test_svd_routine_options_are_not_offered():
    """PEFT's add_weighted_adapter takes svd_full_matrices and svd_driver (they pick torch's dense
    SVD routine); adapterkit's combine computes the SVD from the factors and does not take them."""
    pytest.importorskip("peft")
    from peft.tuners.lora import LoraModel

    import adapterkit

    theirs = inspect.signature(LoraModel.add_weighted_adapter).parameters
    ours = inspect.signature(adapterkit.combine).parameters
    for option in ("svd_full_matrices", "svd_driver"):
        assert option in theirs and option not in ours


def test_target_parameters_peft_refuses_ours_is_the_weighted_sum(tmp_path):
    """Two LoRA adapters on a parameter (``target_parameters``): PEFT's add_weighted_adapter refuses;
    adapterkit's cat merges to base + Σ wᵢ·(PEFT's merge of adapter i − base)."""
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model
    from peft_matrix_cases import build_base
    from safetensors.torch import load_file, save_file

    import adapterkit
    from adapterkit.ops import merge_checkpoint

    weights = [0.7, -0.4]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(build_base("MlpUsingParameters"), LoraConfig(target_parameters=["lin0.weight"], r=4, lora_alpha=8), adapter_name="a")
        model.add_adapter("b", LoraConfig(target_parameters=["lin0.weight"], r=4, lora_alpha=8))
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for name, p in sorted(model.named_parameters()):
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        model.save_pretrained(tmp_path / "peft")
        with pytest.raises(ValueError, match=r"nn\.Parameter"):
            model.add_weighted_adapter(["a", "b"], weights, "mix", combination_type="cat")
        base = {k: v.detach().clone() for k, v in build_base("MlpUsingParameters").state_dict().items()}
        expected = dict(base)
        for name, w in zip("ab", weights):
            single = get_peft_model(build_base("MlpUsingParameters"), LoraConfig(target_parameters=["lin0.weight"], r=4, lora_alpha=8))
            single.load_adapter(str(tmp_path / "peft" / name), adapter_name=name)
            single.set_adapter(name)
            merged = single.merge_and_unload().state_dict()
            expected = {k: expected[k] + w * (merged[k] - base[k]) for k in base}
    ours = adapterkit.combine([adapterkit.load(tmp_path / "peft" / n) for n in "ab"], weights, "cat")
    adapterkit.save(ours, tmp_path / "ours")
    (tmp_path / "base").mkdir()
    save_file(base, str(tmp_path / "base" / "model.safetensors"))
    merge_checkpoint(tmp_path / "base", [tmp_path / "ours"], tmp_path / "merged")
    got = load_file(str(tmp_path / "merged" / "model.safetensors"))
    assert not torch.allclose(got["lin0.weight"], base["lin0.weight"])
    for key in base:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
