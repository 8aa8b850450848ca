from __future__ import annotations

import pytest

from golden import FixtureSet, fixture_root, fixture_sets


def pytest_generate_tests(metafunc):
    """Any test taking `fixture_set` runs once per golden set; the id is the set's folder name."""
    if "fixture_set" in metafunc.fixturenames:
        sets = fixture_sets()
        if not sets:
            raise pytest.UsageError(
                f"no golden fixture sets found (looked in {fixture_root() or '../shared/fixtures'}); "
                "set LONGLIVE_FIXTURES to a folder of fixture sets")
        metafunc.parametrize("fixture_set", [FixtureSet(p) for p in sets], ids=[p.name for p in sets], scope="module")
