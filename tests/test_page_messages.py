"""What the page says, and when: its message line (an error lasts until a success of its kind; a
rewind and a new seed are confirmed), the reason Enhance is off, and the caption of the prompt on
screen, which changes when the switch's first frame is on screen, not when the server announces it.

One server (no ANTHROPIC_API_KEY) for every test here; each test drives a page of its own.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from test_browser import PAGE_MS, SERVER_MS, STATUS, chromium, open_page, require_browser, timeline_file
from test_webrtc import start_server, stop_server

pytestmark = [pytest.mark.browser, pytest.mark.integration]

FRAME_MS = 1000 / 16            # one frame of the stream
MESSAGE = "document.getElementById('error')"
SHOWN = f"!{MESSAGE}.hidden"
TEXT = f"{MESSAGE}.textContent"


@pytest.fixture(scope="module")
def server():
    require_browser()
    with pytest.MonkeyPatch.context() as mp:         # the Enhance box must be off for want of a key
        mp.delenv("ANTHROPIC_API_KEY", raising=False)
        mp.delenv("ANTHROPIC_BASE_URL", raising=False)
        proc, url = start_server("--prompt", "a harbour at dusk")
    yield url
    stop_server(proc)


async def live_page(browser, url: str, errors: list[str], init: str | None = None):
    page = await open_page(browser, url, errors, init=init)
    await page.wait_for_function(f"{STATUS} === 'live'", timeout=SERVER_MS)
    await page.wait_for_function("!document.getElementById('send').disabled", timeout=SERVER_MS)
    return page


async def message(page) -> dict:
    return await page.evaluate(f"""(m => ({{shown: !m.hidden, text: m.textContent, kind: m.dataset.kind ?? null,
                                            tone: m.dataset.tone ?? null}}))({MESSAGE})""")


def test_an_error_lasts_until_a_success_of_its_kind(server):
    """The empty box's error outlives a pause and a resume (successes of another kind) and goes when a
    prompt is sent and queued; a timeline file that is not JSON: its error goes when a good timeline plays."""
    text = "a lighthouse keeper climbing stairs"
    timeline = {"version": "2.0", "prompts": [
        {"startTime": 0, "endTime": 600, "prompts": [{"text": "timeline: gulls over a pier", "weight": 100}]}]}

    async def main() -> None:
        async with chromium() as (browser, errors):
            page = await live_page(browser, server, errors)

            # -- the empty box: a prompt error
            await page.fill("#prompt", "   ")
            await page.press("#prompt", "Enter")
            await page.wait_for_function(SHOWN, timeout=PAGE_MS)
            said = await message(page)
            assert "empty" in said["text"] and said["kind"] == "prompt" and said["tone"] == "error", said

            # a success of another kind leaves it there: pause and resume (each acked before the
            # state that turns the pill)
            await page.click("#pause")
            await page.wait_for_function(f"{STATUS} === 'paused'", timeout=SERVER_MS)
            await page.click("#pause")
            await page.wait_for_function(f"{STATUS} === 'live'", timeout=SERVER_MS)
            said = await message(page)
            assert said["shown"] and "empty" in said["text"], f"pausing cleared the prompt's error: {said}"

            # the prompt typed and sent: once the server has queued it, the error is gone
            await page.fill("#prompt", text)
            await page.press("#prompt", "Enter")
            entry = page.locator("#applied li", has_text=text).first
            await page.wait_for_function(
                """(t) => [...document.querySelectorAll('#applied li')].some((li) => li.querySelector('.text')
                     .textContent === t && li.querySelector('.meta').textContent !== 'sending…')""",
                arg=text, timeout=SERVER_MS)
            said = await message(page)
            assert not said["shown"], f"the empty box's error stayed after the prompt was queued: {said}"
            assert "rejected" not in (await entry.get_attribute("class") or "")
            # (applied before the timeline goes: a prompt applied after a timeline began would stop it)
            await page.locator("#applied li.applied", has_text=text).wait_for(timeout=SERVER_MS)

            # -- a timeline file that is not JSON, then a good one
            await page.set_input_files("#timeline-file", files=[timeline_file("broken.json", b"{not json")])
            await page.wait_for_function(f"{TEXT}.includes('broken.json is not valid JSON')", timeout=PAGE_MS)
            said = await message(page)
            assert said["shown"] and said["kind"] == "timeline", said
            await page.set_input_files("#timeline-file", files=[timeline_file("good.json", timeline)])
            await page.wait_for_selector("#timeline-stop", state="visible", timeout=SERVER_MS)
            said = await message(page)
            assert not said["shown"], f"the broken file's error stayed while a timeline plays: {said}"
            await page.click("#timeline-stop")
            await page.wait_for_selector("#timeline-stop", state="hidden", timeout=SERVER_MS)

    asyncio.run(main())


def test_a_rewind_and_a_random_seed_are_confirmed(server):
    """Random: "New seed N" once the stream restarted with it, gone by itself a few seconds later;
    ↺ on a segment: "Rewound to segment N", until the next message takes the line."""

    async def main() -> None:
        async with chromium() as (browser, errors):
            page = await live_page(browser, server, errors)

            # -- a random seed (the button puts it in the field and sends it)
            seed = await page.evaluate("() => { document.getElementById('seed-random').click();"
                                       " return document.getElementById('seed').value; }")
            await page.wait_for_function(f"{TEXT}.includes('New seed {seed}')", timeout=SERVER_MS)
            said = await message(page)
            assert said["shown"] and said["tone"] == "done" and said["kind"] == "seed", said
            assert (await page.evaluate("fetch('/api/state').then(r => r.json())"))["seed"] == int(seed)
            # a confirmation clears by itself
            await page.wait_for_function(f"{MESSAGE}.hidden", timeout=PAGE_MS)

            # -- a rewind to the oldest segment kept (a second one begins with a prompt)
            await page.fill("#prompt", "a rowing boat leaves the quay")
            await page.press("#prompt", "Enter")
            await page.wait_for_function("document.querySelectorAll('#segments li').length >= 2", timeout=SERVER_MS)
            segment = await page.get_attribute("#segments li >> nth=0", "data-segment")
            await page.click("#segments li >> nth=0 >> button")
            await page.wait_for_function(f"{TEXT}.includes('Rewound to segment {segment}')", timeout=SERVER_MS)
            said = await message(page)
            assert said["shown"] and said["tone"] == "done" and said["kind"] == "rewind", said
            # the next message takes its place
            await page.fill("#prompt", "")
            await page.press("#prompt", "Enter")
            await page.wait_for_function(f"{TEXT}.includes('empty')", timeout=PAGE_MS)
            assert (await message(page))["tone"] == "error"

    asyncio.run(main())


def test_the_reason_enhance_is_off_is_written_beside_it(server):
    """No ANTHROPIC_API_KEY: the Enhance box is disabled and the reason is text on the page, not only
    a tooltip."""

    async def main() -> None:
        async with chromium() as (browser, errors):
            page = await live_page(browser, server, errors)
            await page.wait_for_function("document.getElementById('enhance').disabled", timeout=PAGE_MS)
            note = page.locator("#enhance-note")
            await note.wait_for(state="visible", timeout=PAGE_MS)
            said = await note.inner_text()
            assert "ANTHROPIC_API_KEY is not set" in said, said
            # next to the box: inside the prompt form, right under the Enhance toggle's row
            box = await page.locator("label.toggle").bounding_box()
            where = await note.bounding_box()
            assert where and box and 0 <= where["y"] - (box["y"] + box["height"]) < 40, (box, where)
            assert await page.evaluate("document.getElementById('enhance').getAttribute('aria-describedby')") \
                == "enhance-note"

    asyncio.run(main())


# when the caption (#now) changed to each text, in the page's clock (performance.now())
WATCH_CAPTION = """() => {
  const now = document.getElementById('now');
  window.__captions = [];
  new MutationObserver(() => window.__captions.push([now.textContent, performance.now()]))
    .observe(now, {childList: true, characterData: true, subtree: true});
}"""

NO_FRAME_CALLBACK = "delete HTMLVideoElement.prototype.requestVideoFrameCallback;"


def test_the_caption_changes_when_the_new_prompts_first_frame_is_on_screen(server):
    """The caption keeps the old prompt until the page has presented the switch's first frame (the
    server's `photon` answer to the page's reports names it; the page keeps when it presented it):
    it changes at or after that frame's display time (less a frame), not when the server announced
    the switch, 0.5-1 s before. A page that cannot report its frames (no requestVideoFrameCallback)
    follows the server's estimate, so its caption does not stick."""
    text = "a kite caught in a cherry tree"

    async def main() -> None:
        async with chromium() as (browser, errors):
            blind = await live_page(browser, server, errors, init=NO_FRAME_CALLBACK)
            page = await live_page(browser, server, errors)
            frames = "document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames"
            await page.wait_for_function(f"{frames} > 32", timeout=SERVER_MS)
            before = await page.inner_text("#now")
            assert before and before != text
            await page.evaluate(WATCH_CAPTION)
            await page.fill("#prompt", text)
            await page.press("#prompt", "Enter")
            # the page presented the switch's first frame (the server's photon answer names it) ...
            await page.wait_for_function(
                "(t) => window.__longlive.caption.switches.some((s) => s.text === t)", arg=text, timeout=SERVER_MS)
            await page.wait_for_function(f"document.getElementById('now').textContent === {json.dumps(text)}",
                                         timeout=SERVER_MS)
            hooks = await page.evaluate("window.__longlive.caption")
            captions = await page.evaluate("window.__captions")
            presented = next(s for s in hooks["switches"] if s["text"] == text)
            changed = next(at for t, at in captions if t == text)
            why = next((c["why"] for c in hooks["captions"] if c["text"] == text), None)
            print(f"\ncaption changed {changed - presented['presentedAt']:+.0f} ms from the display of the switch's "
                  f"first frame (frame {presented['shown']}; the server answered "
                  f"{presented['answeredAt'] - presented['presentedAt']:.0f} ms after it); by: {why}")
            # ... and the caption changed then, not before (one frame of slack: display times are estimates)
            assert changed >= presented["presentedAt"] - FRAME_MS, (captions, hooks)
            # the old caption stayed until then
            assert all(t == before for t, at in captions if at < changed), captions

            # the page without frame callbacks: the caption follows the server's estimate, it does not stick
            await blind.wait_for_function(f"document.getElementById('now').textContent === {json.dumps(text)}",
                                          timeout=SERVER_MS)

    asyncio.run(main())
