"""The parts every adapter kind has: a frozen config dataclass and a :class:`Kind` record.

A config dataclass declares each field PEFT defines and adapterkit interprets,
with its JSON Schema fragment (``schema_field``); everything else PEFT writes
(``peft_version``, ``auto_mapping``, dropout, init options, ...) is kept
verbatim in ``extra`` so that a PEFT config survives a round trip unchanged.
The same field declarations generate the JSON Schemas under ``spec/v1/schema``.

A :class:`Kind` bundles the functions that differ per method (key grammar,
module views, structural checks, delta weights, statistics).  Nothing outside
``adapterkit.kinds`` branches on the kind.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ConfigError, Problem, UnsupportedError

if TYPE_CHECKING:
    import torch

    from ..adapter import Adapter

# JSON Schema fragments used by the config fields.
STR = {"type": "string"}
OPT_STR = {"type": ["string", "null"]}
BOOL = {"type": "boolean"}
POS_INT = {"type": "integer", "minimum": 1}
NUMBER = {"type": "number"}
STR_LIST = {"type": "array", "items": {"type": "string"}}
TARGETS = {"anyOf": [{"type": "null"}, STR, STR_LIST]}
PATTERN = {"type": "object", "additionalProperties": POS_INT}
NUM_PATTERN = {"type": "object", "additionalProperties": NUMBER}
OPT_STR_LIST = {"anyOf": [{"type": "null"}, STR_LIST]}
OPT_INT_LIST = {"anyOf": [{"type": "null"}, {"type": "integer"}, {"type": "array", "items": {"type": "integer"}}]}
OPT_STR_OR_LIST = {"anyOf": [{"type": "null"}, STR, STR_LIST]}


def schema_field(default: Any, schema: dict, *, required: bool = False, doc: str = "") -> Any:
    """A dataclass field carrying its JSON Schema fragment and whether the spec REQUIRES it."""
    factory = (lambda: dict(default)) if isinstance(default, dict) else None
    meta = {"schema": schema, "required": required, "doc": doc}
    if factory:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "null": lambda v: v is None,
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def schema_errors(value: Any, schema: dict) -> list[str]:
    """Check ``value`` against the small JSON Schema subset the config fields use."""
    if "anyOf" in schema:
        return [] if any(not schema_errors(value, s) for s in schema["anyOf"]) else [f"does not match {schema}"]
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_JSON_TYPES[t](value) for t in types):
            return [f"must be {' or '.join(types)}, got {type(value).__name__} {value!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"must be one of {schema['enum']}, got {value!r}"]
    if "minimum" in schema and isinstance(value, (int, float)) and value < schema["minimum"]:
        return [f"must be >= {schema['minimum']}, got {value!r}"]
    if "exclusiveMinimum" in schema and isinstance(value, (int, float)) and value <= schema["exclusiveMinimum"]:
        return [f"must be > {schema['exclusiveMinimum']}, got {value!r}"]
    if isinstance(value, list) and "items" in schema:
        return [f"[{i}] {e}" for i, v in enumerate(value) for e in schema_errors(v, schema["items"])]
    if isinstance(value, dict) and "additionalProperties" in schema:
        return [f"[{k!r}] {e}" for k, v in value.items() for e in schema_errors(v, schema["additionalProperties"])]
    return []


# config class -> its Kind, filled as each kind's module builds its Kind record (Kind.__post_init__)
_KIND_OF: dict[type, Kind] = {}


@dataclass(frozen=True)
class AdapterConfig:
    """Fields shared by every kind.  Subclasses set ``peft_type`` and add their fields."""

    peft_type: ClassVar[str] = ""
    base_model_name_or_path: str | None = schema_field(None, OPT_STR, doc="base model id or path")
    task_type: str | None = schema_field(None, OPT_STR, doc="PEFT task type, e.g. CAUSAL_LM")
    extra: Mapping[str, Any] = field(default_factory=dict, compare=True)
    # fields whose value was invalid (lenient parsing for ``validate`` only): checks that
    # depend on them are skipped instead of reporting consequences of the one config error
    unknown: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    @property
    def kind(self) -> Kind:
        """The :class:`Kind` of this config (each ``Kind`` record registers itself for its config
        class), so that the Adapter value reaches its kind without importing the registry.

        Raises:
            ConfigError: ``peft-type-unsupported`` for a config class no kind registered.
        """
        kind = next((_KIND_OF[c] for c in type(self).__mro__ if c in _KIND_OF), None)
        if kind is None or kind.peft_type != self.peft_type:
            raise ConfigError(
                "unsupported peft_type", code="peft-type-unsupported", key="peft_type",
                expected="a config class of adapterkit.kinds", actual=self.peft_type,
            )
        return kind

    @classmethod
    def typed_fields(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.name not in ("extra", "unknown")]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, path: Any = None, problems: list[Problem] | None = None) -> AdapterConfig:
        """Build a config from PEFT's ``adapter_config.json`` dict, checking every typed field.

        With ``problems`` (a list), every invalid field is recorded there instead of raised,
        left at its default and named in ``unknown``, so that the tensors can still be checked.

        Raises:
            ConfigError: code ``config-invalid`` naming the field, expected and actual value.
        """
        def reject(exc: ConfigError, field_name: str) -> None:
            if problems is None:
                raise exc
            problems.append(Problem(exc.code, exc.message, "error", exc.path, exc.key, exc.expected, exc.actual))
            unknown.add(field_name)

        data = dict(data)
        peft_type = data.pop("peft_type", cls.peft_type)
        if peft_type != cls.peft_type:
            raise ConfigError("wrong peft_type", path=path, key="peft_type", expected=cls.peft_type, actual=peft_type)
        values: dict[str, Any] = {}
        unknown: set[str] = set()
        for f in cls.typed_fields():
            if f.name not in data:
                if f.metadata.get("required"):
                    reject(ConfigError("required field is missing", path=path, key=f.name, expected=f.metadata["schema"], actual="absent"), f.name)
                continue
            value = data.pop(f.name)
            errors = schema_errors(value, f.metadata["schema"])
            if errors:
                reject(ConfigError(errors[0], path=path, key=f.name), f.name)
                continue
            values[f.name] = tuple(value) if isinstance(value, list) else value
        config = cls(**values, extra=data, unknown=frozenset(unknown))
        try:
            config.check(path=path)
        except ConfigError as exc:
            field_name = (exc.key or "").split("[")[0]
            if field_name not in unknown:  # not a consequence of a field already reported
                reject(exc, field_name)
                config = dataclasses.replace(config, unknown=frozenset(unknown))
        return config

    def check(self, *, path: Any = None) -> None:
        """Cross-field rules of the kind; subclasses extend.  Raises ConfigError."""

    def features(self) -> dict[str, Any]:
        """The settings that change what the tensors mean, for ``info`` (subclasses extend)."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        """The PEFT ``adapter_config.json`` dict (lists for tuples, ``peft_type`` included)."""
        out = dict(self.extra)
        for f in self.typed_fields():
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        out["peft_type"] = self.peft_type
        return dict(sorted(out.items()))

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The JSON Schema (draft 2020-12) of this kind's config, generated from the fields."""
        props: dict[str, Any] = {"peft_type": {"const": cls.peft_type}}
        for f in cls.typed_fields():
            props[f.name] = {**f.metadata["schema"], "description": f.metadata["doc"]}
            if f.metadata.get("required"):
                continue
            if f.default is not dataclasses.MISSING:
                props[f.name]["default"] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                props[f.name]["default"] = f.default_factory()
        return {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://adapterkit.dev/spec/v1/schema/{cls.peft_type.lower()}.json",
            "title": f"adapterkit v1 {cls.peft_type} adapter config",
            "type": "object",
            "required": ["peft_type"] + [f.name for f in cls.typed_fields() if f.metadata.get("required")],
            "properties": props,
            "additionalProperties": True,
        }


