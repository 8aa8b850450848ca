"""Fuzzing every control path of a real `longlive serve` (the tiny embedded default, in a
subprocess on 127.0.0.1) while a real viewer watches.

The paths: the WebRTC data channel (aiortc peers on loopback), the WebSocket /api/control,
POST /api/prompt and POST /api/command, OSC datagrams on a real UDP socket, and offers (POST
/api/offer's JSON, POST /whep's application/sdp). The messages come from hypothesis
(tests/fuzz_messages.py): well-shaped commands with wrong or odd field values, unknown types,
deep nesting, huge strings, msgpack's and JSON's wrong types, random bytes, with a minority of
valid commands in the mix. They are drawn up front (derandomized: the same messages every
run) and then sent, every path at once, each peer under the server's rate limits
(server/door/limits.py: 30 control messages a second per connection, per client address and per
OSC sender; 60 offers a minute per address), so the messages reach the parser instead of
the limiter: several data channels and WebSockets, and HTTP, OSC and offers from several
loopback source addresses (all of 127.0.0.0/8 is this machine's loopback). A message the
limiter answers still counts as answered.

What must hold: the server never crashes (it stops cleanly at the end, no traceback in its
log); every message is answered (an ack or an error event, matched by its request id, or an
anonymous error for a message with no usable id; over HTTP a 2xx or 4xx with a JSON body,
never a 500); the engine is never stuck (it is running at the end, never restarted, and takes
a valid prompt and applies it); and frames keep flowing at the stream's rate all through the
fuzzing, measured by a viewer that does not fuzz (frames received) and by the server's
playhead (frames played, which stalls when generation stalls).

`LONGLIVE_FUZZ_SCALE` (default 1) scales the message counts (10,000 in all at 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp
import msgpack
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from hypothesis import HealthCheck, Phase, given, seed, settings, strategies as st

import fuzz_messages as fm
from server.app import SESSIONS, WS_MAX_FRAME
from server.control.osc import read_packet
from server.protocol import ProtocolError
from server.addresses import gathering_on
from test_webrtc import FPS, LOOPBACK, Viewer, start_server, stop_server

SCALE = float(os.environ.get("LONGLIVE_FUZZ_SCALE", "1"))
COUNTS = {"datachannel": 2850, "websocket": 3000, "http /api/prompt": 700, "http /api/command": 1400, "osc": 1800,
          "offer /api/offer": 150, "offer /whep": 150}
RATE = 24.0              # messages a second per peer: under the server's 30 (a peer that behaves never meets it)
# Data channel messages stay under 100 kB (WebSocket ones reach 600 kB): the protocol's limit is 64 KiB, and a
# larger SCTP message is a burst of ~100 UDP datagrams; on a loaded machine loopback drops some (the kernel's
# RcvbufErrors, printed), and SCTP's retransmission timer backs off from 3 s (3, 6, 12 s ...), so its answer can
# take longer than any deadline here without anything being wrong with the server (seen once: a 196 kB message
# answered in none of 20 s)
DC_MAX_BYTES = 100_000
BATCH = 12               # messages sent before waiting for their answers
ANSWER_S = 20.0          # how long one batch may wait for its answers (a deadline, not a measurement)
DC_ANSWER_S = 48.0       # over SCTP: a lost packet is sent again after 3 s, then 6, 12, 24 (RFC 4960 back-off)
DC_PEERS, WS_PEERS, HTTP_ADDRESSES, OSC_ADDRESSES, OFFER_ADDRESSES = 4, 5, 3, 4, 5
# During the fuzzing the stream must keep 75% of the rate it has unfuzzed, just before and just after (capped at
# its 16 fps): frames received by the watching viewer (the track sends 16 a second whatever generation does, so
# this is the server's event loop and shared encoder keeping time while answering the fuzz, and this process
# keeping up with decoding) and frames played by the server (its playhead, which stalls when generation does).
# The reference is measured, not assumed: the 2-core machine is shared with this process's fuzzing and with
# other tests and agents, which alone can hold the tiny default well below 16 fps (3-15 fps seen). Printed.
FPS_MARGIN = 0.75
OFFER_GAP_S = 1.0        # between one address's offers (10 addresses)
BASELINE_S = 4.0         # the unfuzzed reference windows, just before and just after the fuzzing
REPLY_TYPES = ("ack", "error", "state", "enhanced", "photon")


def collect(strategy: st.SearchStrategy, n: int, name: str, batch: int = 50) -> list:
    """`n` values of `strategy`, the same every run (a fixed seed per `name`; generate phase only, no
    database), drawn `batch` to an example (hypothesis's own cost is per example)."""
    out: list = []
    runs = max(1, (n + batch - 1) // batch)

    @seed(zlib.crc32(name.encode()))
    @settings(max_examples=runs, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.lists(strategy, min_size=batch, max_size=batch))
    def draw(values: list) -> None:
        out.extend(values)
    draw()
    assert len(out) >= n, (name, len(out), n)
    return out[:n]


def scaled(path: str) -> int:
    return max(1, int(COUNTS[path] * SCALE))


def rcvbuf_errors() -> int:
    """UDP datagrams this machine dropped for a full receive buffer so far (/proc/net/snmp)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return int(rows[1][rows[0].index("RcvbufErrors")])


def udp_socket(address: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((address, 0))
    return s


# -- answers -----------------------------------------------------------------------------------------
@dataclass
class Answers:
    """What came back on one control connection: the request ids answered, and the anonymous
    answers (an ack or an error without an id, a photon) that messages with no usable id get."""

    ids: set = field(default_factory=set)
    anonymous: int = 0
    kinds: Counter = field(default_factory=Counter)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, msg: Any) -> None:
        if not isinstance(msg, dict):
            self.kinds["not a map"] += 1
            return
        kind = msg.get("type")
        self.kinds[kind] += 1
        rid = msg.get("id")
        if kind == "photon":
            self.anonymous += 1
        elif kind in REPLY_TYPES and _hashable(rid) and rid in ISSUED:
            self.ids.add(rid)
        elif kind in ("ack", "error") or (kind in REPLY_TYPES and rid is not None):
            self.anonymous += 1      # no id, or one the fuzz did not give (a broken JSON text's own, b"H" as "H")
        self.changed.set()


@dataclass
class Tally:
    sent: Counter = field(default_factory=Counter)          # per path
    notes: dict = field(default_factory=dict)               # path -> Counter of draft kinds
    statuses: dict = field(default_factory=dict)            # path -> Counter of HTTP statuses
    unsendable: Counter = field(default_factory=Counter)    # refused by the client library before the wire
    refusals: Counter = field(default_factory=Counter)      # HTTP 409, 429 and 503 answers, by sentence
    slowest: dict = field(default_factory=dict)             # path -> the longest a batch waited for its answers
    failures: list = field(default_factory=list)

    def fail(self, path: str, what: str) -> None:
        if len(self.failures) < 40:
            self.failures.append(f"{path}: {what}")


_ids = itertools.count(1)
ISSUED: set = set()          # every request id the fuzz gave a message


def next_id(path: str) -> str | int:
    n = next(_ids)
    rid = n if n % 3 == 0 else f"{path[:2]}-{n}"
    ISSUED.add(rid)
    return rid


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


async def paced(start: float, sent: int, rate: float) -> None:
    """Sleep until `sent` messages since `start` are within `rate` a second."""
    wait = start + sent / rate - time.monotonic()
    if wait > 0:
        await asyncio.sleep(wait)


async def fuzz_connection(path: str, drafts: list[fm.Draft], send: Callable[[Any], Any], answers: Answers,
                          tally: Tally, max_bytes: int | None = None, diag: Callable[[], str] = str) -> None:
    """Send `drafts` over one control connection, BATCH at a time, each batch answered before the next;
    a message over `max_bytes` is left out (counted)."""
    start, sent = time.monotonic(), 0
    for i in range(0, len(drafts), BATCH):
        want: list[tuple[Any, fm.Draft]] = []
        anon: list[fm.Draft] = []
        base = answers.anonymous
        for draft in drafts[i:i + BATCH]:
            rid = next_id(path)
            body, used = fm.with_id(draft.body, rid)
            payload = fm.encode(body, draft.wire)
            size = len(payload.encode("utf-8", "surrogatepass")) if isinstance(payload, str) else len(payload)
            if max_bytes is not None and size > max_bytes:
                tally.unsendable[f"{path}: over {max_bytes} bytes"] += 1
                continue
            try:
                result = send(payload)
                if asyncio.iscoroutine(result):
                    await result
            except Exception as e:        # too large or not encodable for the client library itself
                tally.unsendable[f"{path}: {type(e).__name__}"] += 1
                continue
            sent += 1
            tally.sent[path] += 1
            tally.notes.setdefault(path, Counter())[draft.note] += 1
            (want.append((rid, draft)) if used else anon.append(draft))

        def answered() -> bool:
            missing = sum(1 for rid, _ in want if rid not in answers.ids)
            return answers.anonymous - base >= len(anon) + missing
        sent_at = time.monotonic()
        wait_s = DC_ANSWER_S if path == "datachannel" else ANSWER_S
        deadline = sent_at + wait_s
        while not answered():
            left = deadline - time.monotonic()
            if left <= 0:
                missing = [d for rid, d in want if rid not in answers.ids]
                tally.fail(path, f"{len(missing) + len(anon) - (answers.anonymous - base)} of {len(want) + len(anon)} "
                                 f"messages unanswered after {wait_s:.0f} s; unmatched: "
                                 f"{[(d.note, repr(d.body)[:160]) for d in missing]}; anonymous: "
                                 f"{[(d.note, d.wire, repr(d.body)[:100]) for d in anon]}; "
                                 f"{answers.anonymous - base} anonymous answers; heard {answers.kinds}; {diag()}")
                return
            answers.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(answers.changed.wait(), left)
        tally.slowest[path] = max(tally.slowest.get(path, 0.0), time.monotonic() - sent_at)
        await paced(start, sent, RATE)


# -- HTTP, OSC, offers ----------------------------------------------------------------------------------
def check_json_answer(path: str, status: int, ctype: str, text: str, tally: Tally, what: str) -> Any:
    tally.statuses.setdefault(path, Counter())[status] += 1
    if status >= 500 and not (status == 503 and "Retry-After" in what):
        tally.fail(path, f"{status} for {what[:200]}: {text[:300]}")
        return None
    if status in (409, 429, 503):
        tally.refusals[f"{status} {text[:90]}"] += 1
    if not ctype.startswith("application/json"):
        tally.fail(path, f"{status} is {ctype or 'untyped'}, not JSON, for {what[:200]}: {text[:200]}")
        return None
    try:
        body = json.loads(text)
    except ValueError:
        tally.fail(path, f"{status} body is not JSON for {what[:200]}: {text[:200]}")
        return None
    if status >= 400:
        sentence = body.get("error", body.get("message")) if isinstance(body, dict) else None
        if not isinstance(sentence, str) or not sentence or "\n" in sentence:
            tally.fail(path, f"{status} without a one-line error sentence for {what[:200]}: {text[:200]}")
    return body


async def fuzz_http(url: str, route: str, drafts: list[fm.Draft], address: str, tally: Tally) -> None:
    path = f"http {route}"
    connector = aiohttp.TCPConnector(local_addr=(address, 0), limit=4)
    async with aiohttp.ClientSession(connector=connector) as http:
        start, sent = time.monotonic(), 0
        for draft in drafts:
            body, _ = fm.with_id(draft.body, next_id(path))
            payload = fm.encode(body, draft.wire)
            data = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload
            async with http.post(url + route, data=data, headers={"Content-Type": "application/json"}) as r:
                text = await r.text(errors="replace")
                what = f"{draft.note} {repr(draft.body)[:150]}" + (" Retry-After" if "Retry-After" in r.headers else "")
                check_json_answer(path, r.status, r.headers.get("Content-Type", ""), text, tally, what)
            sent += 1
            tally.sent[path] += 1
            tally.notes.setdefault(path, Counter())[draft.note] += 1
            await paced(start, sent, RATE)


async def fuzz_osc(port: int, packets: list[tuple[bytes, str]], address: str, listener: "OscListener",
                   tally: Tally) -> None:
    """Datagrams from `address`; each must get at least one /longlive/ack or /longlive/error back (a
    bundle of no messages asks nothing and needs no answer). Replies all go to one reply target, so the
    count is kept across every OSC sender: at least as many answers as datagrams that ask for one."""
    loop = asyncio.get_running_loop()
    sock = udp_socket(address)
    sock.setblocking(False)
    try:
        start, sent = time.monotonic(), 0
        for i in range(0, len(packets), BATCH):
            for data, note in packets[i:i + BATCH]:
                try:
                    needs = 1 if read_packet(data) else 0
                except ProtocolError:
                    needs = 1
                await loop.sock_sendto(sock, data, ("127.0.0.1", port))
                listener.asked += needs
                sent += 1
                tally.sent["osc"] += 1
                tally.notes.setdefault("osc", Counter())[note] += 1
            deadline = time.monotonic() + ANSWER_S
            while listener.answers < listener.asked:
                if time.monotonic() > deadline:
                    tally.fail("osc", f"{listener.asked - listener.answers} datagrams unanswered after {ANSWER_S:.0f} s "
                                      f"(last batch: {[n for _, n in packets[i:i + BATCH]]})")
                    return
                await asyncio.sleep(0.01)
            await paced(start, sent, RATE)
    finally:
        sock.close()


class OscListener(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.asked = self.answers = 0
        self.kinds: Counter = Counter()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        address = data.split(b"\x00", 1)[0].decode("latin-1")
        self.kinds[address] += 1
        if address in ("/longlive/ack", "/longlive/error"):
            self.answers += 1


async def fuzz_offers(url: str, offers: list[tuple[Any, str]], whep: bool, address: str, tally: Tally) -> None:
    """Offers from `address`: every one answered (an answer, which is then ended at once, or a 4xx with
    a sentence: JSON for /api/offer, text for /whep, as WHEP has it); never a 5xx but a full house's 503."""
    path = "offer /whep" if whep else "offer /api/offer"
    connector = aiohttp.TCPConnector(local_addr=(address, 0), limit=2)
    async with aiohttp.ClientSession(connector=connector) as http:
        for sdp, note in offers:
            tally.sent[path] += 1
            tally.notes.setdefault(path, Counter())[note] += 1
            what = f"{note} {repr(sdp)[:150]}"
            if whep:
                data = sdp if isinstance(sdp, str) else json.dumps(sdp, default=fm._json_default)
                async with http.post(url + "/whep", data=data.encode("utf-8", "surrogatepass"),
                                     headers={"Content-Type": "application/sdp"}) as r:
                    text = await r.text(errors="replace")
                    tally.statuses.setdefault(path, Counter())[r.status] += 1
                    if r.status == 201:
                        async with http.delete(url + r.headers["Location"]) as d:
                            if d.status != 200:
                                tally.fail(path, f"DELETE {r.headers['Location']} -> {d.status}")
                    elif not (400 <= r.status < 500) or not text.strip() or "Traceback" in text:
                        tally.fail(path, f"{r.status} for {what}: {text[:200]}")
            else:
                body = {"sdp": sdp, "type": "offer"} if note != "wrong type" else sdp
                data = json.dumps(body, default=fm._json_default)
                async with http.post(url + "/api/offer", data=data.encode("utf-8", "surrogatepass"),
                                     headers={"Content-Type": "application/json"}) as r:
                    text = await r.text(errors="replace")
                    answer = check_json_answer(path, r.status, r.headers.get("Content-Type", ""), text, tally, what)
                    if r.status == 200 and isinstance(answer, dict):
                        async with http.delete(f"{url}/api/sessions/{answer['session']}") as d:
                            if d.status != 200:
                                tally.fail(path, f"DELETE session -> {d.status}")
            await asyncio.sleep(OFFER_GAP_S)   # spread over the fuzzing: an offer costs a peer connection


def sctp_state(peer: Viewer) -> str:
    """The client side of a data channel's SCTP association, for a failure message."""
    sctp = peer.pc.sctp
    return (f"client SCTP: channel buffered {peer.channel.bufferedAmount} B, outbound queue "
            f"{len(getattr(sctp, '_outbound_queue', ()))}, sent queue {len(getattr(sctp, '_sent_queue', ()))}, "
            f"flight {getattr(sctp, '_flight_size', None)} B, cwnd {getattr(sctp, '_cwnd', None)} B, rto "
            f"{getattr(sctp, '_rto', None)} s, peer rwnd {getattr(sctp, '_rwnd', None)}, state {sctp.state}")


def quiet_peer(url: str, http: aiohttp.ClientSession) -> Viewer:
    """A page's peer whose video section is inactive: a session and a control channel like any page's,
    but no video to receive (the watcher receives it), so this process, fuzzing on a shared 2-core
    machine, is not also decoding three more streams (a loaded loopback drops datagrams, and a lost
    SCTP packet holds a data channel's later answers back until it is sent again)."""
    peer = Viewer(url, http)
    add = peer.pc.addTransceiver
    peer.pc.addTransceiver = lambda kind, direction="sendrecv": add(kind, direction="inactive")  # type: ignore
    return peer


# -- the test -------------------------------------------------------------------------------------------------
def real_offer() -> str:
    """A real page offer (video + control channel, 127.0.0.1 candidates only) to mutate; never connected."""
    async def make() -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        pc.createDataChannel("control")
        with gathering_on(LOOPBACK):
            await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp
    return asyncio.run(make())


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    """The tiny default with OSC in and out (replies to a socket the test reads), recordings in a
    temporary folder, rewind memory bounded (each applied prompt keeps a snapshot); and the messages,
    drawn while the server loads its model."""
    reply = udp_socket()
    osc_port = udp_socket()
    port = osc_port.getsockname()[1]
    osc_port.close()
    started: dict = {}

    def start() -> None:
        try:
            started["server"] = start_server(
                "--prompt", "first light", "--osc", str(port), "--osc-reply", f"127.0.0.1:{reply.getsockname()[1]}",
                "--recordings", str(tmp_path_factory.mktemp("recordings")), "--rewind-memory", "64", "--no-ai")
        except BaseException as e:          # pytest.fail inside start_server included
            started["error"] = e
    starting = threading.Thread(target=start)
    starting.start()
    try:
        drafts = draw_all()
    except BaseException:
        starting.join()
        if "server" in started:
            stop_server(started["server"][0])
        raise
    starting.join()
    if "error" in started:
        raise started["error"]
    proc, url = started["server"]
    yield url, port, reply, drafts
    reply.close()
    out = stop_server(proc)
    problems = [line for line in out.splitlines() if " ERROR " in line or "Exception" in line]
    assert not problems, problems[:20]


def draw_all() -> dict:
    """Every path's messages, drawn with hypothesis (a fixed seed per path)."""
    t = time.monotonic()
    # one pool of control messages goes over every control path (each path sees the same cases; hypothesis
    # costs most of a millisecond a message, and the machine is shared)
    pool = collect(fm.control_message(), max(scaled(k) for k in ("datachannel", "websocket", "http /api/command")),
                   "control")
    drafts = {"datachannel": pool[:scaled("datachannel")],
              "websocket": pool[::-1][:scaled("websocket")],
              "/api/prompt": [fm.for_http(d, prompt=True) for d in pool[1::2][:scaled("http /api/prompt")]],
              "/api/command": [fm.for_http(d, prompt=False) for d in pool[::2][:scaled("http /api/command")]],
              "osc": collect(fm.osc_packet(), scaled("osc"), "osc"),
              "offers": collect(fm.offer_body(real_offer()), scaled("offer /api/offer") + scaled("offer /whep"),
                                "offers", batch=10)}
    drafts["drawn_s"] = time.monotonic() - t
    return drafts


@pytest.mark.integration
def test_fuzz_every_control_path(fuzz_server):
    url, osc_port, reply_sock, drafts = fuzz_server
    dc, ws, prompts, commands, osc, offers = (drafts[k] for k in ("datachannel", "websocket", "/api/prompt",
                                                                   "/api/command", "osc", "offers"))
    gen_s = drafts["drawn_s"]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        tally = Tally()
        listener = OscListener()
        reply_sock.setblocking(False)
        transport, _ = await loop.create_datagram_endpoint(lambda: listener, sock=reply_sock)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.9", 0))) as http:
            async def server_state() -> dict:
                async with http.get(url + "/api/state") as r:
                    assert r.status == 200
                    return await r.json()

            async def rates(seconds: float) -> tuple[float, float]:
                """Frames the server played (its playhead) and the watcher received, per second, over the
                next `seconds`."""
                a, ta, fa = await server_state(), time.monotonic(), len(watcher.frames)
                await asyncio.sleep(seconds)
                b, tb, fb = await server_state(), time.monotonic(), len(watcher.frames)
                return (b["frame"] - a["frame"]) / (tb - ta), (fb - fa) / (tb - ta)

            lags: list[float] = []

            async def probe() -> None:          # how long the server takes to answer a GET meanwhile
                while True:
                    t = time.monotonic()
                    async with http.get(url + "/api/health") as r:
                        await r.read()
                    lags.append(time.monotonic() - t)
                    await asyncio.sleep(0.25)

            watcher = await Viewer(url, http).open()            # watches, never fuzzes: the frames are its
            peers = [await quiet_peer(url, http).open() for _ in range(DC_PEERS)]
            sockets = [await http.ws_connect(url + "/api/control") for _ in range(WS_PEERS)]
            await watcher.wait_frames(16, timeout=60)
            base_before = await rates(BASELINE_S)       # what this machine gives the stream now, unfuzzed

            dc_answers = [Answers() for _ in peers]
            for peer in peers:
                peer.answers_seen = len(peer.messages)

            async def pump_dc(peer: Viewer, answers: Answers) -> None:      # the viewer's messages -> answers
                while True:
                    await peer._news.wait()
                    peer._news.clear()
                    for msg in peer.messages[peer.answers_seen:]:
                        answers.add(msg)
                    peer.answers_seen = len(peer.messages)

            async def pump_ws(sock, answers: Answers) -> None:
                async for msg in sock:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        answers.add(json.loads(msg.data))
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        answers.add(msgpack.unpackb(msg.data, raw=False, strict_map_key=False))
            ws_answers = [Answers() for _ in sockets]
            pumps = [asyncio.create_task(pump_dc(p, a)) for p, a in zip(peers, dc_answers)]
            pumps += [asyncio.create_task(pump_ws(s, a)) for s, a in zip(sockets, ws_answers)]

            before = await server_state()
            rcvbuf0 = rcvbuf_errors()
            t0 = time.monotonic()
            frames0 = len(watcher.frames)
            stats_mark = len(watcher.messages)

            def split(items: list, n: int) -> list[list]:
                return [items[k::n] for k in range(n)]
            jobs = [fuzz_connection("datachannel", part, p.channel.send, a, tally, DC_MAX_BYTES, (lambda p: lambda: sctp_state(p))(p))
                    for p, a, part in zip(peers, dc_answers, split(dc, DC_PEERS))]
            # (a frame over WS_MAX_FRAME closes its socket, as documented: tests/test_protocol.py checks that)
            jobs += [fuzz_connection("websocket", part,
                                     (lambda s: lambda data: s.send_bytes(data) if isinstance(data, bytes)
                                      else s.send_str(data))(s), a, tally, WS_MAX_FRAME)
                     for s, a, part in zip(sockets, ws_answers, split(ws, WS_PEERS))]
            jobs += [fuzz_http(url, "/api/prompt", part, f"127.0.0.{2 + k}", tally)
                     for k, part in enumerate(split(prompts, HTTP_ADDRESSES))]
            jobs += [fuzz_http(url, "/api/command", part, f"127.0.0.{12 + k}", tally)
                     for k, part in enumerate(split(commands, HTTP_ADDRESSES))]
            jobs += [fuzz_osc(osc_port, part, f"127.0.0.{22 + k}", listener, tally)
                     for k, part in enumerate(split(osc, OSC_ADDRESSES))]
            half = len(offers) // 2
            jobs += [fuzz_offers(url, part, False, f"127.0.0.{32 + k}", tally)
                     for k, part in enumerate(split(offers[:half], OFFER_ADDRESSES))]
            jobs += [fuzz_offers(url, part, True, f"127.0.0.{42 + k}", tally)
                     for k, part in enumerate(split(offers[half:], OFFER_ADDRESSES))]
            prober = asyncio.create_task(probe())
            await asyncio.gather(*jobs)
            t1 = time.monotonic()
            prober.cancel()
            after = await server_state()
            frames1 = len(watcher.frames)
            fuzz_s = t1 - t0

            # the engine is not stuck: it runs, never restarted, and a valid prompt still goes live
            final = await http.ws_connect(url + "/api/control?format=json")
            await final.send_json({"type": "prompt", "text": "after the storm", "id": "final"})
            acked = applied = None
            deadline = time.monotonic() + 60
            while applied is None and time.monotonic() < deadline:
                msg = await asyncio.wait_for(final.receive_json(), 60)
                if msg.get("id") == "final" and msg["type"] in ("ack", "error"):
                    acked = msg
                if msg["type"] == "prompt_applied" and msg["id"] == "final":
                    applied = msg
            state = await server_state()
            base_after = await rates(BASELINE_S)

            stats = [m for m in watcher.messages[stats_mark:] if m.get("type") == "stats"]
            async with http.get(url + "/api/health") as r:
                health = await r.json()
            peer_states = [(v.pc.connectionState, v.channel.readyState) for v in [watcher, *peers]]
            socket_states = [s.closed for s in sockets]
            for task in pumps:
                task.cancel()
            for s in [*sockets, final]:
                await s.close()
            for v in [watcher, *peers]:
                await v.close(delete=False)
                async with http.delete(f"{url}/api/sessions/{v.session}") as r:
                    pass
        transport.close()

        total = sum(tally.sent.values())
        viewer_fps = (frames1 - frames0) / fuzz_s
        played_fps = (after["frame"] - before["frame"]) / fuzz_s
        generated_fps = (after["generated"] - before["generated"]) / fuzz_s
        gen = [s["generated_fps"] for s in stats if s.get("generated_fps")]
        print(f"\nfuzz: {total} messages in {fuzz_s:.1f} s ({total / fuzz_s:.0f}/s), drawn in {gen_s:.1f} s")
        for path in COUNTS:
            print(f"  {path:<18} {tally.sent[path]:>5}  {dict(tally.notes.get(path, {}))}"
                  + (f"  statuses {dict(sorted(tally.statuses[path].items()))}" if path in tally.statuses else ""))
        print(f"  OSC answers: {dict(listener.kinds)}; asked {listener.asked}, answered {listener.answers}")
        dc_kinds = sum((a.kinds for a in dc_answers), Counter())
        ws_kinds = sum((a.kinds for a in ws_answers), Counter())
        print(f"  data channel replies {dict(dc_kinds)}; WebSocket replies {dict(ws_kinds)}")
        if tally.refusals:
            print(f"  HTTP refusals: {dict(tally.refusals)}")
        print(f"  UDP datagrams this machine dropped for a full receive buffer meanwhile: {rcvbuf_errors() - rcvbuf0}")
        if tally.unsendable:
            print(f"  not sendable by the client library (not counted): {dict(tally.unsendable)}")
        played_ref = min(float(FPS), (base_before[0] + base_after[0]) / 2)
        received_ref = min(float(FPS), (base_before[1] + base_after[1]) / 2)
        print(f"  frames during the fuzzing: the watching viewer received {viewer_fps:.2f} fps, the server played "
              f"{played_fps:.2f} and generated {generated_fps:.2f} fps (stream: {FPS} fps; unfuzzed, just before "
              f"and after: played {base_before[0]:.2f} and {base_after[0]:.2f}, received {base_before[1]:.2f} and "
              f"{base_after[1]:.2f} fps); server stats generated_fps min "
              f"{min(gen) if gen else None} median {sorted(gen)[len(gen) // 2] if gen else None}")
        lags.sort()
        print(f"  the server answered GET /api/health meanwhile in {1e3 * lags[len(lags) // 2]:.0f} ms (median), "
              f"{1e3 * lags[int(len(lags) * 0.95)]:.0f} ms (95%), {1e3 * lags[-1]:.0f} ms (slowest of {len(lags)})")
        print(f"  slowest batch answered in: {dict((k, round(v, 2)) for k, v in tally.slowest.items())} s")
        print(f"  final prompt: {acked and acked['type']}, applied after {applied and applied['latency_ms']} ms")
        print(f"  at the end: {health['sessions']} sessions, {health['controllers']} control clients; peers "
              f"(connection, channel): {peer_states}; WebSockets closed: {socket_states}")

        assert not tally.failures, "\n".join(tally.failures)
        # every fuzzing connection is still there: garbage costs a peer nothing but an error
        assert peer_states == [("connected", "open")] * (1 + DC_PEERS) and not any(socket_states), \
            (peer_states, socket_states)
        assert health["sessions"] == 1 + DC_PEERS, health
        # drawn: sent, plus the few the client leaves out (a WebSocket frame over WS_MAX_FRAME closes its socket,
        # as documented and tested in test_protocol; which drafts are that large varies with the draw)
        left_out = sum(tally.unsendable.values())
        assert total + left_out >= 10_000 * SCALE and left_out <= 0.03 * (total + left_out), \
            (tally.sent, tally.unsendable)
        assert acked == {"type": "ack", "id": "final", "command": "prompt"}, acked
        assert applied is not None and applied["text"] == "after the storm"
        assert state["engine"] == "running" and state["running"] and state["restarts"] == 0, state
        assert state["prompt"] == "after the storm"
        # at least FPS_MARGIN of what the stream gets unfuzzed on this machine at this moment (the 2-core machine
        # is shared: other tests and agents can hold it below 16 fps with or without the fuzz, so the reference
        # is measured around the fuzzing, not assumed)
        assert viewer_fps >= received_ref * FPS_MARGIN, (viewer_fps, base_before, base_after)
        assert played_fps >= played_ref * FPS_MARGIN, (played_fps, base_before, base_after)

    asyncio.run(main())


# -- what the fuzzing found, one case each (in-process app: fake pipeline, real engine thread, HTTP, WebRTC) -------
def test_text_that_is_not_valid_unicode_is_refused_and_never_reaches_a_reply():
    """JSON's \\ud83d escapes decode to lone surrogates, which UTF-8 cannot carry. The fuzzing found a prompt
    holding one accepted: it went into the state, and from then on every state broadcast raised in the
    WebSocket endpoints (HTTP 500s, OSC packets unhandled, new sockets without hello, a later valid prompt
    never answered). Now every text field and string id refuses it, and encoding never raises."""
    from server.protocol import ErrorEvent, encode, read_command

    for text, field_name in (('{"type": "prompt", "text": "a fox \\ud83d", "id": 7}', "prompt.text"),
                             ('{"type": "cue", "cue": 3, "text": "ok", "name": "\\udfff"}', "cue.name"),
                             ('{"type": "prompt", "prompts": [{"text": "\\ud800"}], "id": 7}', "prompt.prompts[0].text"),
                             ('{"type": "timeline", "timeline": {"prompts": [{"startTime": 0, "endTime": 2, '
                              '"prompts": [{"text": "x\\ud800"}]}]}, "id": 7}', "timeline.timeline")):
        with pytest.raises(ProtocolError) as e:
            read_command(text)
        assert str(e.value).startswith(field_name) and "not valid Unicode text" in str(e.value), str(e.value)
        assert e.value.id == 7 or field_name == "cue.name"
    with pytest.raises(ProtocolError, match="id is not valid Unicode text") as e:
        read_command('{"type": "status", "id": "\\ud800"}')
    assert e.value.id is None                      # an id that cannot be echoed is not echoed
    event = ErrorEvent(id=None, message="quoted from elsewhere: \ud83d")
    assert msgpack.unpackb(encode(event, binary=True))["message"].endswith("\ufffd")
    assert json.loads(encode(event, binary=False))["message"].endswith("\ud83d")   # a \u escape in JSON
    encode(event, binary=False).encode("utf-8")


@pytest.mark.integration
def test_a_lone_surrogate_prompt_leaves_the_websockets_working():
    from test_whep import serving

    async def main():
        app, server, endpoint = await serving()
        base = endpoint.rsplit("/whep", 1)[0]
        try:
            async with aiohttp.ClientSession() as http:
                ws = await http.ws_connect(base + "/api/control?format=json")
                assert (await ws.receive_json())["type"] == "hello"
                await ws.send_str('{"type": "prompt", "text": "\\ud83d", "id": "bad"}')
                await ws.send_str('{"type": "tap", "id": "after"}')       # its ack broadcasts a state
                seen = {}
                while "after" not in seen:
                    msg = await asyncio.wait_for(ws.receive_json(), 20)
                    if msg.get("id") in ("bad", "after"):
                        seen[msg["id"]] = msg
                assert seen["bad"]["type"] == "error" and "not valid Unicode" in seen["bad"]["message"]
                assert seen["after"] == {"type": "ack", "id": "after", "command": "tap"}
                r = await http.post(base + "/api/prompt", data='{"text": "\\ud800"}',
                                    headers={"Content-Type": "application/json"})
                assert r.status == 400 and "not valid Unicode" in (await r.json())["error"]
                late = await http.ws_connect(base + "/api/control?format=json")     # a new client still gets hello
                assert (await asyncio.wait_for(late.receive_json(), 20))["type"] == "hello"
                await late.close()
                await ws.close()
        finally:
            await app[SESSIONS].close_all()
            await server.close()
    asyncio.run(main())


@pytest.mark.integration
def test_an_offer_aiortc_cannot_use_is_a_400_and_leaves_nothing_open():
    """Offers the fuzzing found (here: a page's offer with its `m=application` line cut out, and one whose
    first section lost its a=mid) made aiortc fail half way through answering, and then its own close()
    raised on the half-made peer connection: a 500 for /api/offer and /whep. Now the answer is a 400, and
    the half-made connection's transports are stopped one by one: no session, no socket left."""
    from test_whep import serving

    offer = real_offer()
    no_channel = "\r\n".join(line for line in offer.split("\r\n") if not line.startswith("m=application"))
    no_mid = offer.replace("a=mid:0\r\n", "", 1)
    assert no_channel != offer and no_mid != offer

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def main():
        app, server, endpoint = await serving()
        base = endpoint.rsplit("/whep", 1)[0]
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
                async def once() -> None:
                    for sdp in (no_channel, no_mid):
                        r = await http.post(base + "/api/offer", json={"sdp": sdp, "type": "offer"})
                        body = await r.json()
                        assert r.status == 400 and body["error"].startswith("cannot answer this offer"), body
                        r = await http.post(endpoint, data=sdp, headers={"Content-Type": "application/sdp"})
                        assert r.status == 400 and "cannot answer this offer" in await r.text()
                await once()                   # warm-up: the first answer loads what aiortc loads once
                fds = open_fds()
                for _ in range(5):
                    await once()
                await asyncio.sleep(0.5)       # let aiortc's own tasks finish closing
                assert app[SESSIONS].count == 0
                assert open_fds() <= fds, (fds, open_fds())      # 20 failed answers, no socket kept
        finally:
            await app[SESSIONS].close_all()
            await server.close()
    asyncio.run(main())


@pytest.mark.integration
def test_arming_or_firing_an_empty_cue_over_http_is_409_not_503():
    """The fuzzing found POST /api/command answering `arm`/`fire` of an empty cue with 503 and Retry-After,
    which tells a script the engine is busy and to try the same again: it is the cue bank's state (409)."""
    from test_whep import serving

    async def main():
        app, server, endpoint = await serving()
        base = endpoint.rsplit("/whep", 1)[0]
        try:
            async with aiohttp.ClientSession() as http:
                for body in ({"type": "arm", "cue": 77, "id": 1}, {"type": "fire", "cue": 77, "id": 2}):
                    r = await http.post(base + "/api/command", json=body)
                    reply = await r.json()
                    assert r.status == 409 and "Retry-After" not in r.headers, (r.status, reply)
                    assert reply["type"] == "error" and "cue 77 is empty" in reply["message"]
                r = await http.post(base + "/api/command", json={"type": "fire", "cue": 1, "id": 3})
                assert r.status == 202 and (await r.json())["type"] == "ack"     # a set cue still fires
        finally:
            await app[SESSIONS].close_all()
            await server.close()
    asyncio.run(main())
