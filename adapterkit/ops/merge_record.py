"""The merge record: what a checkpoint says adapterkit merged into it, written by ``merge`` and
read back to guard the next ``merge`` and ``unmerge``.

Each shard's safetensors metadata holds the record under ``adapterkit.merged``: a JSON list of
entries, oldest merge first, one per adapter merged and not unmerged since::

    {"adapter": "runs/a", "kind": "LORA", "weight": 1.0, "base_model": "org/base",
     "digest": "sha256:...", "added": ["model.layers.0.self_attn.q_proj.weight", ...],
     "changed": ["model.embed_tokens.weight", ...]}

``digest`` is the adapter's content digest (``adapterkit.digest``, spec §5.5: the one adapterkit
records when it saves the adapter, computed here for any adapter, PEFT's included), which is
how an adapter is recognised whatever its path.  ``added`` lists the checkpoint keys the merge
changed by adding a term (plain LoRA: ``W + w·ΔW``, ``lora_B.bias``), ``changed`` those it
changed otherwise (IA3 scaling, DoRA, tensors stored whole); two merges commute on a key only
when both added to it, which decides the order in which they can be taken out again.

Old records (adapterkit before the digest was recorded) have entries without ``digest``,
``added`` and ``changed``.  They stay readable (``info`` shows them, marked); ``merge`` carries
them forward but cannot tell whether an adapter is among them (a note says so); ``unmerge``
cannot match an adapter against them, so it refuses unless forced, and a forced unmerge drops
the newest old entry with the same path and kind.

The guard (:func:`check_merge`, :func:`plan_unmerge`) raises ``merge-record``; ``again=True``
(``merge --again``) and ``force=True`` (``unmerge --force``) go past it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..adapter import FORMAT_VERSION, Adapter
from ..dtypes import DTYPE_NAMES
from ..errors import ArgumentError, FormatError
from ..io.digest import combine, config_digest, tensor_entries
from ..io.safetensors_file import tensor_bytes

MERGED_KEY = "adapterkit.merged"
UNMERGED_KEY = "adapterkit.unmerged"


def adapter_digest(adapter: Adapter) -> str:
    """The adapter's content digest (§5.5) as adapterkit records it on saving: the config as
    ``adapter.config.to_dict()`` writes it, and every tensor (key, dtype, shape, bytes)."""
    entries = tensor_entries(
        (key, DTYPE_NAMES[t.dtype], tuple(t.shape), tensor_bytes(t)) for key, t in ((k, adapter.tensors[k]) for k in adapter.tensors)
    )
    return combine([config_digest(adapter.config.to_dict(), FORMAT_VERSION)] + [entries[k] for k in sorted(entries)])


@dataclass
class Entry:
    """One merged adapter as the record keeps it (``digest`` None: an old record's entry)."""

    adapter: str | None
    kind: str
    weight: float
    base_model: str | None = None
    digest: str | None = None
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    @property
    def legacy(self) -> bool:
        return self.digest is None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"adapter": self.adapter, "kind": self.kind, "weight": self.weight, "base_model": self.base_model}
        if not self.legacy:
            out.update(digest=self.digest, added=sorted(self.added), changed=sorted(self.changed))
        return out

    def label(self) -> str:
        return f"{self.kind} `{self.adapter}`" + (f" ({self.digest[:19]}...)" if self.digest else "")


def parse(text: str, path: Any = None) -> list[Entry]:
    """The entries of a record's JSON text.

    Raises:
        FormatError: ``checkpoint-invalid`` when the text is not a list of entries.
    """
    try:
        value = json.loads(text)
        entries = []
        for e in value:
            if not isinstance(e, dict) or not isinstance(e.get("kind"), str) or not isinstance(e.get("weight"), (int, float)):
                raise ValueError(f"entry {e!r} lacks kind or weight")
            entries.append(Entry(e.get("adapter"), e["kind"], float(e["weight"]), e.get("base_model"), e.get("digest"),
                                 list(e.get("added", [])), list(e.get("changed", []))))
        return entries
    except (ValueError, TypeError) as exc:
        raise FormatError(f"the merge record cannot be read: {exc}", code="checkpoint-invalid", path=path,
                          key=f"__metadata__.{MERGED_KEY}", expected="a JSON list of merged adapters") from None


