"""The two forms an adapter is written in, and how an output's name selects one.

Kept free of torch so that the command line can check a name before importing the library.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import WriteError

FORMS = ("dir", "file")
FILE_SUFFIX = ".safetensors"


def infer_form(path: str | Path) -> str:
    """The form a name asks for: ``*.safetensors`` is one file, anything else a directory."""
    return "file" if Path(path).suffix == FILE_SUFFIX else "dir"


def resolve_form(path: Path, form: str | None) -> str:
    """The form to write ``path`` in: ``form``, or the one its name asks for.

    Raises:
        WriteError: ``write-failed`` for an unknown form, ``form-mismatch`` when ``form``
            contradicts the name.
    """
    if form is None:
        return infer_form(path)
    if form not in FORMS:
        raise WriteError("unknown form", code="write-failed", path=path, expected=" | ".join(FORMS), actual=form)
    if form != infer_form(path):
        want = "a name ending in .safetensors" if form == "file" else "a name not ending in .safetensors"
        raise WriteError(f"the {form} form needs {want}", code="form-mismatch", path=path, expected=want, actual=path.name)
    return form
