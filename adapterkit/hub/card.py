"""Model cards (``README.md``) for what adapterkit publishes: YAML front matter the Hub reads
(``library_name``, ``base_model``, ``base_model_relation``, tags) and a body saying what the
repo holds, from the adapter itself (kind, targets, ranks, parameters) or the merge record.

An adapter that adapterkit made carries its recipe (``adapterkit.recipe``, spec §5.6): the card
lists its steps under "How it was made"; without one the card says the recipe is not recorded.
A merged checkpoint's card lists the adapters and weights merged (the same record the shards'
``adapterkit.merged`` metadata carries).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..adapter import Adapter


def _yaml_str(text: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is a subset of YAML's)."""
    return json.dumps(text, ensure_ascii=False)


def front_matter(*, base_model: str | None, relation: str, tags: list[str]) -> str:
    """``---`` YAML ``---`` with library_name peft, base_model (when known), base_model_relation, tags."""
    lines = ["---", "library_name: peft"]
    if base_model:
        lines.append(f"base_model: {_yaml_str(base_model)}")
        tags = [*tags, f"base_model:{relation}:{base_model}"]
    lines.append(f"base_model_relation: {relation}")
    lines.append("tags:")
    lines += [f"- {_yaml_str(t)}" for t in dict.fromkeys(tags)]
    lines.append("---")
    return "\n".join(lines) + "\n"


def _ranks(adapter: Adapter) -> str:
    ranks = Counter(int(m.rank) for m in adapter.modules.values() if getattr(m, "rank", None) is not None)
    if not ranks:
        return "-"
    return ", ".join(f"{r} ({n} module{'s' if n != 1 else ''})" for r, n in sorted(ranks.items()))


def _targets(config: dict[str, Any]) -> str:
    targets = config.get("target_modules")
    if targets is None:
        return "-"
    return f"`{targets}` (regex)" if isinstance(targets, str) else ", ".join(f"`{t}`" for t in sorted(targets))


def _how_made(adapter: Adapter) -> list[str]:
    """The "How it was made" section: the recipe's steps, oldest first, or that none is recorded."""
    if not adapter.recipe:
        return ["How it was made: not recorded (the adapter's files carry no adapterkit.recipe).", ""]
    from ..io.recipe import lines

    return ["## How it was made", "", *lines(adapter.recipe), ""]


def adapter_card(adapter: Adapter, repo_id: str) -> str:
    """The card of an adapter pushed to ``repo_id``: front matter, then kind, base model,
    targets, ranks, parameter count and format, all read from ``adapter``."""
    config = adapter.config.to_dict()
    kind = adapter.peft_type
    base = config.get("base_model_name_or_path") or None
    features = [str(v) for v in adapter.config.features().get("variants", [])]  # DoRA, rsLoRA, ...
    tags = [kind.lower(), *[str(f).lower() for f in features], "adapterkit"]
    body = [
        f"# {repo_id.split('/')[-1]}",
        "",
        f"A {kind} adapter" + (f" for [`{base}`](https://huggingface.co/{base})" if base else " (base model not recorded)")
        + ", published with adapterkit. Load it with PEFT:",
        "",
        "```python",
        "from peft import PeftModel",
        f"model = PeftModel.from_pretrained(base_model, {_yaml_str(repo_id)})",
        "```",
        "",
        "| | |",
        "|---|---|",
        f"| kind | {kind}" + (f" ({', '.join(features)})" if features else "") + " |",
        f"| base model | {f'`{base}`' if base else '(not recorded)'} |",
        f"| target modules | {_targets(config)} |",
        f"| modules | {len(adapter.modules)} |",
        f"| ranks | {_ranks(adapter)} |",
        f"| parameters | {adapter.parameter_count():,} |",
        f"| format | {f'adapterkit {adapter.format_version}' if adapter.format_version else 'PEFT'} |",
        "",
        *_how_made(adapter),
    ]
    return front_matter(base_model=base, relation="adapter", tags=tags) + "\n" + "\n".join(body)


def merged_card(base_model: str | None, record: list[dict[str, Any]], repo_id: str, readme: str = "") -> str:
    """The card of a merged checkpoint: front matter with ``base_model_relation: merge``, the
    merged adapters with their weights, then the README.md the merge wrote (if any)."""
    kinds = sorted({str(r["kind"]).lower() for r in record})
    lines = [f"# {repo_id.split('/')[-1]}", "",
             f"The model checkpoint {f'`{base_model}`' if base_model else '(base not recorded)'} with adapters merged "
             "into its weights by adapterkit:", ""]
    lines += [f"- {r['kind']} adapter `{r['adapter']}`, weight {float(r['weight']):g}" for r in record]
    text = front_matter(base_model=base_model, relation="merge", tags=[*kinds, "adapterkit", "merge"]) + "\n" + "\n".join(lines) + "\n"
    rest = _strip_front_matter(readme).strip()
    return text + ("\n" + rest + "\n" if rest else "")


def _strip_front_matter(text: str) -> str:
    if text.startswith("---\n"):
        end = text.find("\n---\n", 4)
        if end != -1:
            return text[end + 5:]
    return text
