"""``python -m adapterkit``: the same command as ``adapterkit``."""

from .cli import main

main(prog_name="adapterkit")
