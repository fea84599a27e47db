"""The golden root holds cases, every case is claimed by a test module, the float64 rule, and the
deselect hook's scope."""

from __future__ import annotations

import pytest
import torch

from tests.golden import cases as golden_cases
from tests.golden.cases import GOLDEN_ROOT, all_cases


def test_golden_root_has_cases():
    cases = all_cases()
    assert cases, f"no golden case (folder with meta.json) found under {GOLDEN_ROOT}"


def claimed_kinds() -> set[str]:
    """Kinds the golden test modules parametrise over (their case lists)."""
    from tests.golden import test_codecs, test_lora, test_s2a, test_stage1

    lists = [test_stage1.CASES, test_s2a.CASES, test_lora.CASES, test_codecs.SEMANTIC, test_codecs.ACOUSTIC]
    return {c.kind for cases in lists for c in cases}


def test_every_case_is_claimed_by_a_test():
    """A new, unknown or renamed kind (e.g. `s2a_full_v2`) is claimed by no module: fail."""
    unclaimed = sorted({c.kind for c in all_cases()} - claimed_kinds())
    assert not unclaimed, f"golden cases no test checks: {unclaimed}"


def test_a_renamed_case_is_unclaimed(tmp_path, monkeypatch):
    """The claim check itself: a case folder under a kind no module knows is reported."""
    (tmp_path / "s2a_full_v2").mkdir()
    (tmp_path / "s2a_full_v2" / "meta.json").write_text("{}")
    kinds = {c.kind for c in all_cases(tmp_path)}
    assert kinds == {"s2a_full_v2"} and kinds - claimed_kinds() == {"s2a_full_v2"}


# ----------------------------------------------------------------------------- the float64 rule


def _exact() -> torch.Tensor:
    return torch.tensor([1.0, -2.0, 4.0], dtype=torch.float64)


BOUND = golden_cases.fp32_error_bound(_exact())  # FP32_BOUND_ULPS * u * max|y|, max|y| = 4


def test_bound_is_the_stated_one():
    assert BOUND == pytest.approx(golden_cases.FP32_BOUND_ULPS * 2.0**-24 * 4.0)
    assert BOUND > golden_cases.FLOAT_ATOL  # else the rule could never accept anything


def test_within_tolerance_needs_no_float64_evaluation():
    before = len(golden_cases.FALLBACKS)

    def boom():
        raise AssertionError("the float64 evaluation must not run within 1e-5")

    golden_cases.assert_golden_close(_exact().float(), _exact().float() + 5e-6, boom, "x")
    assert len(golden_cases.FALLBACKS) == before


def test_fallback_accepts_both_within_the_bound_and_names_the_case():
    ours = (_exact() + 0.45 * BOUND).float()
    golden = (_exact() - 0.45 * BOUND).float()
    assert (ours.double() - golden.double()).abs().max() > golden_cases.FLOAT_ATOL
    with pytest.warns(golden_cases.GoldenRoundingWarning, match="case-a"):
        golden_cases.assert_golden_close(ours, golden, _exact, "case-a")
    assert "case-a" in golden_cases.FALLBACKS[-1]
    golden_cases.FALLBACKS.pop()  # a synthetic case: keep it out of the terminal summary


@pytest.mark.parametrize("who", ["golden", "ours"])
def test_fallback_rejects_either_side_outside_the_bound(who):
    inside = _exact().float()
    outside = (_exact() + 1.5 * BOUND).float()
    ours, golden = (outside, inside) if who == "ours" else (inside, outside)
    with pytest.raises(AssertionError, match="float32 bound"):
        golden_cases.assert_golden_close(ours, golden, _exact, "case-b")


def test_fallback_requires_a_true_float64_evaluation():
    with pytest.raises(AssertionError, match="float64 evaluation returned"):
        golden_cases.assert_golden_close(
            _exact().float(), _exact().float() + 1e-3, lambda: _exact().float(), "c"
        )


# ----------------------------------------------------------------------------- the deselect hook


def test_deselect_hook_touches_the_golden_package_only():
    """An empty parameter set outside tests/golden/ stays a visible skip (not deselected)."""
    from types import SimpleNamespace

    from tests.golden import conftest as hook

    class Item:
        def __init__(self, path, empty):
            self.path, self.empty = path, empty

        def iter_markers(self, name):
            return [pytest.mark.skip(reason="got empty parameter set ['x']").mark] if self.empty else []

    golden_empty = Item(hook.HERE / "test_stage1.py", True)
    golden_full = Item(hook.HERE / "test_stage1.py", False)
    text_empty = Item(hook.HERE.parent / "text" / "test_g2p_golden.py", True)  # "golden" in its name
    items = [golden_empty, golden_full, text_empty]
    deselected = []
    config = SimpleNamespace(hook=SimpleNamespace(pytest_deselected=lambda items: deselected.extend(items)))
    hook.pytest_collection_modifyitems(config, items)
    assert items == [golden_full, text_empty] and deselected == [golden_empty]