def read(ckpt) -> list[Entry]:
    """The record a checkpoint holds (empty: none), the same in every shard.

    Raises:
        FormatError: ``checkpoint-invalid`` for an unreadable record or shards that disagree.
    """
    texts = {s: ckpt.metadata(s).get(MERGED_KEY) for s in ckpt.shards}
    distinct = set(texts.values())
    if len(distinct) > 1:
        first = ckpt.shards[0]
        other = next(s for s in ckpt.shards if texts[s] != texts[first])
        raise FormatError("the shards record different merges", code="checkpoint-invalid", path=other,
                          key=f"__metadata__.{MERGED_KEY}", expected=f"the record of {first.name}", actual="another record")
    text = distinct.pop() if distinct else None
    return [] if text is None else parse(text, ckpt.shards[0])


def dumps(entries: Iterable[Entry]) -> str:
    return json.dumps([e.to_json() for e in entries], sort_keys=True)


def _refuse(message: str, *, path: Any, key: str | None, expected: Any, actual: Any) -> ArgumentError:
    return ArgumentError(message, code="merge-record", path=path, key=key, expected=expected, actual=actual)


def check_merge(record: Sequence[Entry], digests: Sequence[str], adapters: Sequence[Adapter], *, again: bool, path: Any) -> list[str]:
    """Refuse merging an adapter the base already records (or one listed twice) unless ``again``;
    returns notes (old entries that cannot be checked).

    Raises:
        ArgumentError: ``merge-record``, naming the adapter and the earlier merge.
    """
    notes = []
    if not again:
        for i, (d, a) in enumerate(zip(digests, adapters)):
            earlier = next((e for e in reversed(record) if e.digest == d), None)
            if earlier is not None:
                raise _refuse(
                    f"adapter `{a.source}` is already merged into this checkpoint (recorded as `{earlier.adapter}`, weight "
                    f"{earlier.weight:g}); merging it again applies it twice: pass --again (again=True) if that is meant",
                    path=path, key=MERGED_KEY, expected="an adapter not yet merged", actual=d)
            if d in digests[:i]:
                raise _refuse(
                    f"adapter `{a.source}` is listed twice (same content as `{adapters[digests.index(d)].source}`); "
                    "pass --again (again=True) to apply it twice", path=a.source, key="adapters", expected="each adapter once", actual=d)
    legacy = [e for e in record if e.legacy]
    if legacy:
        notes.append(f"the base records {len(legacy)} merge(s) by an adapterkit that did not record digests "
                     f"({', '.join(e.label() for e in legacy)}): not checked for repeats")
    return notes


@dataclass
class UnmergePlan:
    """Which record entry each adapter takes out, the weights to use, and the record left."""

    order: list[int]  # adapter indices, in the order of the record (oldest first); unmerge applies them newest first
    weights: list[float]  # per adapter (as given to plan_unmerge)
    remaining: list[Entry]
    notes: list[str] = field(default_factory=list)


