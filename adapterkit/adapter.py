"""The Adapter value: a typed config plus a mapping of tensor key -> tensor, read lazily.

Tensor keys are exactly the keys of PEFT's ``adapter_model.safetensors``
(``base_model.model.<module>.lora_A.weight``, ``prompt_embeddings``, ...), so a
PEFT file maps onto an Adapter with nothing renamed.  ``adapter.modules`` groups
them into per-module views (built by the adapter's kind); ``adapter.info(key)``
gives dtype and shape from the file header without reading data.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .devices import resolve_device
from .dtypes import ITEMSIZE
from .errors import NotFoundError

if TYPE_CHECKING:  # the kinds sit above the value: it reaches its kind through its config (AdapterConfig.kind)
    import torch

    from .kinds.base import AdapterConfig, Kind

FORMAT_VERSION = "1.3"  # the adapterkit format version this library writes (1.1: the content digest; 1.2: pattern order kept; 1.3: LoHa)


@dataclass(frozen=True)
class TensorMeta:
    """dtype (safetensors name) and shape of a tensor, known without reading it."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * ITEMSIZE[self.dtype]


class TensorStore(Mapping[str, Any]):
    """Read-only mapping key -> tensor (a torch tensor; a numpy array in the torch-free
    inspection stores of ``adapterkit.io.array_store``).  ``meta(key)`` never reads tensor data."""

    def meta(self, key: str) -> TensorMeta:
        raise NotImplementedError


class MemoryStore(TensorStore):
    """Tensors held in memory (what ``load`` returns and what operations build)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self._tensors = dict(tensors)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._tensors[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def meta(self, key: str) -> TensorMeta:
        from .dtypes import DTYPE_NAMES  # torch's dtypes: the tensors held here are torch's

        t = self._tensors[key]
        return TensorMeta(DTYPE_NAMES.get(t.dtype, str(t.dtype)), tuple(t.shape))


@dataclass(frozen=True, eq=False)
class Adapter:
    """An adapter: ``config`` (one frozen dataclass per kind) and ``tensors`` (key -> tensor).

    Attributes:
        config: the kind's config dataclass (``LoraConfig``, ``IA3Config``, ...).
        tensors: a :class:`TensorStore`; lazy (``adapterkit.io.lazy_store.LazyStore``) when the
            adapter came from ``open_adapter``.
        source: the weights file it was read from, if any (never overwritten by ``save``).
        format_version: the adapterkit format version of the source, None for the PEFT profile.
        recipe: how adapterkit made it, oldest step first (``adapterkit.io.recipe``); provenance
            only, so ``==`` ignores it, as it ignores ``source``.
        inputs: (role, path) of what an operation read to make it (``combine``'s adapters,
            ``extract``'s checkpoints, ...): ``save`` never writes over, into or around them
            (``adapterkit.io.outputs``); ignored by ``==``.
    """

    config: AdapterConfig
    tensors: TensorStore
    source: Path | None = None
    format_version: str | None = None
    recipe: tuple[dict[str, Any], ...] = ()
    inputs: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_tensors(cls, config: AdapterConfig, tensors: Mapping[str, torch.Tensor]) -> Adapter:
        return cls(config, MemoryStore(tensors))

    @property
    def kind(self) -> Kind:
        """The kind's functions (``adapterkit.kinds``), as the config knows them."""
        return self.config.kind

    @property
    def peft_type(self) -> str:
        return self.config.peft_type

    def meta(self, key: str) -> TensorMeta:
        return self.tensors.meta(key)

    @cached_property
    def modules(self) -> Mapping[str, Any]:
        """Per-module views, keyed by module path (the key minus prefix and part); built once."""
        return MappingProxyType(self.kind.modules(self))

    def module(self, name: str) -> Any:
        """The view of one module.  Raises NotFoundError (``key-not-found``) naming close matches."""
        modules = self.modules
        if name not in modules:
            close = [m for m in modules if m.endswith(name)][:3]
            raise NotFoundError(
                "no such module in the adapter", code="key-not-found", path=self.source, key=name,
                expected=f"one of {close}" if close else f"one of {len(modules)} modules", actual=name,
            )
        return modules[name]

    def delta_weight(self, module: str, *, device: Any = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """ΔW of ``module`` as PEFT's ``get_delta_weight`` computes it.

        Computed in fp32 (fp64 for fp64 storage) on ``device``; returned in ``dtype``
        (default: the stored dtype, as PEFT does).  Raises UnsupportedError for kinds
        whose effect depends on the base weights (IA3, prompt learning).
        """
        self.module(module)
        return self.kind.delta(self, module, device=resolve_device(device), dtype=dtype)

    def merge_roles(self, module: str) -> tuple[str, ...]:
        """The base tensors ("weight", "bias") a merge of ``module`` reads.  Raises
        UnsupportedError for kinds that cannot be merged (prompt kinds)."""
        self.module(module)
        return self.kind.merge_roles(self, module)

    def merge(self, module: str, targets: Mapping[str, torch.Tensor], *, weight: float = 1.0, device: Any = None) -> dict[str, torch.Tensor]:
        """The base tensors of ``module`` (by role, checkpoint layout) with the adapter merged in,
        in fp32 (fp64 for fp64 targets), on ``device``; only the roles that change.  See the
        kind's ``merge`` for what ``weight`` means.  Raises UnsupportedError for prompt kinds."""
        self.module(module)
        return self.kind.merge_module(self, module, targets, weight=weight, device=resolve_device(device))

    def unmerge(self, module: str, targets: Mapping[str, torch.Tensor], *, weight: float = 1.0, device: Any = None) -> dict[str, torch.Tensor]:
        """The inverse of :meth:`merge` where the kind defines one (not for DoRA)."""
        self.module(module)
        return self.kind.unmerge_module(self, module, targets, weight=weight, device=resolve_device(device))

    def parameter_count(self) -> int:
        return sum(self.meta(k).numel for k in self.tensors)

    def nbytes(self) -> int:
        return sum(self.meta(k).nbytes for k in self.tensors)

    def __eq__(self, other: object) -> bool:
        """Same config and bit-identical tensors (dtype, shape, bytes); the source and the recipe
        (provenance, not content) are not compared."""
        if not isinstance(other, Adapter):
            return NotImplemented
        if self.config != other.config or set(self.tensors) != set(other.tensors):
            return False
        import torch

        for key in self.tensors:
            a, b = self.tensors[key], other.tensors[key]
            if a.dtype != b.dtype or a.shape != b.shape:
                return False
            if not torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)):
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Adapter({self.peft_type}, {len(self.tensors)} tensors, source={self.source})"
