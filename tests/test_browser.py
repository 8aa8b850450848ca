"""The browser client in headless Debian Chromium (playwright), against `longlive serve`."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest

from test_webrtc import REPO, start_server, stop_server

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
OUTPUT = REPO / "test-output" / "browser"

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server():
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing: `make browser` (or apt-get install chromium) installs it"
        if os.environ.get("LONGLIVE_REQUIRE_BROWSER"):   # `make test` installs it: missing there is a failure
            pytest.fail(message)
        pytest.skip(message)
    if not (REPO / "client" / "vendor" / "msgpack" / "index.mjs").exists():
        pytest.fail("client/vendor/msgpack is missing: run `make client`")
    proc, url = start_server("--prompt", "opening scene")
    yield url
    stop_server(proc)


def test_page_plays_video_and_switches_prompts(server, tmp_path):
    from playwright.async_api import async_playwright

    async def main() -> None:
        errors: list[str] = []
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 760})
                page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
                page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
                await page.goto(server + "/")

                # the page plays video
                await page.wait_for_function("document.getElementById('video').videoWidth > 0", timeout=30_000)
                size = await page.evaluate("(v => [v.videoWidth, v.videoHeight])(document.getElementById('video'))")
                assert size == [320, 192]
                frames = "document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames"
                n0, t0 = await page.evaluate(frames), time.monotonic()
                await asyncio.sleep(2)
                n1, t1 = await page.evaluate(frames), time.monotonic()
                assert n1 > n0
                print(f"\nthe page decoded {(n1 - n0) / (t1 - t0):.1f} fps")

                # the notice about the tiny default, and the state from hello
                assert await page.is_visible("#notice")
                assert "tiny embedded default" in await page.inner_text("#notice")
                await page.wait_for_function("document.getElementById('status').textContent === 'live'")

                # typing a prompt and Enter: it appears in the applied list once applied
                text = "a paper boat on a neon river"
                await page.fill("#prompt", text)
                await page.press("#prompt", "Enter")
                item = page.locator("#applied li:not(.pending)", has_text=text)
                await item.wait_for(timeout=15_000)
                meta = await item.locator(".meta").inner_text()
                assert "block" in meta and "ms" in meta
                await page.wait_for_function("document.getElementById('stat-latency').textContent !== '–'")

                # pause and resume reach the server and come back as state
                await page.click("#pause")
                await page.wait_for_function("document.getElementById('status').textContent === 'paused'")
                await page.click("#pause")
                await page.wait_for_function("document.getElementById('status').textContent === 'live'")
                assert await page.evaluate("document.getElementById('stat-viewers').textContent") == "1"

                await asyncio.sleep(2.5)   # frames under the new prompt, and a full second of stats after the pause
                OUTPUT.mkdir(parents=True, exist_ok=True)
                shot = tmp_path / "page.png"
                await page.screenshot(path=str(shot))
                assert shot.stat().st_size > 10_000
                shutil.copy(shot, OUTPUT / "page.png")
            finally:
                await browser.close()
        assert not errors, errors

    asyncio.run(main())
