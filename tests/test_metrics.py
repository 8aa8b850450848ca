"""GET /metrics: Prometheus's text format, parsed with Prometheus's own parser, and its figures
move while the stream runs (frames, the shared encoder, viewers by kind, a switch's latency);
and Prometheus's own checker, `promtool check metrics`, finds nothing to say about it (durations
in seconds, counters ending in `_total`, ...). promtool comes with Debian's `prometheus` package
(`make promtool`); missing, that test skips, or fails under `make test` (LONGLIVE_REQUIRE_PROMTOOL=1)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from server.app import SESSIONS, create_app
from server.engine import Engine
from test_engine import FakePipeline
from test_whep import WhepPlayer

DEADLINE_S = 60.0       # a deadline on any one wait, never a timing assertion


async def scrape_text(http, url) -> str:
    async with http.get(url + "/metrics") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        return await r.text()


def parse(text: str) -> dict[str, list]:
    families = {}
    for family in text_string_to_metric_families(text):        # raises on anything malformed
        families[family.name] = family.samples
    return families


def value(families, name: str, **labels) -> float:
    """A sample's value: `name` is a family (a counter's `_total` sample is its value) or a
    histogram's `_count` sample."""
    family = name[: -len("_count")] if name.endswith("_count") else name
    for sample in families[family]:
        if sample.name in (name, name + "_total") and all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    raise KeyError((name, labels))


@pytest.fixture(scope="module")
def streamed(tmp_path_factory) -> dict[str, str]:
    """/metrics' text before a viewer came ("idle"), and while one watches and a recording runs,
    after a prompt switch ("streaming": the switch-latency histogram has an observation)."""
    return asyncio.run(stream_and_scrape(tmp_path_factory.mktemp("recordings")))


async def stream_and_scrape(recordings: Path) -> dict[str, str]:
    engine = Engine(FakePipeline(size=(32, 16)), prompt="start", seed=3)
    app = create_app(engine, recordings=recordings)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    try:
        async with aiohttp.ClientSession() as http:
            first = await scrape_text(http, url)
            player = await WhepPlayer(http, url + "/whep").play()
            async with http.post(url + "/api/command", json={"type": "record", "on": True}) as r:
                assert r.status == 202
            async with http.post(url + "/api/prompt", json={"text": "a new prompt"}) as r:
                assert r.status == 202
            deadline = time.monotonic() + DEADLINE_S
            while True:
                later = await scrape_text(http, url)
                if value(parse(later), "longlive_switch_latency_seconds_count") >= 1 and player.frames >= 16:
                    break
                assert time.monotonic() < deadline, "no switch counted"
                await asyncio.sleep(0.1)
            await player.close()
            async with http.post(url + "/api/command", json={"type": "record", "on": False}) as r:
                assert r.status == 202
    finally:
        await app[SESSIONS].close_all()
        await server.close()
    return {"idle": first, "streaming": later}


@pytest.mark.integration
def test_metrics_parse_and_move_while_streaming(streamed):
    first, later = parse(streamed["idle"]), parse(streamed["streaming"])
    assert value(first, "longlive_viewers", kind="whep") == 0
    assert value(later, "longlive_frames_generated") > value(first, "longlive_frames_generated")
    assert value(later, "longlive_blocks_generated") >= 2
    assert value(later, "longlive_viewers", kind="whep") == 1
    assert value(later, "longlive_viewers", kind="page") == 0
    assert value(later, "longlive_encoder_frames") >= 16
    assert value(later, "longlive_encoder_keyframes") >= 1
    assert 0 < value(later, "longlive_encoder_frame_seconds") < 1             # seconds, not milliseconds
    assert value(later, "longlive_block_seconds", part="dit") == pytest.approx(0.003)   # the fake's 3 ms
    assert value(later, "longlive_block_seconds", part="decode") == pytest.approx(0.001)
    assert value(later, "longlive_recording") == 1
    assert value(later, "longlive_sink_dropped_blocks", sink="recorder") == 0
    assert value(later, "longlive_engine_status", status="running") == 1
    assert value(later, "longlive_enhancer_errors") == 0


@pytest.mark.integration
def test_promtool_check_metrics_finds_nothing(streamed):
    """Prometheus's own linter on the real output, idle and while streaming: exit 0 and not a line
    said (it exits 3 on a lint problem, such as a duration in milliseconds, 1 on a malformed text)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        message = "promtool is missing: `make promtool` (or apt-get install prometheus) installs it"
        if os.environ.get("LONGLIVE_REQUIRE_PROMTOOL"):  # `make test` installs it: missing there is a failure
            pytest.fail(message)
        pytest.skip(message)
    for when, text in streamed.items():
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                               timeout=60)
        said = (check.stdout + check.stderr).strip()
        assert check.returncode == 0 and not said, \
            f"promtool check metrics on the {when} /metrics exited {check.returncode}:\n{said}\n--- the text:\n{text}"
