"""Progress bars for long operations: tqdm on a terminal, silent otherwise."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], *, desc: str, total: int | None = None, min_items: int = 50) -> Iterator[T]:
    """Iterate ``items`` with a tqdm bar on stderr when it is a terminal and the job is long."""
    if not sys.stderr.isatty() or (total is not None and total < min_items):
        yield from items
        return
    from tqdm.auto import tqdm

    yield from tqdm(items, desc=desc, total=total, leave=False, file=sys.stderr)


@contextmanager
def progress_bytes(total: int, *, desc: str, items: int, min_items: int = 50,
                   min_bytes: int = 256 << 20) -> Iterator[Callable[[int, int], None]]:
    """A bar in bytes, with items done in its postfix, on stderr when it is a terminal and the
    job is long (``min_items`` items or ``min_bytes`` bytes).  Yields ``advance(nbytes, items)``,
    which any thread may call."""
    if not sys.stderr.isatty() or (items < min_items and total < min_bytes):
        yield lambda nbytes, done: None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False, file=sys.stderr)
    lock = threading.Lock()
    count = 0

    def advance(nbytes: int, done: int) -> None:
        nonlocal count
        with lock:
            count += done
            if done:
                bar.set_postfix_str(f"{count}/{items} tensors", refresh=False)
            bar.update(nbytes)

    try:
        yield advance
    finally:
        bar.close()
