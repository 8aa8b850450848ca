"""The browser client in headless Debian Chromium (playwright), against `longlive serve`.

Traffic stays on 127.0.0.0/8: the server listens on 127.0.0.1 and so offers only 127.0.0.1
candidates and ignores the page's candidates on other addresses; Chromium reaches it from
its any-address sockets, so both ends of the media are 127.0.0.1 (checked in the page's own
`getStats`). mDNS host-candidate names are off (`WebRtcHideLocalIpsWithMdns`), so Chromium
runs no mDNS responder, which would announce its names by multicast on the LAN.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

from test_webrtc import REPO, start_server, stop_server

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-features=WebRtcHideLocalIpsWithMdns"]
OUTPUT = REPO / "test-output" / "browser"

# keeps the page's peer connections where the test can ask them for their stats (the page does not export them)
KEEP_PEER_CONNECTIONS = """
(() => {
  const Native = window.RTCPeerConnection;
  window.__pcs = [];
  window.RTCPeerConnection = function (...args) { const pc = new Native(...args); window.__pcs.push(pc); return pc; };
  window.RTCPeerConnection.prototype = Native.prototype;
})();
"""

# the nominated candidate pair of the page's newest peer connection: [local address, remote address]
SELECTED_PAIR = """async () => {
  const stats = await window.__pcs.at(-1).getStats();
  const byId = new Map([...stats.values()].map((s) => [s.id, s]));
  const transport = [...stats.values()].find((s) => s.type === "transport" && s.selectedCandidatePairId);
  const pair = transport ? byId.get(transport.selectedCandidatePairId)
    : [...stats.values()].find((s) => s.type === "candidate-pair" && s.nominated && s.state === "succeeded");
  return pair ? [byId.get(pair.localCandidateId).address, byId.get(pair.remoteCandidateId).address] : null;
}"""


async def selected_pair(page, timeout_s: float = 10.0):
    """The addresses of the ICE pair the page's connection uses, once its stats name one (they can lag the
    first decoded frame by a moment)."""
    deadline = time.monotonic() + timeout_s
    while (pair := await page.evaluate(SELECTED_PAIR)) is None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return pair

STATUS = "document.getElementById('status').textContent"


async def launch(p):
    return await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)


@contextlib.asynccontextmanager
async def chromium(expected: tuple[str, ...] = ()):
    """Headless Chromium: yields (browser, errors); once it is closed, the page errors and console
    errors collected must be none (other than those containing one of the `expected` texts)."""
    from playwright.async_api import async_playwright

    errors: list[str] = []
    async with async_playwright() as p:
        browser = await launch(p)
        try:
            yield browser, errors
        finally:
            await browser.close()
    unexpected = [e for e in errors if not any(x in e for x in expected)]
    assert not unexpected, unexpected


async def open_page(browser, url: str, errors: list[str], path: str = "/"):
    page = await browser.new_page(viewport={"width": 1280, "height": 760})
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    await page.add_init_script(KEEP_PEER_CONNECTIONS)
    await page.goto(url + path)
    return page

pytestmark = pytest.mark.browser


def require_browser() -> None:
    """Chromium and the page's vendored msgpack must be there (`make test` installs both)."""
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing: `make browser` (or apt-get install chromium) installs it"
        if os.environ.get("LONGLIVE_REQUIRE_BROWSER"):   # `make test` installs it: missing there is a failure
            pytest.fail(message)
        pytest.skip(message)
    if not (REPO / "client" / "vendor" / "msgpack" / "index.mjs").exists():
        pytest.fail("client/vendor/msgpack is missing: run `make client`")


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> Path:
    """The folder the page's Record button writes to (the server's --recordings)."""
    return tmp_path_factory.mktemp("recordings")


@pytest.fixture(scope="module")
def server(recordings):
    require_browser()
    proc, url = start_server("--prompt", "opening scene", "--recordings", str(recordings))
    yield url
    stop_server(proc)


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        assert r.status == 200, (url, r.status)
        return r.read()


def controllers(url: str) -> int:
    return json.loads(fetch(url + "/api/state"))["controllers"]


