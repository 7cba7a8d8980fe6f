"""The spec's conformance vectors, its JSON examples and its generated files.

* every valid vector loads with exactly the expected tensors (dtype, shape, bytes), config,
  ranks, scalings and ΔW digests, and validates without errors;
* every invalid vector is refused by ``load`` and reported by ``validate`` with its code;
* every ```json example in spec/v1/README.md satisfies the schema its comment names;
* the committed schemas equal ``json_schema()``, and ``scripts/make_spec.py --check`` passes.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import jsonschema
import pytest
import torch

import adapterkit
from adapterkit.errors import API_CODES, CODES
from adapterkit.kinds import KINDS, config_from_dict

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "spec" / "v1"
VECTORS = SPEC / "vectors"
README = SPEC / "README.md"
DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def _runner():
    spec = importlib.util.spec_from_file_location("run_vectors", ROOT / "scripts" / "run_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_vectors = _runner()


def _vectors(kind: str) -> list[Path]:
    return run_vectors.vectors(VECTORS, kind)


def _expected(vector: Path) -> dict:
    return run_vectors.expected(vector)


_sha = run_vectors.sha


def test_vector_sets_are_not_empty():
    assert len(_vectors("valid")) >= 40
    assert len(_vectors("invalid")) >= 95


@pytest.mark.parametrize("vector", _vectors("valid") + _vectors("invalid"), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_vector(vector: Path):
    """scripts/run_vectors.py's checks (the same ones mutate_vectors.py runs against broken readers)."""
    assert run_vectors.check_vector(vector) == []


@pytest.mark.parametrize("vector", _vectors("valid"), ids=lambda p: p.name)
def test_valid_vector_weights_read_by_safetensors(vector: Path):
    """The reference safetensors reader sees the same tensors (the container is standard)."""
    from safetensors.torch import load_file

    exp = _expected(vector)
    if exp.get("requires") == "bin":
        return
    path = vector / exp["path"]
    if "adapter_name" in exp:
        path = path / exp["adapter_name"]
    files = [path] if path.is_file() else (list(path.glob("*.safetensors")) or list(path.rglob("*.safetensors")))
    assert len(files) == 1
    tensors = load_file(str(files[0]))
    assert {k: _sha(v) for k, v in tensors.items()} == {k: v["sha256"] for k, v in exp["tensors"].items()}


def test_valid_vectors_cover_both_forms_and_every_kind():
    exps = [_expected(v) for v in _vectors("valid")]
    assert {e["form"] for e in exps} == {"dir", "file"}
    assert {e["peft_type"] for e in exps} == set(KINDS)
    assert None in {e["format_version"] for e in exps}


def test_invalid_vectors_name_error_codes():
    for vector in _vectors("invalid"):
        code = _expected(vector)["code"]
        assert code in CODES and CODES[code][0] and code not in API_CODES, (vector.name, code)


def test_every_file_error_code_has_an_invalid_vector():
    """Each code a reader reports for a file is pinned by a vector (bin-unsupported: by the
    ``requires: bin`` vectors, which a reader without .bin support refuses with it)."""
    used = {_expected(v)["code"] for v in _vectors("invalid")}
    file_codes = {c for c, (cls, _) in CODES.items() if cls and c not in API_CODES}
    assert file_codes - used == {"bin-unsupported"}


# the LoRA vectors whose ΔW digests depend on how the scaling is rounded, checked against PEFT itself
_PEFT_DELTA_CASES = [
    ("lora_rslora_r3", "model.layers.0.self_attn.q_proj"),
    ("lora_rslora_r3", "model.layers.0.self_attn.v_proj"),
    ("lora_f64", "model.layers.0.self_attn.q_proj"),
    ("lora_f64", "conv"),
    ("lora_conv3d", "conv3"),
]


