"""Golden tests parametrise over the cases found under the golden root. A kind that is absent
gets no test at all: pytest's placeholder for an empty parameter set (a skipped item) is
deselected here, so a skip can never hide a missing check. Only items of this package
(tests/golden/) are touched: pytest calls this hook with every collected item.

The terminal summary names every golden tensor accepted by the float64 rule (cases.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def in_golden_package(item: pytest.Item) -> bool:
    return HERE in Path(str(item.path)).resolve().parents


def is_empty_parameter_placeholder(item: pytest.Item) -> bool:
    reasons = [str(m.kwargs.get("reason", "")) for m in item.iter_markers("skip")]
    return any(r.startswith("got empty parameter set") for r in reasons)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        (drop if in_golden_package(item) and is_empty_parameter_placeholder(item) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    from .cases import FALLBACKS

    if FALLBACKS:
        terminalreporter.section("golden tensors accepted by the float64 rule (not within 1e-5)")
        for line in FALLBACKS:
            terminalreporter.write_line(line)
