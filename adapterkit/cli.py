"""The ``adapterkit`` command: a thin click layer over the library.

Errors print one line (``adapterkit: error: ...``) and exit 2; ``--debug`` shows
the traceback instead.  ``validate`` exits 0 when valid, 1 when invalid, 2 on a
usage error.
"""

from __future__ import annotations

import json
import sys
from functools import wraps
from pathlib import Path

import click

from . import __version__
from .errors import AdapterkitError
from .info import describe, render
from .io.reader import open_adapter
from .io.writer import FORMS, save
from .validate import validate as run_validate

USAGE_CODES = {"file-not-found", "not-an-adapter", "ambiguous-adapter"}


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"adapterkit: error: {message}", err=True)
    sys.exit(code)


def handles_errors(func):
    """Turn AdapterkitError (and bad local state such as OSError) into one line and exit 2."""

    @wraps(func)
    def wrapper(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return func(*args, **kwargs)
        except AdapterkitError as exc:
            if debug:
                raise
            _fail(str(exc))
        except (OSError, MemoryError) as exc:
            if debug:
                raise
            _fail(f"{type(exc).__name__}: {exc}")

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(__version__, prog_name="adapterkit")
def main(debug: bool) -> None:
    """Inspect, validate and convert parameter-efficient fine-tuning adapters."""


adapter_name_option = click.option("--adapter-name", default=None, help="PEFT subfolder of a non-default adapter.")


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@adapter_name_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--no-modules", is_flag=True, help="Skip per-module statistics (no tensor data is read).")
@click.option("--device", default=None, help="torch device for per-module statistics, e.g. cuda.")
@handles_errors
def info(path: Path, adapter_name: str | None, as_json: bool, no_modules: bool, device: str | None) -> None:
    """Summarise the adapter at PATH: kind, format, targets, ranks, sizes, per-module ‖ΔW‖."""
    adapter = open_adapter(path, adapter_name=adapter_name)
    summary = describe(adapter, device=device, per_module=not no_modules)
    click.echo(json.dumps(summary, indent=2) if as_json else render(summary))


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@adapter_name_option
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
@handles_errors
def validate(path: Path, adapter_name: str | None, as_json: bool) -> None:
    """Check every rule of the spec; report all problems. Exit 0 valid, 1 invalid, 2 usage error."""
    problems = run_validate(path, adapter_name=adapter_name)
    errors = [p for p in problems if p.severity == "error"]
    if len(errors) == 1 and errors[0].code in USAGE_CODES:
        _fail(str(errors[0].to_error()))
    if as_json:
        click.echo(json.dumps({
            "path": str(path),
            "valid": not errors,
            "problems": [
                {"severity": p.severity, "code": p.code, "message": p.message, "path": p.path, "key": p.key,
                 "expected": None if p.expected is None else str(p.expected),
                 "actual": None if p.actual is None else str(p.actual)}
                for p in problems
            ],
        }, indent=2))
    else:
        for p in problems:
            click.echo(str(p))
        click.echo(f"{path}: {'valid' if not errors else 'INVALID'} ({len(errors)} errors, {len(problems) - len(errors)} warnings)")
    sys.exit(1 if errors else 0)


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@adapter_name_option
@click.option("--form", type=click.Choice(FORMS), default="dir", show_default=True,
              help="dir: PEFT's directory layout; file: one .safetensors with the config inside.")
@handles_errors
def convert(src: Path, out: Path, adapter_name: str | None, form: str) -> None:
    """Rewrite the adapter at SRC to OUT (PEFT in -> PEFT-loadable out)."""
    adapter = open_adapter(src, adapter_name=adapter_name)
    written = save(adapter, out, form=form)
    click.echo(f"wrote {written} ({adapter.peft_type}, {len(adapter.tensors)} tensors, form={form})")


if __name__ == "__main__":
    main()
