"""One exception hierarchy for everything a user can get wrong.

Every failure a user can cause is an :class:`AdapterkitError` carrying a stable
``code`` (listed in :data:`CODES` and in the spec), the file, the tensor key or
config field, and what was expected versus what was found.  Validation collects
:class:`Problem` records instead of raising, so that all problems of a file can
be reported at once; ``Problem.to_error()`` turns one into the matching
exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# code -> (exception class name, one-line meaning).  The spec lists the same table.
CODES: dict[str, tuple[str, str]] = {
    "file-not-found": ("NotFoundError", "the path does not exist"),
    "not-an-adapter": ("NotFoundError", "no adapter config/weights at the path"),
    "ambiguous-adapter": ("NotFoundError", "several adapters under the path; name one"),
    "truncated-file": ("FormatError", "the file ends before the data its header describes"),
    "header-invalid": ("FormatError", "the safetensors header is not valid JSON of the right shape"),
    "offset-out-of-range": ("FormatError", "tensor data offsets overlap, leave holes or exceed the data"),
    "metadata-invalid": ("FormatError", "the safetensors __metadata__ breaks the spec"),
    "dtype-unsupported": ("TensorError", "a tensor dtype that adapters may not use"),
    "config-missing": ("ConfigError", "no adapter config found"),
    "config-invalid": ("ConfigError", "the adapter config is malformed or violates the spec"),
    "peft-type-unsupported": ("ConfigError", "peft_type names a method adapterkit does not support"),
    "version-unsupported": ("VersionError", "the adapterkit format major version is unknown"),
    "weights-missing": ("NotFoundError", "no adapter weights file found"),
    "shape-mismatch": ("TensorError", "a tensor's shape disagrees with the config or its partner"),
    "missing-partner": ("TensorError", "a tensor whose required partner tensor is absent"),
    "tensor-missing": ("TensorError", "a tensor the config requires is absent"),
    "non-finite": ("TensorError", "a tensor holds NaN or Inf"),
    "unexpected-key": ("TensorError", "a tensor key the adapter kind does not define"),
    "bin-invalid": ("FormatError", "a .bin file that is not a readable torch checkpoint of tensors"),
    "unsafe-pickle": ("UnsafeFileError", "a pickled .bin file that would run code or is not plain tensors"),
    "overwrite-input": ("WriteError", "the output would overwrite an input"),
    "write-failed": ("WriteError", "the output could not be written"),
    "output-exists": ("WriteError", "the output exists; overwrite (--overwrite) replaces it whole"),
    "form-mismatch": ("WriteError", "the output's name and form disagree (.safetensors names one file)"),
    "not-supported": ("UnsupportedError", "the operation is not defined for this adapter or module"),
    "device-unavailable": ("UnsupportedError", "the requested torch device does not exist or is not available"),
    "key-not-found": ("NotFoundError", "no such module or tensor in the adapter"),
    "adapter-not-found": ("NotFoundError", "the caller named an adapter subfolder that does not exist"),
    "bin-unsupported": ("UnsupportedError", "the reader does not read legacy .bin weights (adapterkit does; other readers MAY not)"),
    "groups-unsupported": ("UnsupportedError", "LoRA on a grouped convolution, which this format version does not define"),
    "not-a-checkpoint": ("NotFoundError", "no model checkpoint (model.safetensors or its index) at the path"),
    "checkpoint-invalid": ("FormatError", "a checkpoint's index and shards disagree, or its index is malformed"),
    "checkpoint-unsupported": ("UnsupportedError", "a checkpoint in a form adapterkit does not read (pytorch .bin weights: convert to safetensors)"),
    "plan-mismatch": ("WriteError", "a checkpoint write disagrees with the writer's plan (key order, dtype, shape, byte count) or the plan with the base"),
    "base-mismatch": ("TensorError", "the base checkpoint does not fit the adapter; the message lists every offending module"),
    "base-tensor-missing": ("NotFoundError", "a tensor the merge needs (a module's weight, the bias lora_B.bias adds to) is not in the base checkpoint"),
    "base-shape-mismatch": ("TensorError", "a base checkpoint tensor's shape disagrees with the adapter module merged into it"),
    "base-dtype-unsupported": ("UnsupportedError", "a base checkpoint tensor is integer or quantized; merging needs F16, BF16, F32 or F64"),
    "tied-embeddings": ("UnsupportedError", "the adapter changes lm_head, which the checkpoint ties to the input embeddings"),
    "orientation-unknown": ("UnsupportedError", "the checkpoint does not tell whether a module's square weight is stored (out, in) or, as transformers' Conv1D, (in, out); fan_in_fan_out (--fan-in-fan-out) says it"),
    "argument-invalid": ("ArgumentError", "an operation's argument is out of range or inconsistent (a rank or budget <= 0, a weight count that differs from the adapter count, an unknown method)"),
    "merge-record": ("ArgumentError", "the checkpoint's merge record refuses it: an adapter merged already (merge --again), or an unmerge of an adapter, weight or order the record does not hold (unmerge --force)"),
    "quant-unsupported": ("UnsupportedError", "a quantized checkpoint in a form adapterkit does not read or write (quantization method, bit width, packing); the message names the module or config field"),
    "quant-invalid": ("FormatError", "a quantized checkpoint whose tensors disagree with its quantization_config or each other; the message names the module and the field"),
    "adapters-incompatible": ("TensorError", "adapters that cannot be combined: different kinds, or one module with disagreeing shapes"),
    "model-mismatch": ("TensorError", "a model does not fit the adapter it is attached to; the message lists every offending module"),
    "adapter-name-taken": ("ArgumentError", "an adapter of that name is already attached to the model"),
    "adapter-not-attached": ("NotFoundError", "no adapter of that name is attached to the model"),
    "digest-mismatch": ("TensorError", "the config or a tensor differs from what the file's content digest records; the message names the first that differs"),
    "profile-violation": ("UnsupportedError", "the adapter breaks a rule of the serving engine it is checked for (vLLM, TGI, llama.cpp); the message names the rule, e.g. [vllm/scaling]"),
    # the Hugging Face Hub (adapterkit.hub: push, pull, repo ids where a path is accepted)
    "hub-unauthorized": ("HubError", "the Hub refused the token or its absence (401/403): pass --token, set HF_TOKEN or log in"),
    "hub-not-found": ("HubError", "no such repo, revision or file on the Hub (404)"),
    "hub-unavailable": ("HubError", "the Hub could not be reached or failed (5xx, connection refused, timeout)"),
    "hub-offline": ("HubError", "offline (HF_HUB_OFFLINE) and the cache lacks the files asked for"),
    "hub-unsafe-path": ("HubError", "a file name from the Hub that could write outside its folder (.., absolute, backslash, NUL, drive)"),
    "hub-error": ("HubError", "any other failure talking to the Hub"),
    "extra-missing": ("UnsupportedError", "an optional dependency is not installed; the message names the extra to install (pip install 'adapterkit[plot]')"),
    # warnings only (validate reports them; they never raise)
    "pattern-unmatched": ("", "a rank_pattern/alpha_pattern key matches no module"),
    "pattern-order": ("", "two pattern keys match one module and PEFT's sorted save changes which wins"),
    "empty-adapter": ("", "the adapter has no adapter tensors"),
    "feature-unsupported": ("", "the adapter uses a PEFT feature adapterkit does not implement (the message names the config field); operations that would use it refuse with not-supported"),
}

# Codes of the library API (writing, operations, devices, look-ups), not of the file format:
# spec §13 lists them apart from the codes a reader reports for a file.
API_CODES = frozenset({
    "overwrite-input", "write-failed", "output-exists", "form-mismatch", "not-supported", "device-unavailable", "key-not-found",
    # model checkpoints (adapterkit.checkpoint): inputs and outputs of merging, not adapter files
    "not-a-checkpoint", "checkpoint-invalid", "checkpoint-unsupported", "plan-mismatch",
    # merging adapters into checkpoints (adapterkit.ops.merge_plan)
    "base-mismatch", "base-tensor-missing", "base-shape-mismatch", "base-dtype-unsupported", "tied-embeddings",
    "orientation-unknown", "merge-record",
    # quantized checkpoints (adapterkit.quant)
    "quant-unsupported", "quant-invalid",
    # low-rank surgery (adapterkit.ops: combine, resize, rebalance, prune)
    "argument-invalid", "adapters-incompatible",
    # attaching adapters to torch models (adapterkit.inject)
    "model-mismatch", "adapter-name-taken", "adapter-not-attached",
    # serving-engine profiles (adapterkit.ops.export: check, export)
    "profile-violation",
    # the Hugging Face Hub (adapterkit.hub)
    "hub-unauthorized", "hub-not-found", "hub-unavailable", "hub-offline", "hub-unsafe-path", "hub-error",
    # looking inside adapters (adapterkit.inspect: diff, plot_spectrum)
    "extra-missing",
})


class AdapterkitError(Exception):
    """Base of every error adapterkit raises for bad input.

    Attributes:
        code: stable machine-readable code (a key of :data:`CODES`).
        path: the file or directory concerned, if any.
        key: the tensor key or config field concerned, if any.
        expected / actual: what the spec requires and what was found.
    """

    default_code = "adapterkit-error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        path: str | Path | None = None,
        key: str | None = None,
        expected: Any = None,
        actual: Any = None,
    ) -> None:
        self.message = message
        self.code = code or self.default_code
        self.path = str(path) if path is not None else None
        self.key = key
        self.expected = expected
        self.actual = actual
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = ": ".join(str(p) for p in (self.path, self.key) if p)
        text = f"{where}: {self.message}" if where else self.message
        if self.expected is not None or self.actual is not None:
            text += f" (expected {self.expected}, got {self.actual})"
        return f"{text} [{self.code}]"

    def with_path(self, path: str | Path) -> AdapterkitError:
        """Fill in the file if the raiser did not know it; returns self."""
        if self.path is None:
            self.path = str(path)
            self.args = (self.__str__(),)
        return self


class NotFoundError(AdapterkitError):
    default_code = "file-not-found"


class FormatError(AdapterkitError):
    default_code = "header-invalid"


class ConfigError(AdapterkitError):
    default_code = "config-invalid"


class VersionError(AdapterkitError):
    default_code = "version-unsupported"


class TensorError(AdapterkitError):
    default_code = "shape-mismatch"


class UnsafeFileError(AdapterkitError):
    default_code = "unsafe-pickle"


class WriteError(AdapterkitError):
    default_code = "write-failed"


class UnsupportedError(AdapterkitError):
    default_code = "not-supported"


class ArgumentError(AdapterkitError):
    default_code = "argument-invalid"


class HubError(AdapterkitError):
    default_code = "hub-error"


_CLASSES = {
    cls.__name__: cls
    for cls in (
        NotFoundError,
        FormatError,
        ConfigError,
        VersionError,
        TensorError,
        UnsafeFileError,
        WriteError,
        UnsupportedError,
        ArgumentError,
        HubError,
    )
}


@dataclass(frozen=True)
class Problem:
    """One finding of validation: an error (the file breaks a MUST) or a warning."""

    code: str
    message: str
    severity: str = "error"  # "error" | "warning"
    path: str | None = None
    key: str | None = None
    expected: Any = None
    actual: Any = None

    def to_error(self) -> AdapterkitError:
        cls = _CLASSES.get(CODES.get(self.code, ("",))[0], AdapterkitError)
        return cls(
            self.message,
            code=self.code,
            path=self.path,
            key=self.key,
            expected=self.expected,
            actual=self.actual,
        )

    def __str__(self) -> str:
        return f"{self.severity}: {self.to_error()}"


def error_for(code: str, message: str, **context: Any) -> AdapterkitError:
    """Build the exception class that :data:`CODES` assigns to ``code``."""
    return Problem(code, message, **context).to_error()
