"""GET /metrics: Prometheus's text format, parsed with Prometheus's own parser, and its figures
move while the stream runs (frames, the shared encoder, viewers by kind, a switch's latency)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from server.app import SESSIONS, create_app
from server.engine import Engine
from test_engine import FakePipeline
from test_whep import WhepPlayer

DEADLINE_S = 20.0


async def scrape(http, url) -> dict[str, list]:
    async with http.get(url + "/metrics") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
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


def test_metrics_parse_and_move_while_streaming(tmp_path):
    async def main():
        engine = Engine(FakePipeline(size=(32, 16)), prompt="start", seed=3)
        app = create_app(engine, recordings=tmp_path)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        url = str(server.make_url("")).rstrip("/")
        try:
            async with aiohttp.ClientSession() as http:
                first = await scrape(http, url)
                assert value(first, "longlive_viewers", kind="whep") == 0
                player = await WhepPlayer(http, url + "/whep").play()
                async with http.post(url + "/api/command", json={"type": "record", "on": True}) as r:
                    assert r.status == 202
                async with http.post(url + "/api/prompt", json={"text": "a new prompt"}) as r:
                    assert r.status == 202
                deadline = time.monotonic() + DEADLINE_S
                while True:
                    later = await scrape(http, url)
                    if value(later, "longlive_switch_latency_seconds_count") >= 1 and player.frames >= 16:
                        break
                    assert time.monotonic() < deadline, "no switch counted"
                    await asyncio.sleep(0.1)
                assert value(later, "longlive_frames_generated") > value(first, "longlive_frames_generated")
                assert value(later, "longlive_blocks_generated") >= 2
                assert value(later, "longlive_viewers", kind="whep") == 1
                assert value(later, "longlive_viewers", kind="page") == 0
                assert value(later, "longlive_encoder_frames") >= 16
                assert value(later, "longlive_encoder_keyframes") >= 1
                assert value(later, "longlive_encoder_milliseconds_per_frame") > 0
                assert value(later, "longlive_block_milliseconds", part="dit") == 3.0     # the fake's timings
                assert value(later, "longlive_block_milliseconds", part="decode") == 1.0
                assert value(later, "longlive_recording") == 1
                assert value(later, "longlive_sink_dropped_blocks", sink="recorder") == 0
                assert value(later, "longlive_engine_status", status="running") == 1
                assert value(later, "longlive_enhancer_errors") == 0
                await player.close()
                async with http.post(url + "/api/command", json={"type": "record", "on": False}) as r:
                    assert r.status == 202
        finally:
            await app[SESSIONS].close_all()
            await server.close()
    asyncio.run(main())