async def wait_for_controllers(url: str, n: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (now := await asyncio.to_thread(controllers, url)) != n:
        assert time.monotonic() < deadline, f"{now} control clients are still connected, not {n}"
        await asyncio.sleep(0.2)


def timeline_file(name: str, obj: object) -> dict:
    """A file for the page's timeline picker (page.set_input_files)."""
    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return {"name": name, "mimeType": "application/json", "buffer": data}


def test_page_plays_video_and_switches_prompts(server, tmp_path):

    async def main() -> None:
        async with chromium() as (browser, errors):
            page = await open_page(browser, server, errors)

            # the page plays video, over 127.0.0.1 at both ends
            await page.wait_for_function("document.getElementById('video').videoWidth > 0", timeout=30_000)
            size = await page.evaluate("(v => [v.videoWidth, v.videoHeight])(document.getElementById('video'))")
            assert size == [320, 192]
            assert await selected_pair(page) == ["127.0.0.1", "127.0.0.1"]
            frames = "document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames"
            n0, t0 = await page.evaluate(frames), time.monotonic()
            await page.wait_for_function(f"{frames} > {n0}", timeout=20_000)

            # the notice about the tiny default, and the state from hello
            assert await page.is_visible("#notice")
            assert "tiny embedded default" in await page.inner_text("#notice")
            await page.wait_for_function(f"{STATUS} === 'live'")

            # generated and delivered fps, from the server's stats
            await page.wait_for_function("!isNaN(parseFloat(document.getElementById('stat-generated').textContent))"
                                         " && !isNaN(parseFloat(document.getElementById('stat-delivered')"
                                         ".textContent))", timeout=20_000)

            # typing a prompt and Enter: it appears in the applied list once applied
            text = "a paper boat on a neon river"
            await page.fill("#prompt", text)
            await page.press("#prompt", "Enter")
            item = page.locator("#applied li.applied", has_text=text)
            await item.wait_for(timeout=30_000)
            meta = await item.locator(".meta").inner_text()
            assert "block" in meta and "ms" in meta
            await page.wait_for_function("document.getElementById('stat-latency').textContent !== '–'")

            # pause and resume reach the server and come back as state
            await page.click("#pause")
            await page.wait_for_function(f"{STATUS} === 'paused'")
            await page.click("#pause")
            await page.wait_for_function(f"{STATUS} === 'live'")
            assert await page.evaluate("document.getElementById('stat-viewers').textContent") == "1"

            n1, t1 = await page.evaluate(frames), time.monotonic()
            print(f"\nthe page decoded {(n1 - n0) / (t1 - t0):.1f} fps over {t1 - t0:.1f} s; stats: "
                  f"{(await page.inner_text('#stats')).replace(chr(10), ' ')}")
            await asyncio.sleep(1.5)   # frames under the new prompt, and a second of stats after the pause
            OUTPUT.mkdir(parents=True, exist_ok=True)
            shot = tmp_path / "page.png"
            await page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
            shutil.copy(shot, OUTPUT / "page.png")

    asyncio.run(main())


def test_page_says_what_became_of_every_prompt(server):
    """Empty, too long, refused by the server, superseded: each one is visible in the page."""

    async def main() -> None:
        async with chromium() as (browser, errors):
            page = await open_page(browser, server, errors)
            await page.wait_for_function(f"{STATUS} === 'live'", timeout=30_000)
            await page.wait_for_function("!document.getElementById('send').disabled")
            listed = "document.querySelectorAll('#applied li').length"
            limit = (await page.evaluate("fetch('/api/state').then(r => r.json())"))["limits"]["prompt_chars"]

            # an empty prompt: a visible message, nothing sent
            before = await page.evaluate(listed)
            await page.fill("#prompt", "   ")
            await page.press("#prompt", "Enter")
            await page.wait_for_selector("#error:not([hidden])", timeout=2_000)
            assert "empty" in await page.inner_text("#error")
            assert await page.evaluate(listed) == before

            # 20,000 characters pasted: kept whole (not cut to the limit), flagged, refused before sending
            long_text = ("a slow pan across a flooded cathedral " * 600)[:20_000]
            await page.fill("#prompt", long_text)
            assert await page.evaluate("document.getElementById('prompt').value.length") == 20_000
            hint = await page.inner_text("#prompt-hint")
            assert "20,000" in hint and f"{limit:,}" in hint and "too long" in hint, hint
            await page.press("#prompt", "Enter")
            await page.wait_for_function("document.getElementById('error').textContent.includes('20,000')",
                                         timeout=2_000)
            assert await page.is_visible("#error")
            assert await page.evaluate(listed) == before

            # a prompt the page lets through and the server refuses: its entry turns into the error.
            # (JavaScript's trim() keeps U+001F, Python's strip() removes it, so to the server it is empty.)
            await page.fill("#prompt", "\x1f")
            await page.press("#prompt", "Enter")
            rejected = page.locator("#applied li.rejected")
            await rejected.wait_for(timeout=15_000)
            assert "empty" in await rejected.locator(".meta").inner_text()
            assert await page.locator("#applied li.pending").count() == 0

            # a burst of prompts within one block: the last is applied, the ones it replaced say so
            burst = [f"burst prompt {i}" for i in range(5)]
            await page.evaluate("""(texts) => {
                const box = document.getElementById('prompt'), form = document.getElementById('prompt-form');
                for (const t of texts) { box.value = t; form.requestSubmit(); }
            }""", burst)
            await page.locator("#applied li.applied", has_text=burst[-1]).wait_for(timeout=30_000)
            await page.wait_for_function("document.querySelectorAll('#applied li.pending').length === 0",
                                         timeout=30_000)
            superseded = await page.locator("#applied li.superseded .text").all_inner_texts()
            applied = await page.locator("#applied li.applied .text").all_inner_texts()
            assert superseded, await page.inner_text("#applied")
            assert set(superseded) <= set(burst[:-1])
            assert all(t in superseded or t in applied for t in burst), await page.inner_text("#applied")
            meta = await page.locator("#applied li.superseded .meta").first.inner_text()
            assert "superseded" in meta

    asyncio.run(main())


def test_page_records_plays_a_timeline_and_rewinds(server, recordings, tmp_path):
    """Record on, switch, Record off: the video and its timeline download from the page's links;
    a timeline file from the picker plays (the server switches at its times); a segment's ↺ rewinds."""
    import av

    switched = "a lantern drifting over dunes"
    first, second = "timeline: a red kite over a harbour", "timeline: a blue whale under ice"
    timeline = {"version": "2.0", "prompts": [
        {"startTime": 0, "endTime": 3, "prompts": [{"text": first, "weight": 100}]},
        {"startTime": 3, "endTime": 600, "prompts": [{"text": second, "weight": 100}]}]}
    error = "document.getElementById('error').textContent"
    now = "document.getElementById('now').textContent"

    async def main() -> tuple[str, str]:
        async with chromium() as (browser, errors):
            page = await open_page(browser, server, errors)
            await page.wait_for_function(f"{STATUS} === 'live'", timeout=30_000)
            await page.wait_for_function("!document.getElementById('record').disabled")

            # -- Record on: the button says so and the indicator counts seconds of video
            assert await page.inner_text("#record") == "Record"
            assert await page.get_attribute("#record", "aria-pressed") == "false"
            assert await page.is_hidden("#rec-indicator")
            await page.click("#record")
            await page.wait_for_selector("#rec-indicator", state="visible", timeout=10_000)
            await page.wait_for_function("document.getElementById('record').textContent === 'Stop recording'")
            assert await page.get_attribute("#record", "aria-pressed") == "true"
            await page.wait_for_function("(t => /^\\d\\d:\\d\\d$/.test(t) && t !== '00:00')"
                                         "(document.getElementById('rec-time').textContent)", timeout=15_000)
            OUTPUT.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(OUTPUT / "recording.png"))

            # -- a prompt switched while recording
            await page.fill("#prompt", switched)
            await page.press("#prompt", "Enter")
            await page.locator("#applied li.applied", has_text=switched).wait_for(timeout=30_000)
            await asyncio.sleep(1.0)           # another block or so under it

            # -- Record off: links to the video and its timeline
            await page.click("#record")
            await page.wait_for_selector("#recording-link", state="visible", timeout=30_000)
            assert await page.is_hidden("#rec-indicator")
            assert await page.inner_text("#record") == "Record"
            assert await page.get_attribute("#record", "aria-pressed") == "false"
            video_href = await page.get_attribute("#recording-link", "href")
            video_name = await page.inner_text("#recording-link")
            sidecar_href = await page.get_attribute("#recording-timeline", "href")
            assert video_href.endswith("/" + video_name) and video_name.endswith(".mp4"), (video_href, video_name)
            assert sidecar_href.endswith(".timeline.json"), sidecar_href

            # -- timeline files the page refuses itself, with a sentence in #error, nothing sent
            await page.set_input_files("#timeline-file", files=[timeline_file("bad.json", b"{not json")])
            await page.wait_for_function(f"{error}.includes('bad.json is not valid JSON')", timeout=5_000)
            assert await page.is_visible("#error") and await page.is_hidden("#timeline-stop")
            limit = (await page.evaluate("fetch('/api/state').then(r => r.json())"))["limits"]["message_bytes"]
            big = json.dumps({**timeline, "padding": "x" * limit}).encode()
            await page.set_input_files("#timeline-file", files=[timeline_file("big.json", big)])
            await page.wait_for_function(f"{error}.includes('big.json is') && {error}.includes('not sent')",
                                         timeout=5_000)
            # ... and one the server refuses: its message names the field
            await page.set_input_files("#timeline-file", files=[timeline_file("empty.json", {"prompts": []})])
            await page.wait_for_function(f"{error}.includes('empty.json was refused') && "
                                         f"{error}.includes('prompts must list at least one segment')",
                                         timeout=10_000)
            assert (await page.evaluate("fetch('/api/state').then(r => r.json())"))["timeline"] is None

            # -- a timeline from the picker: it plays, and the server switches to its second prompt
            await page.set_input_files("#timeline-file", files=[timeline_file("t.json", timeline)])
            await page.wait_for_selector("#timeline-stop", state="visible", timeout=15_000)
            assert "t.json" in await page.inner_text("#timeline-state")
            await page.locator("#segments li", has_text=first).wait_for(timeout=30_000)
            await page.locator("#segments li", has_text=second).wait_for(timeout=30_000)
            await page.wait_for_function(f"{now} === {json.dumps(second)}", timeout=10_000)

            # -- ↺ on the timeline's first segment: the stream goes back to it, the timeline stops
            button = page.locator("#segments li", has_text=first).locator("button")
            assert await button.get_attribute("title") == "rewind to this segment"
            await button.click()
            await page.wait_for_function(f"{now} === {json.dumps(first)}", timeout=15_000)
            await page.wait_for_selector("#timeline-stop", state="hidden", timeout=10_000)
            await page.locator("#info p", has_text="timeline stopped").wait_for(timeout=10_000)   # a notice
            assert await page.inner_text("#status") == "live"
            await page.screenshot(path=str(OUTPUT / "record-timeline-rewind.png"))
        return video_href, sidecar_href

    video_href, sidecar_href = asyncio.run(main())

    # the video the link points at: in the server's recordings folder, decodes, the stream's size
    data = fetch(server + video_href)
    assert data == (recordings / video_href.rsplit("/", 1)[1]).read_bytes()
    path = tmp_path / "recording.mp4"
    path.write_bytes(data)
    with av.open(str(path)) as container:
        frames = [f for f in container.decode(video=0)]
    assert len(frames) > 0
    assert {(f.width, f.height) for f in frames} == {(320, 192)}

    # its timeline: at least two segments, the switched prompt among them
    sidecar = json.loads(fetch(server + sidecar_href))
    texts = [item["text"] for seg in sidecar["prompts"] for item in seg["prompts"]]
    assert len(sidecar["prompts"]) >= 2, sidecar["prompts"]
    assert switched in texts, texts


