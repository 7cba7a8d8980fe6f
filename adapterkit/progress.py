"""Progress bars for long operations: tqdm on a terminal, silent otherwise."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], *, desc: str, total: int | None = None, min_items: int = 50) -> Iterator[T]:
    """Iterate ``items`` with a tqdm bar on stderr when it is a terminal and the job is long."""
    if not sys.stderr.isatty() or (total is not None and total < min_items):
        yield from items
        return
    from tqdm.auto import tqdm

    yield from tqdm(items, desc=desc, total=total, leave=False, file=sys.stderr)
