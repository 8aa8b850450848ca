"""WHIP into a real SFU, end to end: run by tests/test_whip.py as `unshare -n -- python scenario.py`.

Inside the network namespace the test made (it refuses to run anywhere else), it:

1. brings `lo` up and makes a veth pair v0/v1 with 127.0.0.2/32 on v0: Janus skips loopback
   interfaces, so it gathers on v0 (`interface = "127.0.0.2"`, `ice_enforce_list = "v0"`), and
   aioice, which drops only 127.0.0.1, gathers 127.0.0.2 too; every packet stays in 127.0.0.0/8
   inside this namespace;
2. starts Janus 1.1.2 in the foreground (VideoRoom plugin, HTTP transport on 127.0.0.1:8088 and
   WebSocket on 127.0.0.1:8188 only, configs from the templates beside this file) and
   simple-whip-server (`make janus`'s copy, bound to 127.0.0.1:7080), and creates a WHIP endpoint
   (with a Bearer token) for a VP8 room;
3. starts `python -m longlive serve --whip http://127.0.0.1:7080/whip/endpoint/longlive
   --whip-token T --no-ai --device cpu` (the tiny default) and waits for it in the room;
4. subscribes 1, then 5, then 10 aiortc viewers through Janus's VideoRoom REST API, counting each
   viewer's frames per second and sampling our server's CPU (/proc/PID/stat) while they watch;
5. stops Janus and the WHIP server, starts them again (a new endpoint) and checks the publisher
   comes back by itself (frames flow to a new subscriber);
6. SIGTERMs our server and checks it DELETEd its WHIP resource (simple-whip-server's debug log
   has the DELETE, and the room has no publisher left).

It prints one JSON line with the figures; the test asserts on it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import signal
import string
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
WHIP_APP = REPO / ".cache" / "simple-whip-server" / "app"
JANUS_HTTP = "http://127.0.0.1:8088/janus"
WHIP_BASE = "http://127.0.0.1:7080/whip"
ENDPOINT = "longlive"
ROOM = 1234
FPS = 16.0
VIEWERS = (1, 5, 10)           # subscribers through Janus, added in steps
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(*args) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *args, file=sys.stderr, flush=True)


# -- the namespace and the processes ---------------------------------------------------------------------
def setup_namespace() -> None:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()]
    if names != ["lo"]:
        sys.exit(f"refusing to run outside a fresh network namespace (interfaces: {names}); "
                 "run me as `unshare -n -- python scenario.py`")
    for cmd in ("ip link set lo up", "ip link add v0 type veth peer name v1", "ip addr add 127.0.0.2/32 dev v0",
                "ip link set v0 up", "ip link set v1 up"):
        subprocess.run(cmd.split(), check=True)


def write_janus_config(folder: Path) -> None:
    values = dict(CONFIGS=str(folder), INTERFACE="127.0.0.2", ICE_ENFORCE="v0", RTP_PORTS="20000-20999",
                  HTTP_IP="127.0.0.1", HTTP_PORT="8088", WS_IP="127.0.0.1", WS_PORT="8188", ROOM=str(ROOM),
                  PUBLISHERS="4", BITRATE="1000000")
    folder.mkdir(parents=True, exist_ok=True)
    for template in HERE.glob("janus*.jcfg"):
        (folder / template.name).write_text(string.Template(template.read_text()).substitute(values))


class Processes:
    def __init__(self, work: Path):
        self.work = work
        self.janus: subprocess.Popen | None = None
        self.whip: subprocess.Popen | None = None
        self.server: subprocess.Popen | None = None
        self.runs = 0

    def start_sfu(self) -> None:
        self.runs += 1
        conf = self.work / "janus"
        write_janus_config(conf)
        self.janus = subprocess.Popen(["janus", "-F", str(conf), "-C", str(conf / "janus.jcfg"), "-o", "-N",
                                       "-L", str(self.work / f"janus-{self.runs}.log")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env = {**os.environ, "DEBUG": "whip:*,-whip:vdebug", "DEBUG_COLORS": "0", "WHIP_HOST": "127.0.0.1",
               "WHIP_PORT": "7080", "JANUS_WS": "ws://127.0.0.1:8188"}
        out = open(self.work / f"whip-{self.runs}.log", "wb")
        self.whip = subprocess.Popen(["node", "server.js"], cwd=WHIP_APP, env=env, stdout=out, stderr=out)

    def stop_sfu(self) -> None:
        for p in (self.whip, self.janus):
            stop(p)
        self.whip = self.janus = None

    def start_server(self, port: int, token: str) -> None:
        out = open(self.work / "server.log", "wb")
        self.server = subprocess.Popen(
            [sys.executable, "-m", "longlive", "serve", "--whip", f"{WHIP_BASE}/endpoint/{ENDPOINT}",
             "--whip-token", token, "--no-ai", "--device", "cpu", "--port", str(port),
             "--recordings", str(self.work / "recordings")],
            cwd=REPO, stdout=out, stderr=out)

    def close(self) -> None:
        for p in (self.server, self.whip, self.janus):
            stop(p)


def stop(p: subprocess.Popen | None, timeout: float = 15.0) -> int | None:
    if p is None or p.poll() is not None:
        return None if p is None else p.returncode
    p.send_signal(signal.SIGTERM)
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.wait()


def listening() -> list[str]:
    """Every listening TCP socket in this namespace, as ADDRESS:PORT (IPv4 and IPv6)."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state != "0A":
                continue
            address, port = local.split(":")
            raw = bytes.fromhex(address)
            if len(raw) == 4:
                shown = ".".join(str(b) for b in reversed(raw))
            else:
                shown = str(ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))))
            out.append(f"{shown}:{int(port, 16)}")
    return sorted(out)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK      # utime, stime


