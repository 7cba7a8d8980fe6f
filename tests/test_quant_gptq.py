"""GPTQ and AWQ (adapterkit.quant.gptq / .awq) against the libraries that write them.

Expected values come from GPTQModel 7.7.0 and AutoAWQ 0.2.9 themselves (``tests/quant_oracle.py``
runs their packers and dequantizers in a child process, once per test session); the
nearest-grid-point checks are computed from first principles in numpy (brute force over every
code), never with adapterkit's helpers.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adapterkit.errors import AdapterkitError, FormatError, UnsupportedError
from adapterkit.quant.awq import AWQ
from adapterkit.quant.gptq import GPTQ
from adapterkit.quant.scheme import quant_format

HERE = Path(__file__).parent
ORACLE_DIR = Path(os.environ.get("ADAPTERKIT_QUANT_ORACLES", Path(sys.prefix) / "oracles" / "quant"))
CPU = torch.device("cpu")
DT = {torch.int32: "I32", torch.float16: "F16", torch.float32: "F32", torch.int64: "I64"}


def gptq_config(bits=4, group_size=32, desc_act=False, sym=True, fmt="gptq", **extra):
    return {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": desc_act, "sym": sym,
            "checkpoint_format": fmt, **extra}


def awq_config(group_size=32, **extra):
    return {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True, "version": "gemm",
            **extra}


def keys_of(tensors: dict[str, torch.Tensor]):
    return {k: (DT[v.dtype], tuple(v.shape)) for k, v in tensors.items()}


def bits_of(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32 if x.dtype == torch.float32 else torch.int16)


# -- the library cases -----------------------------------------------------------------------------

def act_order_g_idx(gen: torch.Generator, n_in: int, size: int) -> torch.Tensor:
    """GPTQ's act-order map: column c is quantized at position invperm[c], so its group is that
    position // group_size (GPTQModel: ``(arange // group_size)[invperm]``)."""
    perm = torch.randperm(n_in, generator=gen)
    invperm = torch.argsort(perm)
    return ((torch.arange(n_in) // size)[invperm]).to(torch.int32)


def near_grid(gen, q, z, s16, half_step=0.45):
    """A weight within ``half_step`` of a step from the grid points (q - z) * s (fp16 scales)."""
    s = s16.float()
    noise = (torch.rand(q.shape, generator=gen) * 2 - 1) * half_step * s
    return (q - z).float() * s + noise


GPTQ_PACK = [  # (bits, out, in, group_size, desc_act, sym)
    (bits, out, n_in, gs, desc, sym)
    for bits in (2, 3, 4, 8)
    for (out, n_in, gs, desc, sym) in ((64, 128, 32, False, True), (64, 128, 64, True, False),
                                       (32, 96, -1, False, False), (96, 64, 32, True, True))
]
GPTQ_WORDS = [  # random packed words, shapes that need partial words: (bits, out, in, group_size, desc_act, sym, v1)
    (2, 48, 96, 32, True, False, False), (2, 40, 72, 16, False, False, True), (4, 48, 96, 32, False, True, True),
    (4, 40, 72, -1, True, False, False), (4, 48, 96, 16, True, False, True), (8, 48, 96, 32, True, False, True),
    (8, 36, 52, 16, False, False, False), (3, 64, 96, 32, True, False, False), (3, 32, 64, 64, False, True, True),
]
AWQ_PACK = [(64, 128, 32), (96, 64, 64), (32, 96, -1), (128, 64, 16)]  # (out, in, group_size)


def gptq_pack_case(i, bits, out, n_in, gs, desc, sym):
    gen = torch.Generator().manual_seed(1000 + i)
    size = n_in if gs == -1 else gs
    groups = -(-n_in // size)
    maxq = (1 << bits) - 1
    g_idx = act_order_g_idx(gen, n_in, size) if desc else (torch.arange(n_in) // size).to(torch.int32)
    s16 = (torch.rand(out, groups, generator=gen) * 0.05 + 0.001).half()
    # zero 0 would be stored as the all-ones v1 code that the readers disagree on (refused, tested apart)
    zeros = torch.full((out, groups), 1 << (bits - 1)) if sym else torch.randint(1, maxq + 1, (out, groups),
                                                                                 generator=gen)
    q = torch.randint(0, maxq + 1, (out, n_in), generator=gen)
    W = near_grid(gen, q, zeros[:, g_idx.long()], s16[:, g_idx.long()])
    # a few far outside the grid: the packer clamps them
    W[0, :4] = torch.tensor([1e3, -1e3, 7.0, -7.0])
    return dict(op="gptq_pack", bits=bits, group_size=gs, sym=sym, desc_act=desc, **{"in": n_in, "out": out},
                W=W, scales=s16.float(), zeros=zeros, g_idx=g_idx)


def field_mask(bits: int) -> int:
    """A word mask that clears the lowest bit of every code (2/4/8 bits): no code is all ones."""
    return int("".join(("1" * (bits - 1) + "0") for _ in range(32 // bits)), 2) - (1 << 32)


def gptq_words_case(i, bits, out, n_in, gs, desc, sym, v1):
    gen = torch.Generator().manual_seed(2000 + i)
    size = n_in if gs == -1 else gs
    groups = -(-n_in // size)
    words = lambda *shape: torch.randint(-(1 << 31), 1 << 31, shape, generator=gen, dtype=torch.int64).to(torch.int32)  # noqa: E731
    qweight = words(-(-n_in * bits // 32), out)
    zcols = -(-out * bits // 32)
    if sym:
        code = (1 << (bits - 1)) - (1 if v1 else 0)
        assert bits != 3 or out % 32 == 0
        if bits == 3:  # 32 codes in 3 words, a bit stream
            stream = sum(code << (3 * k) for k in range(32))
            qzeros = torch.tensor([[((stream >> (32 * w)) & 0xFFFFFFFF) for w in range(3)] * (zcols // 3)] * groups,
                                  dtype=torch.int64)
            qzeros = torch.where(qzeros >= 1 << 31, qzeros - (1 << 32), qzeros).to(torch.int32)
        else:
            word = sum(code << (bits * k) for k in range(32 // bits))
            word = word - (1 << 32) if word >= 1 << 31 else word
            qzeros = torch.full((groups, zcols), word, dtype=torch.int32)
    else:
        qzeros = words(groups, zcols)
        if v1:
            assert bits != 3
            qzeros &= field_mask(bits)
    scales = (torch.rand(groups, out, generator=gen) * 0.05 + 0.001).half()
    scales[0, :3] = torch.tensor([-0.02, 3e-7, 0.0]).half()  # negative, subnormal, zero scales read as stored
    g_idx = act_order_g_idx(gen, n_in, size) if desc else (torch.arange(n_in) // size).to(torch.int32)
    return dict(op="gptq_dequant", bits=bits, group_size=gs, sym=sym, desc_act=desc, v1=v1,
                **{"in": n_in, "out": out}, qweight=qweight, qzeros=qzeros, scales=scales, g_idx=g_idx)


def awq_pack_case(i, out, n_in, gs):
    gen = torch.Generator().manual_seed(3000 + i)
    size = n_in if gs == -1 else gs
    groups = n_in // size
    s16 = (torch.rand(groups, out, generator=gen) * 0.05 + 0.001).half()
    zeros = torch.randint(0, 16, (groups, out), generator=gen)
    q = torch.randint(0, 16, (n_in, out), generator=gen)
    rows = torch.arange(n_in) // size
    W = near_grid(gen, q, zeros[rows], s16[rows]).t().contiguous()  # (out, in), as nn.Linear
    # AutoAWQ's from_linear takes (groups, out) scales and zeros and indexes them by idx // group_size
    return dict(op="awq_pack", group_size=size, **{"in": n_in, "out": out}, W=W, scales=s16.float(), zeros=zeros,
                config_group_size=gs)


def awq_words_case(i, out, n_in, gs):
    gen = torch.Generator().manual_seed(4000 + i)
    size = n_in if gs == -1 else gs
    groups = n_in // size
    words = lambda *shape: torch.randint(-(1 << 31), 1 << 31, shape, generator=gen, dtype=torch.int64).to(torch.int32)  # noqa: E731
    scales = (torch.rand(groups, out, generator=gen) * 0.05 + 0.001).half()
    scales[0, :2] = torch.tensor([-0.03, 2e-7]).half()
    return dict(op="awq_dequant", group_size=size, **{"in": n_in, "out": out}, qweight=words(n_in, out // 8),
                qzeros=words(groups, out // 8), scales=scales, config_group_size=gs)


CASES = ([gptq_pack_case(i, *c) for i, c in enumerate(GPTQ_PACK)]
         + [gptq_words_case(i, *c) for i, c in enumerate(GPTQ_WORDS)]
         + [awq_pack_case(i, *c) for i, c in enumerate(AWQ_PACK)]
         + [awq_words_case(i, *c) for i, c in enumerate(AWQ_PACK)])


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """Case index -> what GPTQModel / AutoAWQ computed for it (one child process)."""
    if not (ORACLE_DIR / "gptqmodel").is_dir() or not (ORACLE_DIR / "awq").is_dir():
        pytest.fail(f"the GPTQ/AWQ oracles are not installed in {ORACLE_DIR}: run scripts/setup.sh "
                    "(or set ADAPTERKIT_QUANT_ORACLES)")
    where = tmp_path_factory.mktemp("oracle")
    torch.save(CASES, where / "cases.pt")
    env = dict(os.environ, PYTHONPATH=str(ORACLE_DIR))
    done = subprocess.run([sys.executable, str(HERE / "quant_oracle.py"), str(where / "cases.pt"),
                           str(where / "results.pt")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    results = torch.load(where / "results.pt")
    return [results[str(i)] for i in range(len(CASES))]


def indices(op):
    return [i for i, c in enumerate(CASES) if c["op"] == op]


def gptq_checkpoint(case, qweight, qzeros, scales, g_idx, module="model.layers.0.mlp.up_proj", bias=True):
    tensors = {f"{module}.qweight": qweight, f"{module}.qzeros": qzeros, f"{module}.scales": scales,
               f"{module}.g_idx": g_idx}
    if bias:
        tensors[f"{module}.bias"] = torch.zeros(case["out"], dtype=torch.float16)
    return tensors


def members(packed, tensors):
    return {role: tensors[key] for role, key in packed.members.items()}


def only(found):
    assert len(found) == 1
    return next(iter(found.values()))


# -- GPTQ against GPTQModel ------------------------------------------------------------------------

@pytest.mark.parametrize("i", indices("gptq_pack"))
@pytest.mark.parametrize("v1", [True, False], ids=["v1", "v2"])
def test_gptq_library_packed_dequantize_and_repack(oracle, i, v1):
    """GPTQModel packs; our dequantize equals its TorchLinear.dequantize_weight bit for bit, and
    re-quantizing gives its bytes back (qweight rewritten, the rest kept)."""
    case, ref = CASES[i], oracle[i]
    fmt = GPTQ(gptq_config(case["bits"], case["group_size"], case["desc_act"], case["sym"], "gptq" if v1 else "gptq_v2"))
    qzeros = ref["qzeros_v1" if v1 else "qzeros_v2"]
    tensors = gptq_checkpoint(case, ref["qweight"], qzeros, ref["scales"], ref["g_idx"])
    packed = only(fmt.find(keys_of(tensors)))
    assert packed.shape == (case["out"], case["in"]) and packed.weight == "model.layers.0.mlp.up_proj.weight"
    ours = fmt.dequantize(packed, members(packed, tensors), CPU)
    expected = ref["weight_v1" if v1 else "weight_v2"].float().t()
    assert ours.dtype == torch.float32 and ours.shape == expected.shape
    assert torch.equal(bits_of(ours), bits_of(expected))
    again = fmt.quantize(packed, ours, members(packed, tensors), CPU)
    assert set(again) == {"qweight", "qzeros", "scales", "g_idx"}
    for role, tensor in again.items():
        original = members(packed, tensors)[role]
        assert tensor.dtype == original.dtype and torch.equal(tensor, original), role


@pytest.mark.parametrize("i", indices("gptq_pack"))
def test_gptq_quantize_matches_the_library_packer(oracle, i):
    """The weight GPTQModel packed (near grid points, a few far outside) rounds to the same codes."""
    case, ref = CASES[i], oracle[i]
    fmt = GPTQ(gptq_config(case["bits"], case["group_size"], case["desc_act"], case["sym"], "gptq_v2"))
    tensors = gptq_checkpoint(case, ref["qweight"], ref["qzeros_v2"], ref["scales"], ref["g_idx"], bias=False)
    packed = only(fmt.find(keys_of(tensors)))
    new = fmt.quantize(packed, case["W"], members(packed, tensors), CPU)
    assert torch.equal(new["qweight"], ref["qweight"])


@pytest.mark.parametrize("i", indices("gptq_dequant"))
def test_gptq_random_words_dequantize(oracle, i):
    """Arbitrary packed words (partial last words, subnormal / negative / zero scales, act-order)."""
    case, ref = CASES[i], oracle[i]
    fmt = GPTQ(gptq_config(case["bits"], case["group_size"], case["desc_act"], case["sym"],
                           "gptq" if case["v1"] else "gptq_v2"))
    tensors = gptq_checkpoint(case, case["qweight"], case["qzeros"], case["scales"], case["g_idx"])
    packed = only(fmt.find(keys_of(tensors)))
    ours = fmt.dequantize(packed, members(packed, tensors), CPU)
    assert torch.equal(bits_of(ours), bits_of(ref["weight"].float().t()))
    again = fmt.quantize(packed, ours, members(packed, tensors), CPU)
    assert torch.equal(fmt.dequantize(packed, again, CPU).view(torch.int32), ours.view(torch.int32))
    if not bool((case["scales"] == 0).any()):
        assert torch.equal(again["qweight"], case["qweight"])


# -- AWQ against AutoAWQ ---------------------------------------------------------------------------

def awq_checkpoint(qweight, qzeros, scales, module="model.layers.1.self_attn.o_proj"):
    return {f"{module}.qweight": qweight, f"{module}.qzeros": qzeros, f"{module}.scales": scales}


@pytest.mark.parametrize("i", indices("awq_pack"))
def test_awq_library_packed(oracle, i):
    """AutoAWQ's from_linear packs; dequantize equals its dequantize_gemm bit for bit, quantize of
    the same weight gives its qweight, and of the dequantized weight its bytes back."""
    case, ref = CASES[i], oracle[i]
    fmt = AWQ(awq_config(case["config_group_size"]))
    tensors = awq_checkpoint(ref["qweight"], ref["qzeros"], ref["scales"])
    packed = only(fmt.find(keys_of(tensors)))
    assert packed.shape == (case["out"], case["in"])
    ours = fmt.dequantize(packed, members(packed, tensors), CPU)
    assert torch.equal(bits_of(ours), bits_of(ref["weight"].float().t()))
    for weight in (case["W"], ours):
        new = fmt.quantize(packed, weight, members(packed, tensors), CPU)
        assert set(new) == {"qweight", "qzeros", "scales"}
        for role in new:
            assert torch.equal(new[role], tensors[packed.members[role]]), role


@pytest.mark.parametrize("i", indices("awq_dequant"))
def test_awq_random_words_dequantize(oracle, i):
    case, ref = CASES[i], oracle[i]
    fmt = AWQ(awq_config(case["config_group_size"]))
    tensors = awq_checkpoint(case["qweight"], case["qzeros"], case["scales"])
    packed = only(fmt.find(keys_of(tensors)))
    ours = fmt.dequantize(packed, members(packed, tensors), CPU)
    assert torch.equal(bits_of(ours), bits_of(ref["weight"].float().t()))
    again = fmt.quantize(packed, ours, members(packed, tensors), CPU)
    assert torch.equal(again["qweight"], case["qweight"])


# -- nearest grid point, from first principles -----------------------------------------------------

def first_principles_nearest(w, s, z, bits):
    """Brute force over every code: the q minimising |w - (q - z) s| in fp64, ties to the even q;
    returns the fp16 grid value float16((q - z) * s) as fp32 (numpy, elementwise)."""
    w, s, z = (np.asarray(a, dtype=np.float64) for a in (w, s, z))
    codes = np.arange(1 << bits, dtype=np.float64)
    dist = np.abs(w[..., None] - (codes - z[..., None]) * s[..., None])
    best = dist.min(axis=-1, keepdims=True)
    ties = np.isclose(dist, best, rtol=0, atol=0)
    q = np.where(ties.sum(-1) > 1, np.where(ties & (codes % 2 == 0), codes, np.inf).min(-1), dist.argmin(-1))
    return (np.float32(q - z) * np.float32(s)).astype(np.float16).astype(np.float32)


def stream_cols(values, bits, words):
    """First principles: codes ``values`` (rows × n) as a little-endian bit stream along each row,
    ``bits`` bits a code, in ``words`` int32 words a row (what GPTQ's qzeros are)."""
    rows, n = values.shape
    packed = np.zeros((rows, words), dtype=np.int64)
    for r, o in itertools.product(range(rows), range(n)):
        for b in range(bits):
            if (int(values[r, o]) >> b) & 1:
                pos = o * bits + b
                packed[r, pos // 32] |= 1 << (pos % 32)
    return torch.from_numpy(np.where(packed >= 1 << 31, packed - (1 << 32), packed)).to(torch.int32)


def grid_case(bits, out, n_in, gs, desc, sym, seed):
    gen = torch.Generator().manual_seed(seed)
    size = n_in if gs == -1 else gs
    groups = -(-n_in // size)
    maxq = (1 << bits) - 1
    g_idx = act_order_g_idx(gen, n_in, size) if desc else (torch.arange(n_in) // size).to(torch.int32)
    scales = (torch.rand(groups, out, generator=gen) * 0.05 + 0.001).half()
    zeros = torch.full((groups, out), 1 << (bits - 1)) if sym else torch.randint(0, maxq + 1, (groups, out),
                                                                                 generator=gen)
    qzeros = stream_cols(zeros, bits, -(-out * bits // 32))  # a v2 file
    qweight = torch.zeros(-(-n_in * bits // 32), out, dtype=torch.int32)
    return dict(bits=bits, out=out, **{"in": n_in}, group_size=gs, desc_act=desc, sym=sym, scales=scales,
                zeros=zeros, g_idx=g_idx, qzeros=qzeros, qweight=qweight)


@pytest.mark.parametrize("bits,gs,desc,sym", [(2, 32, True, False), (3, 32, False, True), (4, -1, True, True),
                                              (4, 16, False, False), (8, 32, True, False)])
def test_gptq_small_delta_rounds_to_nearest_grid_point(bits, gs, desc, sym):
    """W + ΔW (ΔW about a step, so most elements move) lands on the nearest grid point."""
    case = grid_case(bits, 32, 64, gs, desc, sym, seed=7 + bits)
    fmt = GPTQ(gptq_config(bits, gs, desc, sym, "gptq_v2"))
    tensors = gptq_checkpoint(case, case["qweight"], case["qzeros"], case["scales"], case["g_idx"], bias=False)
    packed = only(fmt.find(keys_of(tensors)))
    base = fmt.dequantize(packed, members(packed, tensors), CPU)
    gen = torch.Generator().manual_seed(bits)
    g = case["g_idx"].long()
    s = case["scales"][g].float().t()  # (out, in)
    z = case["zeros"][g].t()
    target = base + (torch.rand(base.shape, generator=gen) * 3 - 1.5) * s.abs()
    target[0, :2] = torch.tensor([1e4, -1e4])  # clamped to the ends of the grid
    new = fmt.quantize(packed, target, members(packed, tensors), CPU)
    got = fmt.dequantize(packed, {**members(packed, tensors), "qweight": new["qweight"]}, CPU)
    expected = first_principles_nearest(target.numpy(), s.numpy(), z.numpy(), bits)
    assert np.array_equal(got.numpy().view(np.int32), expected.view(np.int32))
    assert not torch.equal(new["qweight"], case["qweight"])


@settings(max_examples=25, deadline=None)
@given(bits=st.sampled_from([2, 3, 4, 8]), seed=st.integers(0, 2**16), spread=st.floats(0.1, 4.0),
       desc=st.booleans())
def test_gptq_nearest_property(bits, seed, spread, desc):
    case = grid_case(bits, 32, 32, 16, desc, False, seed)
    fmt = GPTQ(gptq_config(bits, 16, desc, False, "gptq_v2"))
    tensors = gptq_checkpoint(case, case["qweight"], case["qzeros"], case["scales"], case["g_idx"], bias=False)
    packed = only(fmt.find(keys_of(tensors)))
    g = case["g_idx"].long()
    s = case["scales"][g].float().t()
    z = case["zeros"][g].t()
    gen = torch.Generator().manual_seed(seed)
    target = (torch.rand(32, 32, generator=gen) * (1 << bits) - z) * s * spread
    new = fmt.quantize(packed, target, members(packed, tensors), CPU)
    got = fmt.dequantize(packed, {**members(packed, tensors), "qweight": new["qweight"]}, CPU)
    assert np.array_equal(got.numpy().view(np.int32),
                          first_principles_nearest(target.numpy(), s.numpy(), z.numpy(), bits).view(np.int32))
    again = fmt.quantize(packed, got, members(packed, tensors), CPU)
    assert torch.equal(again["qweight"], new["qweight"])


def test_awq_small_delta_rounds_to_nearest_grid_point(oracle):
    i = indices("awq_pack")[0]
    case, ref = CASES[i], oracle[i]
    fmt = AWQ(awq_config(case["config_group_size"]))
    tensors = awq_checkpoint(ref["qweight"], ref["qzeros"], ref["scales"])
    packed = only(fmt.find(keys_of(tensors)))
    base = fmt.dequantize(packed, members(packed, tensors), CPU)
    rows = torch.arange(case["in"]) // case["group_size"]
    s = ref["scales"][rows].float().t()
    z = case["zeros"][rows].t()
    gen = torch.Generator().manual_seed(5)
    target = base + (torch.rand(base.shape, generator=gen) * 3 - 1.5) * s
    new = fmt.quantize(packed, target, members(packed, tensors), CPU)
    got = fmt.dequantize(packed, {**members(packed, tensors), "qweight": new["qweight"]}, CPU)
    expected = first_principles_nearest(target.numpy(), s.numpy(), z.numpy(), 4)
    assert np.array_equal(got.numpy().view(np.int32), expected.view(np.int32))


# -- refusals --------------------------------------------------------------------------------------

M = "model.layers.2.self_attn.q_proj"


def gptq_keys(bits=4, out=64, n_in=128, groups=4):
    return {f"{M}.qweight": ("I32", (-(-n_in * bits // 32), out)), f"{M}.qzeros": ("I32", (groups, -(-out * bits // 32))),
            f"{M}.scales": ("F16", (groups, out)), f"{M}.g_idx": ("I32", (n_in,)), f"{M}.bias": ("F16", (out,)),
            "model.embed_tokens.weight": ("F16", (10, out)), "model.layers.2.mlp.up_proj.weight": ("F16", (8, 8))}


def refused(error, code, *words):
    assert isinstance(error, AdapterkitError) and error.code == code, (type(error), getattr(error, "code", None))
    text = f"{error} {error.key}"
    for word in words:
        assert word in text, (word, text)


def test_gptq_find_accepts_a_plain_layout():
    found = GPTQ(gptq_config()).find(gptq_keys())
    assert list(found) == [M]  # plain weights are not packed modules
    assert found[M].shape == (64, 128) and found[M].info["groups"] == 4
    assert found[M].members == {m: f"{M}.{m}" for m in ("qweight", "qzeros", "scales", "g_idx")}


@pytest.mark.parametrize("change,field", [
    (lambda k: k.update({f"{M}.qweight": ("I32", (17, 64))}), "bits"),
    (lambda k: k.update({f"{M}.qweight": ("I32", (16, 63))}), "bits"),
    (lambda k: k.update({f"{M}.scales": ("F16", (3, 64))}), "group_size"),
    (lambda k: k.update({f"{M}.qzeros": ("I32", (3, 8))}), "group_size"),
    (lambda k: k.update({f"{M}.qzeros": ("I32", (4, 7))}), "bits"),
    (lambda k: k.pop(f"{M}.g_idx"), "g_idx"),
    (lambda k: k.pop(f"{M}.qzeros"), "qzeros"),
    (lambda k: k.pop(f"{M}.qweight"), "qweight"),
    (lambda k: k.update({f"{M}.weight": ("F16", (64, 128))}), "weight"),
    (lambda k: k.update({f"{M}.absmax": ("F32", (4,))}), "absmax"),
    (lambda k: k.update({f"{M}.scales": ("F32", (4, 64))}), "scales"),
    (lambda k: k.update({f"{M}.scales": ("BF16", (4, 64))}), "scales"),
    (lambda k: k.update({f"{M}.qweight": ("I64", (16, 64))}), "qweight"),
    (lambda k: k.update({f"{M}.g_idx": ("I64", (128,))}), "g_idx"),
    (lambda k: k.update({f"{M}.g_idx": ("I32", (128, 1))}), "g_idx"),
])
def test_gptq_find_refuses_disagreeing_tensors(change, field):
    keys = gptq_keys()
    change(keys)
    with pytest.raises(FormatError) as e:
        GPTQ(gptq_config()).find(keys)
    refused(e.value, "quant-invalid", M, f"field {field}")


def test_gptq_find_refuses_3bit_shapes_it_cannot_pack():
    keys = gptq_keys(bits=3, out=48, n_in=96, groups=3)
    with pytest.raises(FormatError) as e:
        GPTQ(gptq_config(bits=3)).find(keys)
    refused(e.value, "quant-invalid", M, "field bits")


def test_gptq_modules_to_not_convert():
    with pytest.raises(FormatError) as e:
        GPTQ(gptq_config(modules_to_not_convert=["self_attn"])).find(gptq_keys())
    refused(e.value, "quant-invalid", M, "modules_to_not_convert")
    assert list(GPTQ(gptq_config(modules_to_not_convert=["lm_head"])).find(gptq_keys())) == [M]


@pytest.mark.parametrize("config,field", [
    (gptq_config(bits=5), "bits"), (gptq_config(bits=16), "bits"),
    (gptq_config(fmt="marlin"), "checkpoint_format"), (gptq_config(fmt="gptq_p"), "checkpoint_format"),
    (gptq_config(fmt="bitblas"), "checkpoint_format"), (gptq_config(is_marlin_format=True), "is_marlin_format"),
    (gptq_config(pack_dtype="int16"), "pack_dtype"), (gptq_config(dynamic={"-:.*lm_head": {}}), "dynamic"),
    (gptq_config(rotation="hadamard"), "rotation"), (gptq_config(activation={"bits": 8}), "activation"),
    (gptq_config(some_new_field=1), "some_new_field"),
])
def test_gptq_config_refused_by_name(config, field):
    with pytest.raises(UnsupportedError) as e:
        GPTQ(config)
    refused(e.value, "quant-unsupported", f"quantization_config.{field}")


@pytest.mark.parametrize("config,field", [
    (gptq_config(bits="4"), "bits"), (gptq_config(bits=True), "bits"), (gptq_config(group_size=0), "group_size"),
    (gptq_config(desc_act="yes"), "desc_act"), ({**gptq_config(), "format": "gptq_v2"}, "format"),
])
def test_gptq_config_nonsense(config, field):
    with pytest.raises(FormatError) as e:
        GPTQ(config)
    refused(e.value, "quant-invalid", f"quantization_config.{field}")


def test_gptq_config_as_written():
    """Configs as transformers/optimum, AutoGPTQ and GPTQModel write them are read."""
    GPTQ({"bits": 4, "group_size": 128, "damp_percent": 0.1, "desc_act": True, "static_groups": False, "sym": True,
          "true_sequential": True, "model_name_or_path": None, "model_file_base_name": "model",
          "is_marlin_format": False, "quant_method": "gptq"})
    GPTQ({"bits": 8, "dynamic": None, "group_size": -1, "desc_act": False, "lm_head": False, "method": "gptq",
          "quant_method": "gptq", "format": "gptq_v2", "checkpoint_format": "gptq_v2", "pack_dtype": "int32",
          "meta": {"quantizer": ["gptqmodel:7.7.0"], "act_group_aware": True}, "sym": False})
    fmt = quant_format({"quantization_config": {"quant_method": "gptq", "bits": 2, "tokenizer": None, "dataset": None,
                                                "group_size": 64, "backend": "auto", "use_exllama": True,
                                                "modules_in_block_to_quantize": None, "checkpoint_format": "gptq"}})
    assert isinstance(fmt, GPTQ) and fmt.describe() == {"format": "gptq-2bit", "bits": 2, "group_size": 64,
                                                        "desc_act": False, "sym": True, "checkpoint_format": "gptq"}


def small_gptq(bits=4, desc=True, sym=False, v1=False, seed=0):
    case = grid_case(bits, 32, 64, 16, desc, sym, seed)
    fmt = GPTQ(gptq_config(bits, 16, desc, sym, "gptq" if v1 else "gptq_v2"))
    tensors = gptq_checkpoint(case, case["qweight"], case["qzeros"], case["scales"], case["g_idx"], bias=False)
    packed = only(fmt.find(keys_of(tensors)))
    return fmt, packed, members(packed, tensors)


@pytest.mark.parametrize("bad", [4, 99, -1, -(1 << 31), (1 << 31) - 1])
def test_gptq_g_idx_out_of_range_is_quant_invalid(bad):
    fmt, packed, tensors = small_gptq()
    g_idx = tensors["g_idx"].clone()
    g_idx[5] = bad
    for call in (lambda t: fmt.dequantize(packed, t, CPU),
                 lambda t: fmt.quantize(packed, torch.zeros(packed.shape), t, CPU)):
        with pytest.raises(FormatError) as e:
            call({**tensors, "g_idx": g_idx})
        refused(e.value, "quant-invalid", "g_idx", packed.module)


def test_gptq_value_checks():
    # desc_act false but an act-order g_idx
    fmt, packed, tensors = small_gptq(desc=True)
    plain = GPTQ(gptq_config(4, 16, False, False, "gptq_v2"))
    with pytest.raises(FormatError) as e:
        plain.dequantize(packed, tensors, CPU)
    refused(e.value, "quant-invalid", "field desc_act", packed.module)
    # sym true but zero points other than 8
    sym = GPTQ(gptq_config(4, 16, True, True, "gptq_v2"))
    with pytest.raises(FormatError) as e:
        sym.dequantize(packed, tensors, CPU)
    refused(e.value, "quant-invalid", "field sym", packed.module)
    # NaN scale, and an fp16 overflow
    for value in (float("nan"), 60000.0):
        scales = tensors["scales"].clone()
        scales[1, 3] = value
        with pytest.raises(FormatError) as e:
            fmt.dequantize(packed, {**tensors, "scales": scales}, CPU)
        refused(e.value, "quant-invalid", "field scales", packed.module)
    # a weight to write with NaN, or of the wrong shape
    for weight in (torch.full(packed.shape, float("nan")), torch.zeros(3, 3)):
        with pytest.raises(FormatError) as e:
            fmt.quantize(packed, weight, tensors, CPU)
        refused(e.value, "quant-invalid", packed.module)
    # tensors that are not what find() saw
    with pytest.raises(FormatError) as e:
        fmt.dequantize(packed, {**tensors, "scales": tensors["scales"].float()}, CPU)
    refused(e.value, "quant-invalid", "field scales", packed.module)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_gptq_v1_zero_code_all_ones_is_refused(bits):
    """v1 stores zero 0 as the all-ones code; GPTQModel carries the +1 into the next code,
    AutoGPTQ/vLLM do not: that module is refused, naming checkpoint_format."""
    case = grid_case(bits, 32, 64, 16, False, False, 3)
    qzeros = case["qzeros"].clone()
    qzeros[0, 0] |= (1 << bits) - 1  # code of output 0 in group 0
    fmt = GPTQ(gptq_config(bits, 16, False, False, "gptq"))
    tensors = gptq_checkpoint(case, case["qweight"], qzeros, case["scales"], case["g_idx"], bias=False)
    packed = only(fmt.find(keys_of(tensors)))
    with pytest.raises(UnsupportedError) as e:
        fmt.dequantize(packed, members(packed, tensors), CPU)
    refused(e.value, "quant-unsupported", "checkpoint_format", packed.module)
    # the same bytes as a v2 file are zero point 15 (or 3, 7, 255): read
    v2 = GPTQ(gptq_config(bits, 16, False, False, "gptq_v2"))
    assert torch.isfinite(v2.dequantize(packed, members(packed, tensors), CPU)).all()


# -- AWQ refusals ----------------------------------------------------------------------------------

def awq_keys(out=64, n_in=128, groups=4):
    return {f"{M}.qweight": ("I32", (n_in, out // 8)), f"{M}.qzeros": ("I32", (groups, out // 8)),
            f"{M}.scales": ("F16", (groups, out)), f"{M}.bias": ("F16", (out,)), "lm_head.weight": ("F16", (5, out))}


def test_awq_find_accepts_a_plain_layout():
    found = AWQ(awq_config()).find(awq_keys())
    assert list(found) == [M] and found[M].shape == (64, 128)


@pytest.mark.parametrize("change,field", [
    (lambda k: k.update({f"{M}.qweight": ("I32", (128, 9))}), "bits"),
    (lambda k: k.update({f"{M}.scales": ("F16", (2, 64))}), "group_size"),
    (lambda k: k.update({f"{M}.qzeros": ("I32", (2, 8))}), "group_size"),
    (lambda k: k.update({f"{M}.scales": ("F16", (4, 60)), f"{M}.qzeros": ("I32", (4, 7))}), "bits"),
    (lambda k: k.pop(f"{M}.qzeros"), "qzeros"),
    (lambda k: k.update({f"{M}.g_idx": ("I32", (128,))}), "g_idx"),
    (lambda k: k.update({f"{M}.scales": ("F32", (4, 64))}), "scales"),
    (lambda k: k.update({f"{M}.qweight": ("I32", (100, 8))}), "group_size"),
])
def test_awq_find_refuses_disagreeing_tensors(change, field):
    keys = awq_keys()
    change(keys)
    with pytest.raises(FormatError) as e:
        AWQ(awq_config()).find(keys)
    refused(e.value, "quant-invalid", M, f"field {field}")


@pytest.mark.parametrize("config,field", [
    (awq_config(version="gemv"), "version"), (awq_config(version="GEMV"), "version"),
    (awq_config(version="gemv_fast"), "version"), (awq_config(version="marlin"), "version"),
    (awq_config(version="exllama"), "version"), (awq_config(version="ipex"), "version"),
    ({**awq_config(), "version": None, "format": "llm-awq"}, "format"), (awq_config(backend="llm-awq"), "backend"),
    (awq_config(bits=3), "bits"), ({"quant_method": "awq", "w_bit": 8, "q_group_size": 128}, "w_bit"),
    (awq_config(desc_act=True), "desc_act"), (awq_config(pack_dtype="int16"), "pack_dtype"),
    (awq_config(whatever=2), "whatever"),
])
def test_awq_config_refused_by_name(config, field):
    with pytest.raises(UnsupportedError) as e:
        AWQ(config)
    refused(e.value, "quant-unsupported", f"quantization_config.{field}")


def test_awq_config_as_written():
    AWQ({"quant_method": "awq", "zero_point": True, "group_size": 128, "bits": 4, "version": "gemm",
         "modules_to_not_convert": None})
    AWQ({"quant_method": "awq", "zero_point": True, "q_group_size": 64, "w_bit": 4, "version": "GEMM"})
    fmt = quant_format({"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128,
                                                "zero_point": True, "backend": "auto", "format": "gemm",
                                                "version": "gemm", "do_fuse": False, "sym": True, "desc_act": False,
                                                "modules_to_not_convert": ["visual"]}})
    assert isinstance(fmt, AWQ) and fmt.describe()["format"] == "awq-4bit-gemm"
    with pytest.raises(FormatError) as e:
        fmt.find({f"visual.blocks.0.{k.split('.', 3)[-1]}": v for k, v in awq_keys().items()})
    refused(e.value, "quant-invalid", "modules_to_not_convert", "visual.blocks.0")


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_gptq_ties_round_to_the_even_code(bits):
    """A weight exactly half way between two grid points takes the even code (torch.round in the
    libraries' packers); beyond the grid it clamps."""
    case = grid_case(bits, 32, 32, 16, False, False, 11)
    fmt = GPTQ(gptq_config(bits, 16, False, False, "gptq_v2"))
    tensors = gptq_checkpoint(case, case["qweight"], case["qzeros"], case["scales"], case["g_idx"], bias=False)
    packed = only(fmt.find(keys_of(tensors)))
    g = case["g_idx"].long()
    s = case["scales"][g].float().t()
    z = case["zeros"][g].t()
    k = torch.arange(32 * 32).view(32, 32) % ((1 << bits) + 1) - 1  # codes -1 .. maxq, then the midpoint above
    target = (k - z + 0.5).float() * s  # exact in fp32
    new = fmt.quantize(packed, target, members(packed, tensors), CPU)
    got = fmt.dequantize(packed, {**members(packed, tensors), "qweight": new["qweight"]}, CPU)
    even = torch.where(k % 2 == 0, k, k + 1).clamp(0, (1 << bits) - 1)
    expected = ((even - z).float() * s).half().float()
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))
    assert np.array_equal(got.numpy().view(np.int32),
                          first_principles_nearest(target.numpy(), s.numpy(), z.numpy(), bits).view(np.int32))


def test_awq_ties_round_to_the_even_code(oracle):
    i = indices("awq_pack")[1]
    case, ref = CASES[i], oracle[i]
    fmt = AWQ(awq_config(case["config_group_size"]))
    tensors = awq_checkpoint(ref["qweight"], ref["qzeros"], ref["scales"])
    packed = only(fmt.find(keys_of(tensors)))
    rows = torch.arange(case["in"]) // case["group_size"]
    s = ref["scales"][rows].float().t()
    z = case["zeros"][rows].t()
    k = torch.arange(s.numel()).view(s.shape) % 17 - 1
    target = (k - z + 0.5).float() * s
    new = fmt.quantize(packed, target, members(packed, tensors), CPU)
    got = fmt.dequantize(packed, {**members(packed, tensors), "qweight": new["qweight"]}, CPU)
    assert np.array_equal(got.numpy().view(np.int32),
                          first_principles_nearest(target.numpy(), s.numpy(), z.numpy(), 4).view(np.int32))


# -- fuzz: any header or tensor content is read or refused with an adapterkit error ----------------

def perturb(shapes, data):
    """Mostly the right shapes; sometimes one dimension off by a little."""
    if data.draw(st.booleans()):
        role = data.draw(st.sampled_from(sorted(shapes)))
        dim = data.draw(st.integers(0, len(shapes[role]) - 1))
        shape = list(shapes[role])
        shape[dim] = max(0, shape[dim] + data.draw(st.sampled_from([-1, 1, 3])))
        shapes[role] = tuple(shape)
    return shapes


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from([2, 3, 4, 8]), gs=st.sampled_from([-1, 16, 32]), desc=st.booleans(),
       sym=st.booleans(), v1=st.booleans(), out=st.integers(1, 3).map(lambda k: 32 * k) | st.integers(1, 70),
       n_in=st.integers(1, 3).map(lambda k: 32 * k) | st.integers(1, 70), seed=st.integers(0, 2**16),
       data=st.data())
def test_gptq_fuzz(bits, gs, desc, sym, v1, out, n_in, seed, data):
    fmt = GPTQ(gptq_config(bits, gs, desc, sym, "gptq" if v1 else "gptq_v2"))
    groups = 1 if gs == -1 else -(-n_in // gs)
    shapes = perturb({"qweight": (-(-n_in * bits // 32), out), "qzeros": (groups, -(-out * bits // 32)),
                      "scales": (groups, out), "g_idx": (n_in,)}, data)
    keys = {f"{M}.{role}": ("F16" if role == "scales" else "I32", shape) for role, shape in shapes.items()}
    fuzz_read(fmt, keys, seed)


@settings(max_examples=40, deadline=None)
@given(gs=st.sampled_from([-1, 8, 32]), out=st.integers(1, 8).map(lambda k: 8 * k), n_in=st.integers(1, 80),
       seed=st.integers(0, 2**16), data=st.data())
def test_awq_fuzz(gs, out, n_in, seed, data):
    groups = 1 if gs == -1 else max(1, n_in // gs)
    shapes = perturb({"qweight": (n_in, out // 8), "qzeros": (groups, out // 8), "scales": (groups, out)}, data)
    keys = {f"{M}.{role}": ("F16" if role == "scales" else "I32", shape) for role, shape in shapes.items()}
    fuzz_read(AWQ(awq_config(gs)), keys, seed)


def fuzz_read(fmt, keys, seed):
    try:
        found = fmt.find(keys)
    except AdapterkitError:
        return
    gen = torch.Generator().manual_seed(seed)
    for packed in found.values():
        tensors = {}
        for role, key in packed.members.items():
            dtype, shape = keys[key]
            if dtype == "F16":
                tensors[role] = (torch.randn(shape, generator=gen) * 0.01).half()
            elif role == "g_idx":  # out of range a third of the time; else valid for desc_act
                groups = keys[packed.members["scales"]][1][0]
                if seed % 3 == 0:
                    tensors[role] = torch.randint(-2, groups + 2, shape, generator=gen, dtype=torch.int32)
                elif fmt.desc_act:
                    tensors[role] = torch.randint(0, groups, shape, generator=gen, dtype=torch.int32)
                else:
                    size = shape[0] if fmt.group_size == -1 else fmt.group_size
                    tensors[role] = (torch.arange(shape[0]) // size).to(torch.int32)
            else:
                tensors[role] = torch.randint(-(1 << 31), 1 << 31, shape, generator=gen, dtype=torch.int64).to(torch.int32)
        if isinstance(fmt, GPTQ) and seed % 2:  # zero points the sym / v1 checks accept, half the time
            groups, n_out = keys[packed.members["scales"]][1]
            codes = (torch.full((groups, n_out), 1 << (fmt.bits - 1)) if fmt.sym
                     else torch.randint(0, (1 << fmt.bits) - 1, (groups, n_out), generator=gen))
            tensors["qzeros"] = stream_cols(codes - int(fmt.v1), fmt.bits, keys[packed.members["qzeros"]][1][1])
        try:
            weight = fmt.dequantize(packed, tensors, CPU)
        except AdapterkitError:
            continue
        assert weight.shape == packed.shape and weight.dtype == torch.float32
        again = fmt.quantize(packed, weight, tensors, CPU)
        assert torch.equal(fmt.dequantize(packed, again, CPU).view(torch.int32), weight.view(torch.int32))
