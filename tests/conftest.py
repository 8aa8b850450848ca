from __future__ import annotations

import os
import subprocess
from typing import Any

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


# -- the fast tier (`make check`) -----------------------------------------------------------------------
# Tests that run a real server, a browser or the soak carry `@pytest.mark.integration` (or `browser`),
# and `make check` leaves them out. With LONGLIVE_FAST_TIER=1 (what `make check` sets) a test of the
# fast tier that starts an HTTP server anyway fails with a sentence saying to mark it.
def _no_server(*args: object, **kwargs: object) -> None:
    raise AssertionError("this test starts an HTTP server: mark it @pytest.mark.integration "
                         "(`make check` leaves such tests out; `make test` runs them)")


@pytest.fixture(autouse=True)
def _fast_tier_has_no_servers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.environ.get("LONGLIVE_FAST_TIER") != "1" or request.node.get_closest_marker("integration") \
            or request.node.get_closest_marker("browser"):
        return
    from aiohttp import test_utils, web
    monkeypatch.setattr(test_utils.BaseTestServer, "start_server", _no_server)
    monkeypatch.setattr(web.TCPSite, "start", _no_server)
    popen = subprocess.Popen

    class NoServe(popen):       # `longlive serve` as a program is a server too
        def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
            words = [str(a) for a in (args if isinstance(args, (list, tuple)) else [args])]
            if any(w == "serve" and words[i - 1].rsplit("/", 1)[-1] == "longlive" for i, w in enumerate(words) if i):
                _no_server()          # `python -m longlive serve`, `.venv/bin/longlive serve`
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", NoServe)
