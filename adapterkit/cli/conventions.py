"""What every ``adapterkit`` command shares: errors, exit codes, inputs and outputs, JSON, and
the small formatters and option types several commands use.

  * an error prints one line, ``adapterkit: error: <file>: <key>: <what> [code]``, and exits 2
    (``--debug`` prints the traceback first, and still exits 2): :func:`handles_errors` for the
    library's errors, :class:`Group` for click's usage errors (code ``usage``);
  * a check exits 0 when it passes and 1 when it fails; a problem of :data:`USAGE_CODES` alone
    (the input is not there, or not an adapter) is an error, not a failed check;
  * an input is a local path or a Hub repo id, kept as typed (:data:`INPUT`, :func:`_require`);
  * an output is guarded before torch is imported (:func:`_guard`); an output that exists is
    refused unless ``--overwrite``, which the library applies when it writes;
  * ``--json`` prints ``json.dumps(..., indent=2)`` of what the text form says;
  * ``--threads N`` on every command that computes (:func:`threads_option`) fixes the threads of
    its jobs; without it ``adapterkit.threads`` chooses them.

Nothing here imports torch: ``--help``, ``--version`` and usage errors never do.
"""

from __future__ import annotations

import sys
import traceback
from functools import wraps
from pathlib import Path
from typing import Any

import click

from ..errors import AdapterkitError

CONSUMERS = ("vllm", "tgi", "llama.cpp", "peft")  # adapterkit.ops.export.CONSUMERS (not imported: no torch for --help)
USAGE_CODES = {"file-not-found", "not-an-adapter", "ambiguous-adapter", "adapter-not-found"}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"adapterkit: error: {message}", err=True)
    sys.exit(code)


def _debug() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get("debug"))


def handles_errors(func):
    """Turn AdapterkitError (and bad local state such as OSError) into one line and exit 2."""

    @wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (AdapterkitError, OSError, MemoryError) as exc:
            if _debug():
                traceback.print_exc()
            _fail(str(exc) if isinstance(exc, AdapterkitError) else f"{type(exc).__name__}: {exc}")

    return wrapper


class Group(click.Group):
    """The command group; usage errors become one line with the ``usage`` code, exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # plain `adapterkit`: the help, not an error
            click.echo(exc.ctx.get_help() if exc.ctx else self.get_help(click.Context(self)))
            sys.exit(0)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else "adapterkit"
            _fail(f"{exc.format_message()} (see '{where} --help') [usage]")
        except click.ClickException as exc:
            _fail(f"{exc.format_message()} [usage]")
        except click.Abort:
            _fail("interrupted [interrupted]", 130)


# ----------------------------------------------------------------------------- inputs and outputs


def _require(text: str | Path) -> Path:
    """The input the user named, as a Path.  A missing local path is ``file-not-found`` before the
    library (and torch) is imported; a Hub repo id (``org/name[@revision]``, when no such local
    path exists and the text is not a path by its shape: ``./``, ``../``, ``/``, ``~``, or a first
    part that exists here) is fetched by the library (``adapterkit.hub.repo_id``).  Decided on the
    text as typed: ``Path`` would forget a leading ``./``."""
    from ..hub.repo_id import missing_path

    missing = missing_path(text)
    if missing is not None:
        raise missing
    return Path(text)


def _guard(out: Path, *inputs: tuple[str, Path | None]) -> None:
    """The output guard (``adapterkit.io.outputs``) on the paths as the user named them, with the
    argument names as roles, before torch is imported; the library checks again what it read."""
    from ..io.outputs import check_output

    check_output(out, inputs)


INPUT = click.Path()  # an input path or repo id, kept as typed (see _require)

def threads_option(func):
    """``--threads N`` (N >= 1; click refuses anything else as a usage error): every job of the
    command uses exactly N threads (``adapterkit.threads.for_command``, which also reads
    ``ADAPTERKIT_THREADS`` when the option is not given).  Goes below :func:`handles_errors`, so
    that a bad ``ADAPTERKIT_THREADS`` is one line; imports no torch."""

    @click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
                  help="Threads for the math (default: from each job's size, the cores this process may use and the "
                       "machine's load; ADAPTERKIT_THREADS=N sets it too, this option wins).")
    @wraps(func)
    def wrapper(*args, threads: int | None = None, **kwargs):
        from ..threads import for_command

        with for_command(threads):
            return func(*args, **kwargs)

    return wrapper


adapter_name_option = click.option(
    "--adapter-name", default=None, metavar="NAME", help="PEFT subfolder of a non-default adapter (e.g. multi/NAME).",
)


def _one_of(**given: Any) -> None:
    named = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None]
    if len(named) != 1:
        names = " | ".join(f"--{k.replace('_', '-')}" for k in given)
        raise click.UsageError(f"give exactly one of {names} (got {', '.join(named) or 'none'})", ctx=click.get_current_context())


# ----------------------------------------------------------------------------- printing


def _problem_json(p: Any) -> dict[str, Any]:
    return {
        "severity": p.severity, "code": p.code, "message": p.message, "path": p.path, "key": p.key,
        "expected": None if p.expected is None else str(p.expected),
        "actual": None if p.actual is None else str(p.actual),
    }


def print_json(value: Any) -> None:
    """What ``--json`` prints: one JSON document, indented by 2."""
    import json

    click.echo(json.dumps(value, indent=2))


def _span(values: list[int]) -> str:
    """``16``, or ``4-40 (mean 16.0)`` for differing ranks."""
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}-{hi} (mean {sum(values) / len(values):.1f})"


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 10**6 else f"{n / 1e3:.1f}k" if n >= 10**4 else str(n)