@dataclass(frozen=True)
class Kind:
    """The per-kind functions.  Each ``kinds/<kind>.py`` builds one and registers it.

    parse_key(key) -> (module, part) | None: the kind's tensor key grammar; None
        for keys that are whole-module tensors (``modules_to_save``, saved embeddings).
    modules(adapter) -> {module: view}: per-module views, built from the header only.
    check(adapter) -> [Problem]: every structural rule of the spec (shapes vs config,
        partners, flags), without reading tensor data.
    delta_weight(adapter, module, device, dtype) -> Tensor, if the kind has one.
    stats(adapter, module, device) -> {name: float}: per-module figures for ``info``.
    whole_tensors(adapter) -> {adapter key: base-relative tensor name}: the tensors stored
        whole (``modules_to_save``, trained biases, saved base layers), which replace the
        base model's tensor of that name when merging.
    merge(adapter, module, targets, *, weight, device) -> {role: Tensor}: the module's base
        tensors (role "weight", and "bias" where the adapter changes it) after merging, if
        the kind can be merged; ``unmerge`` is the inverse where one is defined.
    merge_shapes(adapter, module) -> {role: (shape, required)}: the base tensors a merge of
        the module reads, with the shape the adapter implies (None for a dimension the
        adapter does not determine), from the header only.
    row_delta(adapter, module, *, weight, unmerge, device) -> fill | None: for a module whose
        merge only adds a term to its weight, row by row (W' = W + T), a function
        ``fill(start, stop, out)`` writing rows start:stop of T into the fp32 tensor ``out``,
        such that W + T equals the rows of ``merge``/``unmerge``'s result bit for bit; None
        for modules merged otherwise.  Lets a checkpoint merge stream a large weight a block
        of rows at a time instead of holding it whole.
    """

    peft_type: str
    config: type[AdapterConfig]
    parse_key: Callable[[str], tuple[str, str] | None]
    modules: Callable[[Adapter], dict[str, Any]]
    check: Callable[[Adapter], list[Problem]]
    stats: Callable[[Adapter, str, Any], dict[str, float]]
    delta_weight: Callable[..., torch.Tensor] | None = None
    whole_tensors: Callable[[Adapter], dict[str, str]] | None = None
    merge: Callable[..., dict[str, torch.Tensor]] | None = None
    unmerge: Callable[..., dict[str, torch.Tensor]] | None = None
    merge_shapes: Callable[[Adapter, str], dict[str, tuple[tuple[int | None, ...], bool]]] | None = None
    row_delta: Callable[..., Callable[[int, int, torch.Tensor], None] | None] | None = None
    no_merge_reason: str = "adapters have no weights to merge into a checkpoint"

    def __post_init__(self) -> None:
        _KIND_OF[self.config] = self  # what ``AdapterConfig.kind`` returns

    def delta(self, adapter: Adapter, module: str, device: Any = None, dtype: Any = None) -> torch.Tensor:
        from .features import LOWRANK, require

        require(adapter, LOWRANK, what="delta_weight", unsupported_only=True)
        if self.delta_weight is None:
            raise UnsupportedError(
                f"{self.peft_type} adapters have no delta weight independent of the base weights",
                key=module, path=adapter.source,
            )
        return self.delta_weight(adapter, module, device=device, dtype=dtype)

    def _mergeable(self, adapter: Adapter, module: str | None, operation: str = "merge") -> None:
        from .features import require

        if self.merge is None or self.merge_shapes is None:
            raise UnsupportedError(f"{self.peft_type} {self.no_merge_reason}", key=module, path=adapter.source)
        require(adapter, operation)

    def merge_roles(self, adapter: Adapter, module: str) -> tuple[str, ...]:
        """The base tensors ("weight", "bias") a merge of ``module`` reads (and may change).

        Raises:
            UnsupportedError: ``not-supported`` for kinds that cannot be merged (prompt kinds).
        """
        return tuple(self.base_shapes(adapter, module))

    def base_shapes(self, adapter: Adapter, module: str) -> dict[str, tuple[tuple[int | None, ...], bool]]:
        """role -> (the base tensor's shape as the adapter implies it, whether it is required)."""
        self._mergeable(adapter, module)
        return self.merge_shapes(adapter, module)  # type: ignore[misc]

    def merge_module(self, adapter: Adapter, module: str, targets: Mapping[str, torch.Tensor], *, weight: float = 1.0, device: Any = None,
                     base: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The kind's ``merge``; raises UnsupportedError (``not-supported``) where there is none.
        ``base``: the module's tensors before other adapters of the same merge changed them."""
        self._mergeable(adapter, module)
        extra = {} if base is None else {"base": dict(base)}
        return self.merge(adapter, module, dict(targets), weight=weight, device=device, **extra)  # type: ignore[misc]

    def unmerge_module(self, adapter: Adapter, module: str, targets: Mapping[str, torch.Tensor], *, weight: float = 1.0, device: Any = None) -> dict[str, torch.Tensor]:
        """The kind's ``unmerge``; raises UnsupportedError (``not-supported``) where there is none."""
        self._mergeable(adapter, module, "unmerge")
        if self.unmerge is None:
            raise UnsupportedError(f"{self.peft_type} adapters cannot be unmerged", key=module, path=adapter.source)
        return self.unmerge(adapter, module, dict(targets), weight=weight, device=device)

    def row_merger(self, adapter: Adapter, module: str, *, weight: float = 1.0, unmerge: bool = False,
                   device: Any = None) -> Callable[[int, int, torch.Tensor], None] | None:
        """The kind's ``row_delta`` for ``module`` (None where the kind or the module has none)."""
        if self.row_delta is None or self.merge is None or (unmerge and self.unmerge is None):
            return None
        self._mergeable(adapter, module, "unmerge" if unmerge else "merge")
        return self.row_delta(adapter, module, weight=weight, unmerge=unmerge, device=device)

    def whole_module_tensors(self, adapter: Adapter) -> dict[str, str]:
        """adapter key -> base-relative tensor name of every tensor stored whole (none if the
        kind defines no such tensors)."""
        return self.whole_tensors(adapter) if self.whole_tensors is not None else {}