def test_page_says_at_once_when_the_server_goes_away():

    require_browser()
    proc, url = start_server("--prompt", "a server about to stop")

    async def main() -> None:
        # (the page keeps trying to reconnect to the stopped server: those failures are expected)
        async with chromium(expected=("Failed to load resource", "Cannot connect")) as (browser, errors):
            page = await open_page(browser, url, errors)
            await page.wait_for_function("document.getElementById('video').videoWidth > 0", timeout=30_000)
            await page.wait_for_function(f"{STATUS} === 'live'", timeout=30_000)
            await asyncio.to_thread(stop_server, proc)       # SIGTERM: a clean stop
            # before ICE would notice (several seconds), the page says the picture is not live
            await page.wait_for_function(f"{STATUS} !== 'live'", timeout=3_000)
            assert await page.inner_text("#status") == "disconnected"
            assert await page.is_visible("#overlay")
            assert "server" in await page.inner_text("#overlay")      # closed, or (2 s on) cannot be reached
            assert await page.evaluate("document.getElementById('send').disabled")

    try:
        asyncio.run(main())
    finally:
        if proc.poll() is None:
            proc.kill()


def test_page_enhances_a_prompt_for_review_before_it_goes_live(monkeypatch):
    """The Enhance toggle: the AI's rewrite (the fake Messages API on loopback) is shown; Regenerate asks
    again, an edit is kept, Accept sends the reviewed text live; with the toggle off nothing is rewritten."""

    from messages_api import FakeMessagesAPI

    require_browser()
    with FakeMessagesAPI() as api:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-PAGESECRET")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        proc, url = start_server("--prompt", "a lantern on a pier")
        api.answer_text("The lantern on the pier swings left in the wind.")
        api.answer_text("The lantern on the pier glows orange and swings right.")
        now = "document.getElementById('now').textContent"

        async def main() -> None:
            async with chromium() as (browser, errors):
                page = await open_page(browser, url, errors)
                await page.wait_for_function(f"{STATUS} === 'live'", timeout=30_000)
                await page.wait_for_function("!document.getElementById('enhance').disabled")
                await page.check("#enhance")
                await page.fill("#prompt", "it swings")
                await page.press("#prompt", "Enter")
                await page.wait_for_function("document.getElementById('review-text').value.includes('swings left')",
                                             timeout=30_000)
                assert "10 + 5 tokens" in await page.inner_text("#review-meta")
                assert await page.evaluate(now) == "a lantern on a pier"       # nothing live yet
                await page.click("#review-regen")
                await page.wait_for_function("document.getElementById('review-text').value.includes('orange')",
                                             timeout=30_000)
                await page.click("#review-edit")
                await page.keyboard.type(" Slowly.")
                await page.click("#review-accept")
                final = "The lantern on the pier glows orange and swings right. Slowly."
                await page.locator("#applied li.applied", has_text=final).wait_for(timeout=30_000)
                assert await page.is_hidden("#review")
                # the toggle off: the prompt goes as typed, the model is not asked
                asked = len(api.messages_requests())
                await page.uncheck("#enhance")
                await page.fill("#prompt", "a gull lands")
                await page.press("#prompt", "Enter")
                await page.locator("#applied li.applied", has_text="a gull lands").wait_for(timeout=30_000)
                assert len(api.messages_requests()) == asked

        try:
            asyncio.run(main())
        finally:
            out = stop_server(proc)
        asks = [json.dumps(r["json"]["messages"]) for r in api.messages_requests()]
        assert len(asks) == 2 and all("it swings" in a and "a lantern on a pier" in a for a in asks)
        assert "sk-ant-test-PAGESECRET" not in out