async def wait_http(http: aiohttp.ClientSession, url: str, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                if r.status == 200:
                    return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up in {timeout:g} s")
        await asyncio.sleep(0.2)


# -- Janus's REST API ---------------------------------------------------------------------------------------
class Janus:
    """One Janus session (long-polled, so it stays alive) and its VideoRoom handles."""

    def __init__(self, http: aiohttp.ClientSession):
        self.http = http
        self.session: int | None = None
        self._waiting: dict[str, asyncio.Future] = {}
        self._poll: asyncio.Task | None = None

    async def open(self) -> "Janus":
        self.session = (await self._post(JANUS_HTTP, {"janus": "create"}))["data"]["id"]
        self._poll = asyncio.ensure_future(self._long_poll())
        return self

    async def close(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
        with contextlib.suppress(Exception):
            await self._post(f"{JANUS_HTTP}/{self.session}", {"janus": "destroy"})

    async def attach(self) -> int:
        reply = await self._post(f"{JANUS_HTTP}/{self.session}", {"janus": "attach", "plugin": "janus.plugin.videoroom"})
        return reply["data"]["id"]

    async def request(self, handle: int, body: dict, jsep: dict | None = None, timeout: float = 15.0) -> dict:
        """A plugin request: the synchronous reply, or (after an ack) the event it leads to."""
        transaction = secrets.token_hex(8)
        future = self._waiting[transaction] = asyncio.get_running_loop().create_future()
        message = {"janus": "message", "body": body, **({"jsep": jsep} if jsep else {})}
        reply = await self._post(f"{JANUS_HTTP}/{self.session}/{handle}", message, transaction)
        if reply["janus"] != "ack":
            self._waiting.pop(transaction, None)
            return reply
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(transaction, None)

    async def publishers(self, handle: int) -> list[dict]:
        reply = await self.request(handle, {"request": "listparticipants", "room": ROOM})
        data = reply["plugindata"]["data"]
        return [p for p in data.get("participants", []) if p.get("publisher")]

    async def _post(self, url: str, message: dict, transaction: str | None = None) -> dict:
        message = {**message, "transaction": transaction or secrets.token_hex(8)}
        async with self.http.post(url, json=message, timeout=aiohttp.ClientTimeout(total=10)) as r:
            reply = await r.json(content_type=None)
        if reply.get("janus") == "error":
            raise RuntimeError(f"Janus: {reply['error']}")
        return reply

    async def _long_poll(self) -> None:
        while True:
            try:
                async with self.http.get(f"{JANUS_HTTP}/{self.session}?maxev=5",
                                         timeout=aiohttp.ClientTimeout(total=40)) as r:
                    events = await r.json(content_type=None)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                await asyncio.sleep(0.5)
                continue
            for event in events if isinstance(events, list) else [events]:
                future = self._waiting.get(event.get("transaction", ""))
                if future is not None and not future.done() and event.get("janus") != "ack":
                    future.set_result(event)


class Viewer:
    """An aiortc subscriber to the room's publisher, through Janus; keeps each frame's arrival time."""

    def __init__(self, janus: Janus):
        self.janus = janus
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.times: list[float] = []
        self._reader: asyncio.Task | None = None

    async def open(self, feed: int) -> "Viewer":
        handle = await self.janus.attach()
        event = await self.janus.request(handle, {"request": "join", "ptype": "subscriber", "room": ROOM,
                                                  "streams": [{"feed": feed}]})
        jsep = event.get("jsep")
        if not jsep:
            raise RuntimeError(f"Janus sent no offer to the subscriber: {event}")

        @self.pc.on("track")
        def on_track(track) -> None:
            self._reader = asyncio.ensure_future(self._read(track))

        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=jsep["sdp"], type=jsep["type"]))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await self.janus.request(handle, {"request": "start"},
                                 jsep={"type": "answer", "sdp": self.pc.localDescription.sdp})
        return self

    async def _read(self, track) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                self.times.append(time.monotonic())

    def rate(self, t0: float, t1: float) -> float:
        return sum(1 for t in self.times if t0 <= t < t1) / (t1 - t0)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self.pc.close()


