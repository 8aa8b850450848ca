from __future__ import annotations

import pytest

from golden import FixtureSet, TaehvSet, fixture_root, fixture_sets, taehv_sets


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Any test taking `fixture_set` runs once per LongLive golden set, any test taking
    `taehv_set` once per TAEHV golden set; the id is the set's folder name."""
    if "fixture_set" in metafunc.fixturenames:
        sets = fixture_sets()
        if not sets:
            raise pytest.UsageError(
                f"no golden fixture sets found (looked in {fixture_root() or '../shared/fixtures'}); "
                "set LONGLIVE_FIXTURES to a folder of fixture sets")
        metafunc.parametrize("fixture_set", [FixtureSet(p) for p in sets], ids=[p.name for p in sets], scope="module")
    if "taehv_set" in metafunc.fixturenames:
        sets = taehv_sets()
        if not sets:
            raise pytest.UsageError(
                f"no TAEHV golden fixture sets found (looked in {fixture_root() or '../shared/fixtures'} for "
                "folders holding taehv.json, taehv_decoder.safetensors and taehv_cases.safetensors); "
                "set LONGLIVE_FIXTURES to a folder of fixture sets")
        metafunc.parametrize("taehv_set", [TaehvSet(p) for p in sets], ids=[p.name for p in sets], scope="module")