def test_projector_and_watch_pages_show_moving_video_and_no_controls(server):
    """/projector: the video alone, black around it, no cursor; /watch: a viewer page. Neither has a
    control element nor a control channel (the server counts no controller for them)."""

    controls = "document.querySelectorAll('button, input, textarea, select, [contenteditable]').length"
    frames = "document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames"

    async def main() -> None:
        async with chromium() as (browser, errors):
            for path in ("projector", "watch"):
                # the earlier tests' pages have gone; their control channels close a moment later
                await wait_for_controllers(server, 0)
                page = await open_page(browser, server, errors, path="/" + path)
                await page.wait_for_function("document.getElementById('video').videoWidth > 0", timeout=30_000)
                n0 = await page.evaluate(frames)
                await page.wait_for_function(f"{frames} > {n0} + 5", timeout=20_000)     # it moves
                assert await page.evaluate(controls) == 0
                assert await selected_pair(page) == ["127.0.0.1", "127.0.0.1"]
                assert controllers(server) == 0              # this page opened no control channel
                if path == "projector":
                    style = await page.evaluate("[getComputedStyle(document.body).cursor, "
                                                "getComputedStyle(document.body).backgroundColor]")
                    assert style == ["none", "rgb(0, 0, 0)"]
                await page.close()

    asyncio.run(main())
