"""Checking a user-supplied torch device before any numeric work runs on it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import UnsupportedError

if TYPE_CHECKING:
    import torch


def _first_sentence(message: str) -> str:
    """torch's message, whole when it is one line; else its first sentence (never cut mid-word)."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    first = lines[0] if lines else "unknown error"
    if len(lines) > 1 or len(first) > 300:
        first = first.split(". ")[0].rstrip(".")
    return first


def resolve_device(device: Any) -> torch.device | None:
    """``device`` as a usable ``torch.device`` (None stays None: the tensors' own device).

    Raises:
        UnsupportedError: code ``device-unavailable`` for an unknown device string or one this
            torch build or machine cannot use (e.g. ``cuda`` without a GPU).
    """
    if device is None:
        return None
    import torch

    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError, TypeError, ValueError, NotImplementedError) as exc:
        raise UnsupportedError(
            f"device cannot be used here ({_first_sentence(str(exc))})", code="device-unavailable",
            key="device", expected="cpu, or an accelerator this torch build and machine have", actual=str(device),
        ) from None
    return dev
