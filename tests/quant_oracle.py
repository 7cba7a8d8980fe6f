"""Reference GPTQ / AWQ packing and dequantization, computed by the owning libraries' own code.

Run as a script in a separate process (``tests/test_quant_gptq.py`` does it once per session):

    python tests/quant_oracle.py CASES.pt RESULTS.pt

with the oracle directory (``scripts/setup.sh`` installs it: ``gptqmodel==7.7.0``,
``autoawq==0.2.9`` and the four small packages GPTQModel's import chain needs: ``pypcre``,
``logbar``, ``threadpoolctl``, ``device-smi``; ``pip install --no-deps --target
.venv/oracles/quant``) first on ``sys.path``.  The oracles live outside
site-packages on purpose: PEFT imports ``gptqmodel`` whenever it finds it installed (and refuses
to build any LoRA layer without ``optimum``), and GPTQModel's own dependencies pin a newer torch.
So this process imports only the modules that hold the packing code:

- GPTQModel: ``gptqmodel.nn_modules.qlinear.torch.TorchLinear`` (``dequantize_weight``: the eval
  path ``_dequantize_weight_cached_248`` and the generic ``PackableQuantLinear`` path, both run
  and compared; ``pack_block``: the pure-python packer, ``GPTQMODEL_DISABLE_PACK_EXT=1``) and
  ``gptqmodel.utils.model.convert_gptq_v1_to_v2_format_module`` /
  ``convert_gptq_v2_to_v1_format_module`` (how a ``checkpoint_format: gptq`` file is read and
  written).  The package ``__init__`` files of ``gptqmodel`` and ``gptqmodel.models`` are not
  run (they import every model definition and its dependencies); every module below them is the
  library's file, imported as usual.
- AutoAWQ: ``awq.utils.packing_utils.dequantize_gemm`` and
  ``awq.modules.linear.gemm.WQLinear_GEMM.from_linear`` (``awq/__init__`` is not run: it imports
  the calibration code and ``datasets``).

Each case is a dict with ``op`` (``gptq_dequant``, ``gptq_pack``, ``awq_dequant``, ``awq_pack``)
and its tensors; the result for case i is stored under ``str(i)``.  Nothing here is adapterkit's.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from types import SimpleNamespace

os.environ.setdefault("GPTQMODEL_DISABLE_PACK_EXT", "1")  # the python packer, not a JIT-built extension
os.environ.setdefault("GPTQ_TORCH_TRITON_DEQUANT", "0")


def _skip_init(name: str, **attrs) -> None:
    """Register package ``name`` without running its ``__init__`` (its submodules import as usual)."""
    parent, _, leaf = name.rpartition(".")
    if parent:
        where = os.path.join(sys.modules[parent].__path__[0], leaf)
    else:
        where = os.path.dirname(importlib.util.find_spec(name).origin)
    module = types.ModuleType(name)
    module.__path__ = [where]
    module.__dict__.update(attrs)
    sys.modules[name] = module


def load():
    import torch

    _skip_init("gptqmodel", DEBUG_ON=False)  # threadx.py reads gptqmodel.DEBUG_ON
    _skip_init("gptqmodel.models")
    qtorch = importlib.import_module("gptqmodel.nn_modules.qlinear.torch")
    gmodel = importlib.import_module("gptqmodel.utils.model")
    _skip_init("awq")
    packing = importlib.import_module("awq.utils.packing_utils")
    gemm = importlib.import_module("awq.modules.linear.gemm")
    return torch, qtorch, gmodel, packing, gemm


def gptq_module(qtorch, case):
    torch = sys.modules["torch"]
    return qtorch.TorchLinear(bits=case["bits"], group_size=case["group_size"], sym=case["sym"],
                              desc_act=case["desc_act"], in_features=case["in"], out_features=case["out"],
                              bias=False, pack_dtype=torch.int32, register_buffers=True)


def run(case, torch, qtorch, gmodel, packing, gemm):
    op = case["op"]
    if op == "gptq_dequant":
        m = gptq_module(qtorch, case)
        m.qweight = case["qweight"].clone()
        m.qzeros = case["qzeros"].clone()
        m.scales = case["scales"].clone()
        m.g_idx = case["g_idx"].clone()
        if case["v1"]:
            gmodel.convert_gptq_v1_to_v2_format_module(m, bits=case["bits"], pack_dtype=torch.int32)
        m.eval()
        fast = m.dequantize_weight()  # eval path (2/4/8 bits) or the generic one (3 bits)
        m.train()
        generic = m.dequantize_weight()  # training mode: PackableQuantLinear's generic path
        assert fast.dtype == torch.float16 and torch.equal(fast.view(torch.int16), generic.view(torch.int16)), \
            "GPTQModel's two dequantization paths disagree"
        return {"weight": fast, "qzeros_v2": m.qzeros.clone()}
    if op == "gptq_pack":
        m = gptq_module(qtorch, case)
        linear = torch.nn.Linear(case["in"], case["out"], bias=False)
        linear.weight.data = case["W"].clone()
        # GPTQModel hands pack() scales and zeros as (out, groups); it stores scales.T in fp16
        m.pack_block(linear, case["scales"].clone(), case["zeros"].clone(), case["g_idx"].clone())
        out = {"qweight": m.qweight.clone(), "qzeros_v2": m.qzeros.clone(), "scales": m.scales.clone(),
               "g_idx": m.g_idx.clone()}
        gmodel.convert_gptq_v2_to_v1_format_module(m, SimpleNamespace(bits=case["bits"], pack_dtype=torch.int32))
        out["qzeros_v1"] = m.qzeros.clone()
        # and how GPTQModel reads both files back
        for v1 in (False, True):
            read = dict(case, op="gptq_dequant", v1=v1, qweight=out["qweight"], scales=out["scales"],
                        g_idx=out["g_idx"], qzeros=out["qzeros_v1" if v1 else "qzeros_v2"])
            out["weight_v1" if v1 else "weight_v2"] = run(read, torch, qtorch, gmodel, packing, gemm)["weight"]
        return out
    if op == "awq_dequant":
        w = packing.dequantize_gemm(case["qweight"], case["qzeros"], case["scales"], 4, case["group_size"])
        assert w.dtype == torch.float16
        return {"weight": w}
    if op == "awq_pack":
        linear = torch.nn.Linear(case["in"], case["out"], bias=False, dtype=case["W"].dtype)
        linear.weight.data = case["W"].clone()
        q = gemm.WQLinear_GEMM.from_linear(linear, 4, case["group_size"], scales=case["scales"].clone(),
                                           zeros=case["zeros"].clone())
        weight = packing.dequantize_gemm(q.qweight, q.qzeros, q.scales, 4, q.group_size)
        return {"qweight": q.qweight.clone(), "qzeros": q.qzeros.clone(), "scales": q.scales.clone(), "weight": weight}
    raise ValueError(op)


def main(src: str, dst: str) -> None:
    loaded = load()
    torch = loaded[0]
    cases = torch.load(src)
    torch.save({str(i): run(case, *loaded) for i, case in enumerate(cases)}, dst)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
