"""Which checkpoint tensors a merge touches: PEFT module names mapped onto checkpoint keys.

``plan_merge`` reads no tensor data: it takes the adapter's header (shapes of the
factors, ``ia3_l``, whole-module tensors) and the checkpoint's key -> (dtype, shape)
table, and either returns a complete :class:`MergePlan` or raises one error that
lists every module the checkpoint does not fit.  The merge itself is the kind's
``merge`` (``adapter.merge(module, targets)``), applied per :class:`ModuleTarget`.

Prefix rule.  A module ``model.layers.0.self_attn.q_proj`` has its weight at
``<name>.weight``, where ``<name>`` is, for the whole adapter at once, one of:
the module name itself; the name without its first component (a checkpoint saved
from an inner model, e.g. ``LlamaModel`` alone: ``layers.0...``); or the name with
one more leading component ``P.`` (a checkpoint saved from an outer wrapper).
The rule that finds the most module weights wins (ties: exact, then strip, then
the alphabetically first ``P``); whole-module tensors follow the same rule.

Tied embeddings.  A checkpoint with ``tie_word_embeddings`` stores no
``lm_head.weight``; ``plan_merge`` alone reports a module on the missing output
embedding as ``tied-embeddings``, naming the embedding it is tied to.
``find_tied_embeddings`` says whether a checkpoint ties them (``config.json``, or
its structure), so that ``merge_checkpoint`` can untie them or merge into the one
shared matrix instead.

Order.  ``replacements`` (whole-module tensors: ``modules_to_save``, trained
biases, saved base layers) are applied before the merges: where one replaces a
tensor a module is merged into (a trained bias that ``lora_B.bias`` adds to),
the merge starts from the replaced tensor, as in PEFT's merged model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..adapter import Adapter
from ..errors import AdapterkitError, Problem, error_for
from ..kinds.merging import shape_fits, shape_text

# dtypes a merge can compute in: safetensors names, and torch's names for callers that have those
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64", "float16", "bfloat16", "float32", "float64", "half", "float", "double"})
OUTPUT_EMBEDDINGS = ("lm_head", "embed_out", "output")
INPUT_EMBEDDINGS = ("embed_tokens", "wte", "word_embeddings", "shared", "embed_in", "tok_embeddings")

CheckpointKeys = Mapping[str, tuple[str, tuple[int, ...]]]


@dataclass(frozen=True)
class ModuleTarget:
    """One adapter module and the checkpoint keys of the base tensors its merge reads.

    Attributes:
        module: the adapter's module name (PEFT's, e.g. ``model.layers.0.self_attn.q_proj``).
        roles: role ("weight", "bias") -> checkpoint key; an optional role (an IA3 module's
            bias) appears only when the checkpoint has it.
    """

    module: str
    roles: dict[str, str]


@dataclass(frozen=True)
class MergePlan:
    """Everything a merge of one adapter writes, keyed by checkpoint key.

    Attributes:
        targets: one :class:`ModuleTarget` per adapter module, sorted by module name.
        replacements: checkpoint key -> adapter key of a tensor stored whole, which replaces
            the checkpoint's tensor (applied before the merges).
        prefix_rule: how module names became checkpoint names: ``"exact"``,
            ``"strip 'model.'"`` or ``"add 'transformer.'"``.
    """

    targets: list[ModuleTarget]
    replacements: dict[str, str] = field(default_factory=dict)
    prefix_rule: str = "exact"


def _rules(names: list[str], keys: CheckpointKeys) -> list[tuple[str, Callable[[str], str | None]]]:
    """The candidate name rules, in order of preference."""
    rules: list[tuple[str, Callable[[str], str | None]]] = [("exact", lambda n: n)]
    firsts = {n.split(".", 1)[0] for n in names if "." in n}
    for first in sorted(firsts):
        rules.append((f"strip {first + '.'!r}", lambda n, f=first: n[len(f) + 1:] if n.startswith(f + ".") else None))
    wanted = set(names)
    outer = sorted({k.split(".", 1)[0] for k in keys if "." in k and k.split(".", 1)[1] in wanted})
    for p in outer:
        rules.append((f"add {p + '.'!r}", lambda n, p=p: f"{p}.{n}"))
    return rules


def _choose_rule(names: list[str], keys: CheckpointKeys) -> tuple[str, Callable[[str], str | None]]:
    """The rule that finds the most of ``names`` among ``keys`` (first in preference on ties)."""
    best, best_hits = None, -1
    for rule in _rules(names, keys):
        hits = sum(1 for n in names if (m := rule[1](n)) is not None and m in keys)
        if hits > best_hits:
            best, best_hits = rule, hits
        if hits == len(names):
            break
    assert best is not None
    return best


def _tied_to(module_name: str, keys: CheckpointKeys) -> str | None:
    """The input embedding a missing output embedding is presumably tied to, if any."""
    if module_name.rsplit(".", 1)[-1] not in OUTPUT_EMBEDDINGS:
        return None
    found = sorted(k for k in keys if k.endswith(".weight") and k[: -len(".weight")].rsplit(".", 1)[-1] in INPUT_EMBEDDINGS)
    return found[0] if found else None


@dataclass(frozen=True)
class TiedEmbeddings:
    """A checkpoint whose output embedding is its input embedding.

    Attributes:
        input_key: the input embedding's key (``model.embed_tokens.weight``).
        output_key: the output embedding's key (``lm_head.weight``), which is usually absent.
        stored: whether ``output_key`` is in the checkpoint anyway (transformers ignores it
            when it ties the two on loading).
        config: the parsed ``config.json`` that says so, or None.
        known: whether ``config.json`` says ``tie_word_embeddings: true``; False when no
            config says either way and the structure allows a tie (an input embedding, no
            output embedding stored): the tie is then unknown, and a merge that depends on
            it must be told (``tied_embeddings``) rather than guess.
    """

    input_key: str
    output_key: str
    stored: bool
    config: dict | None = None
    known: bool = True  # False: no config.json says so; the structure only allows a tie


# models whose computation changes with ``tie_word_embeddings`` beyond sharing the matrix
# (T5 rescales the decoder output only when tied): untying them is not exact
TIE_CHANGES_MATH = frozenset({"t5", "mt5", "umt5", "longt5", "switch_transformers"})


def _embedding_keys(keys: CheckpointKeys, names: tuple[str, ...]) -> list[str]:
    return sorted(k for k in keys if k.endswith(".weight") and k[: -len(".weight")].rsplit(".", 1)[-1] in names)


def find_tied_embeddings(keys: CheckpointKeys, config: dict | None) -> TiedEmbeddings | None:
    """Whether the checkpoint ties its output embedding to its input embedding.

    ``config`` (the checkpoint's ``config.json``) decides when it says
    ``tie_word_embeddings``.  Otherwise (no config, or one written before transformers
    stored the default) nothing is guessed: a checkpoint storing an output embedding is
    taken as it is (untied), and one with an input embedding and no output embedding —
    tied, or a model without an output layer — gives a tie with ``known=False``.
    The pair must be unambiguous (one input embedding; one output embedding, or none, which
    is then ``lm_head.weight``): otherwise there is nothing to tie, and None is returned.
    """
    inputs = _embedding_keys(keys, INPUT_EMBEDDINGS)
    outputs = _embedding_keys(keys, OUTPUT_EMBEDDINGS)
    if len(inputs) != 1 or len(outputs) > 1:
        return None
    output = outputs[0] if outputs else "lm_head.weight"
    said = config.get("tie_word_embeddings") if isinstance(config, dict) else None
    said = said if isinstance(said, bool) else None
    if said is False or (said is None and outputs):
        return None
    return TiedEmbeddings(inputs[0], output, bool(outputs), config if isinstance(config, dict) else None, known=said is True)


def weight_keys(adapter: Adapter, checkpoint_keys: CheckpointKeys) -> dict[str, str | None]:
    """module -> the checkpoint key of its weight under the rule ``plan_merge`` chooses (None
    where the rule gives none); reads the header only."""
    modules = sorted(adapter.modules)
    names = [f"{m}.weight" for m in modules] + sorted(adapter.kind.whole_module_tensors(adapter).values())
    _, rule = _choose_rule(names, checkpoint_keys)
    return {m: rule(f"{m}.weight") for m in modules}


def plan_merge(adapter: Adapter, checkpoint_keys: CheckpointKeys) -> MergePlan:
    """Map every module of ``adapter`` (and its whole-module tensors) onto ``checkpoint_keys``.

    Args:
        adapter: the adapter to merge (only its header is read).
        checkpoint_keys: checkpoint key -> (dtype name, shape) of every base tensor; dtype
            names are safetensors' (``F32``, ``BF16``, ...) or torch's (``float32``).

    The orientation of 2-D weights is each module view's ``fan_in_fan_out``: the adapter's saved
    flag, unless the adapter went through ``ops.orientation.for_checkpoint`` (as
    ``merge_checkpoint`` does), which decides it per module as PEFT does.

    Returns:
        A complete plan; nothing is ever left out silently.

    Raises:
        UnsupportedError: ``not-supported`` for kinds that cannot be merged (prompt kinds).
        TensorError: ``base-mismatch``, listing every offending module — a module without a
            base weight, a base tensor of the wrong shape, an integer or quantized base dtype,
            a required bias that is absent, ``lm_head`` tied to the embeddings.  The error's
            ``problems`` holds one :class:`Problem` per offence (codes ``base-tensor-missing``,
            ``base-shape-mismatch``, ``base-dtype-unsupported``, ``tied-embeddings``).
    """
    kind = adapter.kind
    modules = sorted(adapter.modules)
    shapes = {m: kind.base_shapes(adapter, m) for m in modules}  # not-supported for prompt kinds
    whole = kind.whole_module_tensors(adapter)
    names = [f"{m}.weight" for m in modules] + sorted(whole.values())
    rule_name, rule = _choose_rule(names, checkpoint_keys)
    problems: list[Problem] = []

    def problem(code: str, message: str, key: str | None, expected: object = None, actual: object = None) -> None:
        problems.append(Problem(code, message, "error", None, key, expected, actual))

    def fits(key: str, want: tuple[int | None, ...], what: str) -> bool:
        dtype, shape = checkpoint_keys[key]
        ok = True
        if str(dtype).removeprefix("torch.") not in FLOAT_DTYPES:
            problem("base-dtype-unsupported", f"{what}: base tensor `{key}` is {dtype}; merging needs a float tensor", key, "F16 | BF16 | F32 | F64", dtype)
            ok = False
        if not shape_fits(tuple(shape), want):
            problem("base-shape-mismatch", f"{what}: base tensor `{key}` has shape {tuple(shape)}, the adapter needs {shape_text(want)}", key, shape_text(want), tuple(shape))
            ok = False
        return ok

    targets = []
    for m in modules:
        roles: dict[str, str] = {}
        for role, (want, required) in shapes[m].items():
            mapped = rule(f"{m}.{role}")
            if mapped is None or mapped not in checkpoint_keys:
                shown = mapped or f"{m}.{role}"
                tied = _tied_to(m, checkpoint_keys) if role == "weight" else None
                if tied is not None:
                    problem("tied-embeddings", f"`{m}`: no `{shown}` in the checkpoint, whose output embedding is tied to `{tied}`; merging would change the input embeddings too", m, shown, "absent")
                elif required:
                    why = " (lora_B.bias adds to it)" if role == "bias" else ""
                    problem("base-tensor-missing", f"`{m}`: no base {role} `{shown}` in the checkpoint{why}", m, shown, "absent")
                continue
            if fits(mapped, want, f"`{m}`"):
                roles[role] = mapped
        targets.append(ModuleTarget(m, roles))
    replacements = {}
    for akey, name in sorted(whole.items()):
        mapped = rule(name)
        if mapped is None or mapped not in checkpoint_keys:
            problem("base-tensor-missing", f"`{akey}` (stored whole) replaces `{mapped or name}`, which is not in the checkpoint", akey, mapped or name, "absent")
        elif fits(mapped, tuple(adapter.meta(akey).shape), f"`{akey}` (stored whole)"):
            replacements[mapped] = akey
    if problems:
        raise _base_mismatch(adapter, problems, rule_name)
    return MergePlan(targets, replacements, rule_name)


def _base_mismatch(adapter: Adapter, problems: list[Problem], rule_name: str) -> AdapterkitError:
    count = len({p.key for p in problems})
    message = f"the base checkpoint does not fit the adapter ({count} offending, names mapped by rule {rule_name}): " + "; ".join(p.message for p in problems)
    err = error_for("base-mismatch", message, path=adapter.source)
    err.problems = tuple(problems)  # type: ignore[attr-defined]
    return err