def plan_unmerge(record: Sequence[Entry], digests: Sequence[str], adapters: Sequence[Adapter], weights: Sequence[float] | None,
                 *, force: bool, path: Any) -> UnmergePlan:
    """Match each adapter to the newest record entry with its digest, take its weight from there
    (or check the given one against it), and check that every later merge that stays commutes
    with it on every key both changed.

    With ``force`` an adapter the record does not hold is taken out with its given weight (1 by
    default), a weight other than the recorded one is used as given, and the order is not checked.

    Raises:
        ArgumentError: ``merge-record`` for an adapter the record does not hold, other weights
            than merged, or a later merge that does not commute and stays merged.
    """
    n = len(adapters)
    taken: dict[int, int] = {}  # adapter index -> record index
    notes: list[str] = []
    used: set[int] = set()
    out_weights = [0.0] * n
    legacy = [j for j, e in enumerate(record) if e.legacy]
    for i, (d, a) in enumerate(zip(digests, adapters)):
        j = next((j for j in range(len(record) - 1, -1, -1) if j not in used and record[j].digest == d), None)
        if j is None:
            if not force:
                held = ", ".join(e.label() for e in record) or "nothing (the checkpoint records no merge)"
                why = f"; {len(legacy)} entries were written without digests and cannot be matched" if legacy else ""
                raise _refuse(f"adapter `{a.source}` is not merged into this checkpoint as far as its record says (it holds "
                              f"{held}{why}); --force (force=True) unmerges it anyway", path=path, key=MERGED_KEY,
                              expected="an adapter the merge record holds", actual=d)
            out_weights[i] = 1.0 if weights is None else float(weights[i])
            places = {str(a.source), str(a.source.parent)} if a.source is not None else set()  # the file, or its folder
            old = next((k for k in reversed(legacy) if k not in used and record[k].adapter in places and record[k].kind == a.peft_type), None)
            if old is not None:
                used.add(old)
                notes.append(f"forced: dropped the old record entry {record[old].label()} (no digest to check)")
            else:
                notes.append(f"forced: `{a.source}` is not in the merge record; unmerged with weight {out_weights[i]:g}")
            continue
        used.add(j)
        taken[i] = j
        recorded = record[j].weight
        if weights is None:
            out_weights[i] = recorded
        else:
            out_weights[i] = float(weights[i])
            if out_weights[i] != recorded and not force:
                raise _refuse(f"adapter `{a.source}` was merged with weight {recorded:g}, not {out_weights[i]:g}; leave --weight out to "
                              "use the recorded weight, or --force (force=True) to unmerge with another", path=path, key=MERGED_KEY,
                              expected=recorded, actual=out_weights[i])
    if not force:
        for j in taken.values():
            mine_added, mine_changed = set(record[j].added), set(record[j].changed)
            for k in range(j + 1, len(record)):
                if k in used:
                    continue  # taken out in this unmerge too, before this one
                later = record[k]
                if later.legacy:
                    clash = sorted(mine_added | mine_changed)[:1]
                else:
                    clash = sorted((mine_changed & (set(later.added) | set(later.changed))) | (mine_added & set(later.changed)))
                if clash:
                    raise _refuse(
                        f"{record[j].label()} cannot be taken out while {later.label()}, merged after it, stays merged: both "
                        f"changed `{clash[0]}` and the two merges do not commute there; unmerge {later.label()} too (in the "
                        "same command: the record orders them), or --force (force=True) for an inexact result",
                        path=path, key=clash[0], expected="later merges that commute with it, or unmerged with it", actual=later.label())
    order = sorted(range(n), key=lambda i: (taken.get(i, len(record)), i))
    remaining = [e for j, e in enumerate(record) if j not in used]
    return UnmergePlan(order, out_weights, remaining, notes)


def effects(adapter: Adapter, targets: Mapping[str, Mapping[str, str]], replacements: Iterable[str]) -> tuple[list[str], list[str]]:
    """(added, changed) checkpoint keys of one adapter's merge, from its module targets (module ->
    role -> checkpoint key) and the keys it replaces: a module whose kind defines a ΔW independent
    of the base and that has no DoRA magnitude adds to its keys; anything else (IA3 scaling,
    DoRA's norm, tensors stored whole) changes them otherwise."""
    added: set[str] = set()
    changed: set[str] = set(replacements)
    additive_kind = adapter.kind.delta_weight is not None
    for module, roles in targets.items():
        additive = additive_kind and "magnitude" not in getattr(adapter.module(module), "keys", {})
        (added if additive else changed).update(roles.values())
    added -= changed
    return sorted(added), sorted(changed)
