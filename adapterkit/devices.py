"""Checking a user-supplied torch device before any numeric work runs on it."""

from __future__ import annotations

from typing import Any

import torch

from .errors import UnsupportedError


def resolve_device(device: Any) -> torch.device | None:
    """``device`` as a usable ``torch.device`` (None stays None: the tensors' own device).

    Raises:
        UnsupportedError: code ``device-unavailable`` for an unknown device string or one this
            torch build or machine cannot use (e.g. ``cuda`` without a GPU).
    """
    if device is None:
        return None
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError, TypeError, ValueError) as exc:
        raise UnsupportedError(
            f"device cannot be used here ({str(exc).splitlines()[0][:120]})", code="device-unavailable",
            key="device", expected="cpu, or an accelerator this torch build and machine have", actual=str(device),
        ) from None
    return dev