async def until(predicate, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out ({timeout:g} s) waiting for {what}")
        await asyncio.sleep(0.2)


async def wait_frames(viewers: list[Viewer], n: int, timeout: float = 20.0) -> None:
    async def enough() -> bool:
        return all(len(v.times) >= n for v in viewers)
    await until(enough, f"{n} frames at each of {len(viewers)} viewers", timeout)


async def frames_sent(http: aiohttp.ClientSession, port: int) -> int:
    """The frames our server's WHIP publisher has handed to its encoder (its track's count)."""
    async with http.get(f"http://127.0.0.1:{port}/api/health") as r:
        return (await r.json())["whip"]["frames_sent"] or 0


async def measure(viewers: list[Viewer], pids: list[int], seconds: float, http: aiohttp.ClientSession,
                  port: int) -> tuple[list[float], list[float], float]:
    """Each viewer's frames per second, each process's CPU (% of one core) and the rate our
    publisher sent at, over `seconds`."""
    s0 = await frames_sent(http, port)
    t0, c0 = time.monotonic(), [cpu_seconds(p) for p in pids]
    await asyncio.sleep(seconds)
    t1, c1 = time.monotonic(), [cpu_seconds(p) for p in pids]
    s1 = await frames_sent(http, port)
    return ([round(v.rate(t0, t1), 2) for v in viewers], [round(100 * (b - a) / (t1 - t0), 1) for a, b in zip(c0, c1)],
            round((s1 - s0) / (t1 - t0), 2))


async def start_sfu(procs: Processes, http: aiohttp.ClientSession, token: str) -> Janus:
    procs.start_sfu()
    await wait_http(http, f"{JANUS_HTTP}/info", "Janus")
    await wait_http(http, f"{WHIP_BASE}/healthcheck", "simple-whip-server")
    async with http.post(f"{WHIP_BASE}/create", json={"id": ENDPOINT, "room": ROOM, "label": ENDPOINT,
                                                      "token": token}) as r:
        if r.status != 200:
            raise RuntimeError(f"cannot create the WHIP endpoint: {r.status} {await r.text()}")
    return await Janus(http).open()


async def our_publisher(janus: Janus, handle: int, timeout: float) -> int:
    found: list[int] = []

    async def present() -> bool:
        found[:] = [p["id"] for p in await janus.publishers(handle)]
        return bool(found)
    await until(present, "our server's publisher in the room", timeout)
    return found[0]


async def scenario(work: Path, token: str, port: int, window_s: float) -> dict:
    procs = Processes(work)
    result: dict = {"fps": {}, "sent_fps": {}, "cpu_percent": {}, "janus_cpu_percent": {}, "window_s": window_s,
                    "load_average": os.getloadavg()[0]}
    viewers: list[Viewer] = []
    async with aiohttp.ClientSession() as http:
        try:
            janus = await start_sfu(procs, http, token)
            admin = await janus.attach()
            t_start = time.monotonic()
            procs.start_server(port, token)
            feed = await our_publisher(janus, admin, timeout=60)
            result["publish_s"] = round(time.monotonic() - t_start, 1)
            log("publishing after", result["publish_s"], "s")

            await asyncio.sleep(3.0)          # past the first blocks' warm-up
            pids = [procs.server.pid, procs.janus.pid]
            _, (result["cpu_percent"]["0"], result["janus_cpu_percent"]["0"]), result["sent_fps"]["0"] = \
                await measure([], pids, window_s, http, port)
            log("publishing, no viewer: server CPU", result["cpu_percent"]["0"], "%")
            for n in VIEWERS:
                while len(viewers) < n:
                    viewers.append(await Viewer(janus).open(feed))
                await wait_frames(viewers, 16)
                await asyncio.sleep(1.0)
                key = str(n)
                result["fps"][key], (result["cpu_percent"][key], result["janus_cpu_percent"][key]), \
                    result["sent_fps"][key] = await measure(viewers, pids, window_s, http, port)
                log(f"{n} viewers:", result["fps"][key], "fps (publisher sent", result["sent_fps"][key],
                    "fps); server CPU", result["cpu_percent"][key], "%; Janus", result["janus_cpu_percent"][key], "%")
            result["listening"] = listening()
            for v in viewers:
                await v.close()
            viewers.clear()
            await janus.close()

            # the SFU goes away and comes back: the publisher must find it again by itself
            t_down = time.monotonic()
            procs.stop_sfu()
            await asyncio.sleep(1.0)
            janus = await start_sfu(procs, http, token)
            admin = await janus.attach()
            feed = await our_publisher(janus, admin, timeout=60)
            result["reconnect_s"] = round(time.monotonic() - t_down, 1)
            viewers.append(await Viewer(janus).open(feed))
            await wait_frames(viewers, 8)
            fps, _, result["reconnect_sent_fps"] = await measure(viewers, [procs.server.pid], 2.0, http, port)
            result["reconnect_fps"] = fps[0]
            result["reconnected"] = True
            log("reconnected after", result["reconnect_s"], "s;", fps[0], "fps")
            async with http.get(f"http://127.0.0.1:{port}/api/health") as r:
                result["publisher"] = (await r.json()).get("whip")
            for v in viewers:
                await v.close()
            viewers.clear()

            # SIGTERM: the server must DELETE its resource before it goes
            result["server_exit"] = stop(procs.server, timeout=30)
            await asyncio.sleep(1.0)
            whip_log = (work / f"whip-{procs.runs}.log").read_text(errors="replace")
            result["deleted"] = f"/resource/: {ENDPOINT}" in whip_log
            result["participants_after_stop"] = len(await janus.publishers(admin))
            server_log = (work / "server.log").read_text(errors="replace")
            result["token_in_server_log"] = token in server_log
            result["server_log_whip_lines"] = [line[line.find("server.media.whip"):][:160] for line in server_log.splitlines()
                                               if "server.media.whip" in line][-8:]
            await janus.close()
        finally:
            for v in viewers:
                with contextlib.suppress(Exception):
                    await v.close()
            procs.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for configs and logs")
    parser.add_argument("--token", default=secrets.token_urlsafe(16), help="the WHIP endpoint's Bearer token")
    parser.add_argument("--port", type=int, default=8090, help="our server's HTTP port (inside the namespace)")
    parser.add_argument("--window", type=float, default=5.0, help="seconds each measurement lasts")
    args = parser.parse_args()
    setup_namespace()
    args.work.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(scenario(args.work, args.token, args.port, args.window))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
