"""The ``adapterkit`` command: a thin click layer over the library.

One module per family of commands, each command parse -> call -> print over a library function:

  adapters.py     info, validate, convert, check
  checkpoints.py  merge, unmerge (and merge --push-to), extract
  surgery.py      combine, resize, rebalance, prune
  hub.py          push, pull
  inspect.py      diff, and info --plot's spectrum
  conventions.py  what they all share (see there): errors and exit codes, inputs and outputs, JSON

Conventions every command follows:
  * errors print one line, ``adapterkit: error: <file>: <key>: <what> [code]``, and exit 2
    (``--debug`` prints the traceback first, and still exits 2);
  * checks exit 0 when they pass and 1 when they fail;
  * an output that exists is refused unless ``--overwrite``, which replaces it whole;
    the form follows the name (``*.safetensors`` is one file, anything else a directory);
  * ``--help``, ``--version`` and usage errors never import torch (the library is
    imported inside the commands).
"""

from __future__ import annotations

import click

from .. import __version__
from . import adapters, checkpoints, hub, inspect, surgery
from .conventions import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Print the traceback of an error before its one-line message.")
@click.version_option(__version__, prog_name="adapterkit")
def main(debug: bool) -> None:
    """Inspect, validate, convert and merge parameter-efficient fine-tuning adapters
    (LoRA, LoHa, LoKr, IA3, prompt tuning, prefix tuning, P-tuning) in PEFT's layout or adapterkit's single file.

    \b
    Examples:
      adapterkit info my-lora
      adapterkit validate my-lora --json
      adapterkit convert my-lora my-lora.safetensors
      adapterkit merge base-model my-lora merged-model

    Exit status: 0 success, 1 a check failed, 2 error (one line: ... [code]).
    """


for _command in (
    adapters.info, adapters.validate, adapters.convert, adapters.check_command,
    checkpoints.merge, checkpoints.unmerge, checkpoints.extract,
    surgery.combine_command, surgery.resize, surgery.rebalance, surgery.prune,
    hub.push, hub.pull,
    inspect.diff_command,
):
    main.add_command(_command)
del _command

__all__ = ["main"]
