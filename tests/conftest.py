"""Hypothesis profiles: "ci" (default; bounded and derandomized), "dev", and "slow" for long campaigns.

Select with HYPOTHESIS_PROFILE=slow pytest ...
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=40, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile("dev", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("slow", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped where torch sees no GPU (torch is imported only then)."""
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if not marked:
        return
    import pytest
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="no CUDA GPU here")
        for item in marked:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    """The PEFT matrix's summary (cases, checks, refusals by feature) when it ran."""
    import sys

    matrix = sys.modules.get("test_peft_matrix")
    text = matrix.summary() if matrix is not None else ""
    if text:
        terminalreporter.write_line(text)
