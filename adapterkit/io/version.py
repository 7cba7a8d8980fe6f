"""The ``adapterkit.version`` metadata key: syntax and the major version this library reads.

The version is checked right after ``__metadata__`` is known to map strings to
strings and before any other container rule (spec §5.2, rules 6 and 7), so a file
of a later major version is refused as ``version-unsupported`` even when it uses
a dtype or layout that version 1 does not know.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import FormatError, VersionError

VERSION_KEY = "adapterkit.version"
SUPPORTED_MAJOR = 1
_VERSION = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")
# The first minor version whose content digest hashes the config with the pattern objects in
# their stored order (spec §5.5 [R5.5-3]); earlier files (and files without a version) hash it
# with every object sorted, as version 1.1 defined it.
PATTERN_ORDER_MINOR = 2


def digest_keeps_pattern_order(version: str | None) -> bool:
    """Whether a file of format ``version`` (None: the PEFT profile) hashes its config's
    ``rank_pattern``/``alpha_pattern`` in stored order (1.2 and later minors of major 1) or
    sorted (1.0, 1.1, no version).  ``version`` has passed :func:`check_version`."""
    m = _VERSION.fullmatch(version or "")
    return m is not None and m[1] == str(SUPPORTED_MAJOR) and (len(m[2]) > 1 or int(m[2]) >= PATTERN_ORDER_MINOR)  # no int() of a 5000-digit minor


def check_version(metadata: dict[str, str], path: Path | None) -> str | None:
    """The ``adapterkit.version`` of ``metadata`` (None when absent: a PEFT-profile file).

    Raises:
        FormatError: not ``MAJOR.MINOR`` as the whole string (``metadata-invalid``).
        VersionError: a major version other than 1 (``version-unsupported``).
    """
    version = metadata.get(VERSION_KEY)
    if version is None:
        return None
    m = _VERSION.fullmatch(version)
    if not m:
        raise FormatError("format version must be MAJOR.MINOR", code="metadata-invalid", path=path, key=f"__metadata__.{VERSION_KEY}", expected="e.g. 1.0", actual=version)
    if m[1] != str(SUPPORTED_MAJOR):  # a string compare: int() of a 5000-digit major raises ValueError
        raise VersionError(
            "unsupported adapterkit format major version", path=path, key=f"__metadata__.{VERSION_KEY}",
            expected=f"{SUPPORTED_MAJOR}.x", actual=version,
        )
    return version
