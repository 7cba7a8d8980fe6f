"""The two forms an adapter is written in, and how an output's name selects one.

Kept free of torch so that the command line can check a name before importing the library.
"""

from __future__ import annotations

from pathlib import Path

FORMS = ("dir", "file")
FILE_SUFFIX = ".safetensors"


def infer_form(path: str | Path) -> str:
    """The form a name asks for: ``*.safetensors`` is one file, anything else a directory."""
    return "file" if Path(path).suffix == FILE_SUFFIX else "dir"
