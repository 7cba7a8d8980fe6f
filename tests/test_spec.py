"""The spec's conformance vectors, its JSON examples and its generated files.

* every valid vector loads with exactly the expected tensors (dtype, shape, bytes), config,
  ranks, scalings and ΔW digests, and validates without errors;
* every invalid vector is refused by ``load`` and reported by ``validate`` with its code;
* every ```json example in spec/v1/README.md satisfies the schema its comment names;
* the committed schemas equal ``json_schema()``, and ``scripts/make_spec.py --check`` passes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path

import jsonschema
import pytest
import torch

import adapterkit
from adapterkit.errors import CODES
from adapterkit.kinds import KINDS, config_from_dict

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "spec" / "v1"
VECTORS = SPEC / "vectors"
README = SPEC / "README.md"
DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def _vectors(kind: str) -> list[Path]:
    return sorted(p for p in (VECTORS / kind).iterdir() if (p / "expected.json").is_file())


def _expected(vector: Path) -> dict:
    return json.loads((vector / "expected.json").read_text(encoding="utf-8"))


def _raw(t: torch.Tensor) -> bytes:
    """Little-endian row-major bytes, computed independently of the library."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(_raw(t)).hexdigest()


def test_vector_sets_are_not_empty():
    assert len(_vectors("valid")) >= 15
    assert len(_vectors("invalid")) >= 20


@pytest.mark.parametrize("vector", _vectors("valid"), ids=lambda p: p.name)
def test_valid_vector(vector: Path):
    exp = _expected(vector)
    path = vector / exp["path"]
    adapter = adapterkit.load(path)
    assert adapter.peft_type == exp["peft_type"]
    assert adapter.format_version == exp["format_version"]
    assert adapter.config.to_dict() == exp["config"]
    got = {k: adapter.tensors[k] for k in adapter.tensors}
    assert sorted(got) == sorted(exp["tensors"])
    for key, want in exp["tensors"].items():
        t = got[key]
        assert DTYPES[t.dtype] == want["dtype"], key
        assert list(t.shape) == want["shape"], key
        assert _sha(t) == want["sha256"], key
    deltas = exp.get("delta_weights", {})
    if adapter.peft_type == "LORA":
        assert sorted(adapter.modules) == sorted(deltas)
    for module, want in deltas.items():
        view = adapter.module(module)
        assert view.rank == want["rank"], module
        assert view.scaling == want["scaling"], module
        delta = adapter.delta_weight(module, dtype=torch.float32)
        assert list(delta.shape) == want["shape"], module
        assert _sha(delta) == want["sha256"], module
    problems = adapterkit.validate(path)
    assert [str(p) for p in problems if p.severity == "error"] == []
    assert sorted(p.code for p in problems if p.severity == "warning") == sorted(exp["warnings"])


@pytest.mark.parametrize("vector", _vectors("valid"), ids=lambda p: p.name)
def test_valid_vector_weights_read_by_safetensors(vector: Path):
    """The reference safetensors reader sees the same tensors (the container is standard)."""
    from safetensors.torch import load_file

    exp = _expected(vector)
    files = [p for p in vector.rglob("*.safetensors")]
    assert len(files) == 1
    tensors = load_file(str(files[0]))
    assert {k: _sha(v) for k, v in tensors.items()} == {k: v["sha256"] for k, v in exp["tensors"].items()}


def test_valid_vectors_cover_both_forms_and_every_kind():
    exps = [_expected(v) for v in _vectors("valid")]
    assert {e["form"] for e in exps} == {"dir", "file"}
    assert {e["peft_type"] for e in exps} == set(KINDS)
    assert None in {e["format_version"] for e in exps}


@pytest.mark.parametrize("vector", _vectors("invalid"), ids=lambda p: p.name)
def test_invalid_vector(vector: Path):
    exp = _expected(vector)
    assert exp["code"] in CODES and CODES[exp["code"]][0], "an invalid vector must name an error code"
    path = vector / exp["path"]
    with pytest.raises(adapterkit.AdapterkitError) as info:
        adapterkit.load(path)
    assert info.value.code == exp["code"], str(info.value)
    codes = {p.code for p in adapterkit.validate(path) if p.severity == "error"}
    assert codes == {exp["code"]}  # that defect, and no other error


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
        if exp["format_version"] != adapterkit.FORMAT_VERSION:
            continue
        (file,) = vector.rglob("*.safetensors")
        metadata = read_header(file).metadata
        jsonschema.validate(metadata, schema)
        assert ("adapterkit.config" in metadata) == (exp["form"] == "file")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"format": "pt", "adapterkit.version": "2.0"}, schema)
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
        config_from_dict(json.loads(data["adapterkit.config"]))
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
