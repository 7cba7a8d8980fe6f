"""``python -m adapterkit.cli``: the same command as ``adapterkit``."""

from . import main

main()