@pytest.mark.parametrize(("name", "module"), _PEFT_DELTA_CASES)
def test_delta_digest_matches_peft(name: str, module: str):
    """§8.6: PEFT 0.21.2's get_delta_weight on the vector's factors gives the listed digest, i.e. the
    double scaling is rounded to the compute dtype (F32 here, F64 for F64 factors) before the multiply."""
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model
    from torch import nn

    vector = VECTORS / "valid" / name
    exp = _expected(vector)
    adapter = adapterkit.load(vector / exp["path"])
    view = adapter.module(module)
    A, B = view.lora_A, view.lora_B
    cfg = exp["config"]
    if A.ndim == 2:
        base = nn.Linear(A.shape[1], B.shape[0], bias=False, dtype=B.dtype)
    else:
        conv = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}[A.ndim]
        base = conv(A.shape[1], B.shape[0], tuple(A.shape[2:]), bias=False, dtype=A.dtype)
    model = get_peft_model(nn.ModuleDict({"m": base}), LoraConfig(
        r=cfg["r"], lora_alpha=cfg["lora_alpha"], use_rslora=cfg["use_rslora"], target_modules=["m"]))
    layer = model.base_model.model["m"]
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(A)
        layer.lora_B["default"].weight.copy_(B)
    assert layer.lora_B["default"].weight.dtype == B.dtype
    assert layer.scaling["default"] == exp["delta_weights"][module]["scaling"]
    delta = layer.get_delta_weight("default").to(torch.float32)
    assert _sha(delta) == exp["delta_weights"][module]["sha256"]


def test_the_two_readings_of_the_scaling_differ_on_the_vector():
    """The rsLoRA r=3 vector separates 'round s to F32, then multiply' from 'multiply in F64, then round'."""
    adapter = adapterkit.load(VECTORS / "valid" / "lora_rslora_r3" / "adapter.safetensors")
    view = adapter.module("model.layers.0.self_attn.q_proj")
    product = view.lora_B @ view.lora_A
    other = (product.double() * view.scaling).float()
    assert not torch.equal(product * view.scaling, other)


# ----------------------------------------------------------------------------- schemas and examples


def _schema(name: str) -> dict:
    return json.loads((SPEC / "schema" / f"{name}.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("peft_type", sorted(KINDS))
def test_committed_schema_equals_generated(peft_type: str):
    cls = KINDS[peft_type].config
    schema = _schema(peft_type.lower())
    assert schema == json.loads(json.dumps(cls.json_schema()))
    jsonschema.validators.validator_for(schema).check_schema(schema)


def test_metadata_schema_accepts_what_the_writer_writes(tmp_path: Path):
    from adapterkit.io.safetensors_file import read_header

    schema = _schema("metadata")
    jsonschema.validators.validator_for(schema).check_schema(schema)
    for vector in _vectors("valid"):
        exp = _expected(vector)
        if not exp.get("canonical"):  # written by adapterkit's writer
            continue
        (file,) = vector.rglob("*.safetensors")
        metadata = read_header(file).metadata
        jsonschema.validate(metadata, schema)
        assert ("adapterkit.config" in metadata) == (exp["form"] == "file")
    # the schema checks the version's syntax; the major version is the reader's business
    # (version-unsupported, §5.2 rule 7), so 2.0 passes the schema and 1.0 plus a newline does not
    jsonschema.validate({"format": "pt", "adapterkit.version": "2.0"}, schema)
    for bad in ("1.0\n", "1.01", "1", " 1.0", "1.0 ", "v1.0"):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"format": "pt", "adapterkit.version": bad}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"format": "pt"}, schema)


_EXAMPLE = re.compile(r"(?P<comment><!-- schema: (?P<name>[\w-]+) -->\n)?```json\n(?P<body>.*?)```", re.S)


def _examples() -> list[tuple[str | None, str]]:
    return [(m["name"], m["body"]) for m in _EXAMPLE.finditer(README.read_text(encoding="utf-8"))]


