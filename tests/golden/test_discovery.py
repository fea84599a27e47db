from tests.golden.cases import GOLDEN_ROOT, all_cases


def test_golden_root_has_cases():
    cases = all_cases()
    assert cases, f"no golden case (folder with meta.json) found under {GOLDEN_ROOT}"