def test_readme_has_examples_for_every_schema():
    names = {name for name, _ in _examples()}
    assert names >= {"metadata", *(t.lower() for t in KINDS)}


@pytest.mark.parametrize("index", range(len(_examples())))
def test_readme_example_satisfies_its_schema(index: int):
    name, body = _examples()[index]
    assert name is not None, f"```json example #{index} is not preceded by <!-- schema: NAME -->"
    data = json.loads(body)
    jsonschema.validate(data, _schema(name))
    if name == "metadata":
        if "adapterkit.config" in data or "adapterkit.recipe" not in data:
            config_from_dict(json.loads(data["adapterkit.config"]))
        if "adapterkit.recipe" in data:  # the string's own schema (contentSchema is an annotation to jsonschema)
            jsonschema.validate(json.loads(data["adapterkit.recipe"]), _schema(name)["properties"]["adapterkit.recipe"]["contentSchema"])
    else:
        assert config_from_dict(data).peft_type == name.upper()


def test_readme_error_table_lists_every_code():
    text = README.read_text(encoding="utf-8")
    for code in CODES:
        assert f"| `{code}` |" in text, code


# ----------------------------------------------------------------------------- generated files are fresh


def _make_spec():
    spec = importlib.util.spec_from_file_location("make_spec", ROOT / "scripts" / "make_spec.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_files_are_up_to_date():
    make_spec = _make_spec()
    files = make_spec.generate()
    assert make_spec.differences(files) == [], "stale spec files: run `python scripts/make_spec.py`"
    assert make_spec.generate() == files, "generation is not deterministic"


# ----------------------------------------------------------------------------- [R4.1-1], [R4.2-1] against PEFT 0.22.0


def test_configs_are_written_as_peft_0_22_writes_them_with_the_pattern_order_kept(tmp_path):
    """PEFT 0.22.0 writes adapter_config.json with every object's keys sorted except the values of
    rank_pattern/alpha_pattern, whose order decides the first match.  adapterkit's directory form is
    byte-identical to save_pretrained's, its single-file form holds the same object compactly, and
    PEFT reloads adapterkit's directory with the ranks and scalings it trained."""
    import warnings

    sys.path.insert(0, str(ROOT / "tests"))
    from peft import LoraConfig, PeftModel, get_peft_model
    from peft_models import llama, randomize_adapter

    cfg = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], rank_pattern={"q_proj": 2, r"layers\.0\..*": 3},
                     alpha_pattern={"v_proj": 12, ".*": 8})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(llama(), cfg)
        randomize_adapter(model)
        model.save_pretrained(str(tmp_path / "peft"))
    peft_text = (tmp_path / "peft" / "adapter_config.json").read_text()
    assert list(json.loads(peft_text)["rank_pattern"]) == ["q_proj", r"layers\.0\..*"]  # the premise: PEFT keeps the order
    ours = adapterkit.load(tmp_path / "peft")
    folder = adapterkit.save(ours, tmp_path / "ak")
    assert (folder / "adapter_config.json").read_text() == peft_text
    file = adapterkit.save(ours, tmp_path / "ak.safetensors")
    from safetensors import safe_open

    with safe_open(str(file), "pt") as f:
        embedded = f.metadata()["adapterkit.config"]
    assert embedded == json.dumps(json.loads(peft_text), separators=(",", ":"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = PeftModel.from_pretrained(llama(), str(folder))
    layers = {n: m for n, m in reloaded.named_modules() if hasattr(m, "r") and isinstance(m.r, dict) and "default" in m.r}
    got = {n.removeprefix("base_model.model."): (m.r["default"], m.scaling["default"]) for n, m in layers.items()}
    assert got == {name: (adapterkit.load(folder).module(name).rank, adapterkit.load(folder).module(name).scaling) for name in got}
    assert got["model.layers.0.self_attn.q_proj"] == (2, 8 / 2) and got["model.layers.0.self_attn.v_proj"] == (3, 12 / 3)
