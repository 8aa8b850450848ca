"""The door (server/door/checks.py): pages on other sites cannot steer the show, names that are not the
server's are refused (DNS rebinding), an oversized body is one sentence, recordings never leave
their folder, and a non-loopback bind without --token makes up a performer token shown once.

The app runs in-process on 127.0.0.1 (fake pipeline, real engine thread, HTTP and WebSocket);
every request goes to 127.0.0.1, and only its Host or Origin header names another place.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from server.app import RECORDER, SESSIONS, create_app
from server.door.checks import Door, host_name, origin_key
from server.engine import Engine
from server import serve
from streaming.errors import UserError
from test_engine import FakePipeline
from test_roles import next_of

DEADLINE_S = 60.0       # a deadline on any one wait, never a timing assertion
EVIL = "http://evil.example"


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, **app_kw: Any) -> AsyncIterator[tuple[Any, Engine, str]]:
    """The app on 127.0.0.1 (a free port); yields (app, engine, base URL)."""
    engine = Engine(FakePipeline(size=(32, 16)), prompt="start", seed=3)
    app = create_app(engine, recordings=tmp_path / "recordings", **app_kw)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield app, engine, str(server.make_url("")).rstrip("/")
    finally:
        await app[SESSIONS].close_all()
        await server.close()


async def applied(engine: Engine, text: str) -> list[str]:
    """Wait until `text` is the applied prompt; the texts of every applied prompt."""
    deadline = time.monotonic() + DEADLINE_S
    while engine.state().prompt != text or engine.state().pending_prompt is not None:
        assert time.monotonic() < deadline, engine.state()
        await asyncio.sleep(0.02)
    return [p["text"] for p in engine.state().history]


# -- names ------------------------------------------------------------------------------------------
def test_host_and_origin_are_read_the_way_browsers_write_them():
    assert host_name("127.0.0.1:8080") == "127.0.0.1"
    assert host_name("[::1]:8080") == "::1" and host_name("[0:0::1]") == "::1"
    assert host_name("Show.Example.COM.:443") == "show.example.com"
    for bad in ("", "[::1", "[::1]x", "a/b", "a:b", "evil.example@127.0.0.1", "x\x00y", "[not-v6]:80"):
        assert host_name(bad) is None, bad
    assert origin_key("https://Show.Example.com:443") == "https://show.example.com"
    assert origin_key("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    for bad in ("null", "file://", "ftp://x", "http://x/path", "http://user@x"):
        assert origin_key(bad) is None, bad


def test_the_door_answers_to_its_own_names_only():
    loop = Door(bind="127.0.0.1", hostname=lambda: "studio")
    assert loop.names == {"127.0.0.1", "localhost", "::1"}          # no interface address, no host name
    for host in ("127.0.0.1:8080", "localhost:8080", "[::1]:8080", "LOCALHOST."):
        assert loop.host_allowed(host), host
    for host in ("evil.example:8080", "127.0.0.1.evil.example", "studio", "192.0.2.2:8080"):
        assert not loop.host_allowed(host), host

    now = [0.0]
    found = [("192.0.2.2",)]
    every = Door(bind="0.0.0.0", allow_hosts=("show.example.com",), hostname=lambda: "Studio",
                 addresses=lambda bind: found[0], clock=lambda: now[0])
    assert {"192.0.2.2", "127.0.0.1", "localhost", "studio", "studio.local", "show.example.com"} <= every.names
    assert every.host_allowed("192.0.2.2:8080") and every.host_allowed("show.example.com")
    assert not every.host_allowed("evil.example")
    found[0] = ("192.0.2.2", "198.51.100.7")           # the machine gained an address (DHCP, a new interface)
    assert not every.host_allowed("198.51.100.7")     # looked at no more often than every 10 s
    now[0] = 11.0
    assert every.host_allowed("198.51.100.7")
    assert Door(bind="192.0.2.2", hostname=lambda: "studio").names == {"192.0.2.2", "studio", "studio.local"}

    assert loop.origin_allowed(None, "127.0.0.1:8080")
    assert loop.origin_allowed("http://127.0.0.1:8080", "127.0.0.1:8080")
    assert loop.origin_allowed("https://show.example.com", "show.example.com")     # a TLS proxy in front
    assert not loop.origin_allowed(EVIL, "127.0.0.1:8080")
    assert not loop.origin_allowed("http://127.0.0.1:9999", "127.0.0.1:8080")   # another port is another site
    assert not loop.origin_allowed("null", "127.0.0.1:8080")
    proxied = Door(bind="127.0.0.1", allow_origins=("https://show.example.com",))
    assert proxied.origin_allowed("https://show.example.com:443", "127.0.0.1:8080")
    with pytest.raises(ValueError, match="allow-origin"):
        Door(allow_origins=("show.example.com",))
    with pytest.raises(ValueError, match="allow-host"):
        Door(allow_hosts=("http://x/y",))


# -- cross-site requests ------------------------------------------------------------------------------
@pytest.mark.integration
def test_a_cross_site_form_cannot_switch_the_prompt(tmp_path):
    """An HTML form on any site can POST text/plain or form-encoded bodies to 127.0.0.1 without a
    preflight; the JSON inside such a body must not be read."""
    async def main():
        async with serving(tmp_path) as (app, engine, url), aiohttp.ClientSession() as http:
            forged = [("/api/prompt", "text/plain", '{"text": "forged plain"}'),
                      ("/api/prompt", "application/x-www-form-urlencoded", '{"text": "forged form"}'),
                      ("/api/prompt", "multipart/form-data; boundary=x", '{"text": "forged multipart"}'),
                      ("/api/command", "text/plain", '{"type": "prompt", "text": "forged command"}'),
                      ("/api/command", "text/plain", '{"type": "record", "on": true}'),
                      ("/api/offer", "text/plain", '{"sdp": "v=0", "type": "offer"}')]
            for path, kind, body in forged:
                for origin in ({"Origin": EVIL}, {}):     # with the Origin a browser sends, and without
                    r = await http.post(url + path, data=body, headers={"Content-Type": kind, **origin})
                    reply = await r.json()
                    assert r.status == (403 if origin else 415), (path, kind, r.status, reply)
                    assert ("other sites" if origin else f"is sent as application/json (Content-Type), not {kind}") \
                        in reply["error"], reply
            # a body without a Content-Type is no better
            r = await http.post(url + "/api/prompt", data=b'{"text": "forged untyped"}',
                                skip_auto_headers=("Content-Type",))
            assert r.status == 415 and "not no Content-Type" in (await r.json())["error"]
            # the page's own request (same origin, JSON) goes through
            r = await http.post(url + "/api/prompt", json={"text": "from the page"},
                                headers={"Origin": url})
            assert r.status == 202, await r.text()
            texts = await applied(engine, "from the page")
            assert not [t for t in texts if t.startswith("forged")], texts
            assert app[RECORDER].status() is None and app[SESSIONS].count == 0    # no recording, no session
            # a DELETE without a body needs no type (the page's unload), and one with the wrong type is refused
            r = await http.delete(url + "/api/sessions/nobody")
            assert r.status == 404 and "no session" in (await r.json())["error"]
            r = await http.delete(url + "/api/sessions/nobody", data="x", headers={"Content-Type": "text/plain"})
            assert r.status == 415
    asyncio.run(main())


@pytest.mark.integration
def test_pages_on_other_sites_are_refused_on_api_and_the_websocket(tmp_path):
    async def main():
        async with serving(tmp_path, door=Door(bind="127.0.0.1", allow_origins=("https://show.example.com",))) \
                as (app, engine, url), aiohttp.ClientSession() as http:
            for method, path, body in (("GET", "/api/state", None), ("GET", "/api/recordings", None),
                                       ("POST", "/api/prompt", {"text": "from evil"}),
                                       ("POST", "/api/command", {"type": "pause"}),
                                       ("POST", "/api/offer", {"sdp": "v=0", "type": "offer"}),
                                       ("DELETE", "/api/sessions/nobody", None)):
                for origin in (EVIL, "null", url.replace("127.0.0.1", "localhost")):
                    r = await http.request(method, url + path, json=body, headers={"Origin": origin})
                    assert r.status == 403, (method, path, origin, r.status)
                    assert "requests from pages on other sites are refused" in (await r.json())["error"]
            # the WebSocket is refused before the upgrade
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url + "/api/control?format=json", headers={"Origin": EVIL})
            assert refused.value.status == 403
            assert app[SESSIONS].count == 0 and not engine.state().paused
            # the server's own origin and an allowed one get in
            ws = await http.ws_connect(url + "/api/control?format=json", headers={"Origin": url})
            await next_of(ws, "hello")
            await ws.send_json({"type": "prompt", "text": "same origin", "id": 1})
            assert (await next_of(ws, "ack"))["id"] == 1
            await ws.close()
            r = await http.post(url + "/api/prompt", json={"text": "through the proxy"},
                                headers={"Origin": "https://show.example.com"})
            assert r.status == 202
            assert "from evil" not in await applied(engine, "through the proxy")
            # WHEP is for players on other sites: the door lets their Origin through (CORS answers it)
            r = await http.options(url + "/whep", headers={"Origin": EVIL})
            assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == EVIL
            r = await http.post(url + "/whep", data="v=0\r\nnot an offer",
                                headers={"Content-Type": "application/sdp", "Origin": EVIL})
            assert r.status == 400                  # refused for the offer, not for the origin
    asyncio.run(main())


@pytest.mark.integration
def test_names_that_are_not_the_servers_are_refused(tmp_path):
    """DNS rebinding: a site points its own name at 127.0.0.1; its requests then carry its Host."""
    async def main():
        async with serving(tmp_path, door=Door(bind="127.0.0.1", allow_hosts=("show.example.com",))) \
                as (app, engine, url), aiohttp.ClientSession() as http:
            port = url.rsplit(":", 1)[1]
            for path in ("/", "/app.js", "/watch", "/api/state", "/api/health", "/metrics", "/whep",
                         "/api/recordings"):
                r = await http.get(url + path, headers={"Host": f"evil.example:{port}"})
                assert r.status == 421, (path, r.status)
                assert "does not answer to the name 'evil.example:" in await r.text()
            r = await http.post(url + "/api/prompt", json={"text": "rebound"}, headers={"Host": f"evil.example:{port}",
                                                                                      "Origin": f"http://evil.example:{port}"})
            assert r.status == 421
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url + "/api/control", headers={"Host": f"evil.example:{port}"})
            assert refused.value.status == 421
            for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "show.example.com"):
                r = await http.get(url + "/api/state", headers={"Host": host})
                assert r.status == 200, host
            r = await http.get(url + "/", headers={"Host": f"localhost:{port}"})
            assert r.status == 200 and "<video" in await r.text()
            assert engine.state().prompt == "start"
    asyncio.run(main())


@pytest.mark.integration
def test_an_oversized_body_is_one_sentence(tmp_path):
    async def main():
        async with serving(tmp_path) as (app, engine, url), aiohttp.ClientSession() as http:
            big = '{"text": "' + "x" * (300 * 1024) + '"}'
            r = await http.post(url + "/api/prompt", data=big, headers={"Content-Type": "application/json"})
            assert r.status == 413
            assert (await r.json())["error"] == ("the body is larger than 262144 bytes (256 KiB), "
                                                 "the most this server reads")

            async def chunks():                # no Content-Length: found out while reading
                for _ in range(40):
                    yield b"x" * 10_000
            r = await http.post(url + "/api/command", data=chunks(), headers={"Content-Type": "application/json"})
            assert r.status == 413 and "262144 bytes" in (await r.json())["error"]
            assert engine.state().prompt == "start"
    asyncio.run(main())


# -- path tricks ------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_recordings_never_leave_their_folder(tmp_path):
    folder = tmp_path / "recordings"
    folder.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("the secret")
    (folder / "longlive-20250101-120000.mp4").write_bytes(b"real video")
    os.symlink(secret, folder / "longlive-20250101-130000.mp4")                  # a link out of the folder
    os.symlink(tmp_path, folder / "longlive-20250101-140000.timeline.json")      # a link to a folder
    os.symlink(folder / "longlive-20250101-120000.mp4", folder / "longlive-20250101-150000.mp4")  # inside: fine

    async def main():
        async with serving(tmp_path) as (app, engine, url), aiohttp.ClientSession() as http:
            r = await http.get(url + "/api/recordings/longlive-20250101-120000.mp4")
            assert r.status == 200 and await r.read() == b"real video"
            r = await http.get(url + "/api/recordings/longlive-20250101-150000.mp4")
            assert r.status == 200 and await r.read() == b"real video"
            listed = [f["name"] for f in (await (await http.get(url + "/api/recordings")).json())["files"]]
            assert listed == ["longlive-20250101-150000.mp4", "longlive-20250101-120000.mp4"], listed
            tricks = ["..%2Fsecret.txt", "%2E%2E%2Fsecret.txt", "..%5Csecret.txt", f"{str(secret).replace('/', '%2F')}",
                      "%2Fetc%2Fpasswd", "longlive-20250101-120000.mp4%00", "longlive-20250101-120000.mp4%0A",
                      "longlive-20250101-120000.mp4%2F..%2F..%2Fsecret.txt", "longlive-20250101-130000.mp4",
                      "longlive-20250101-140000.timeline.json", "secret.txt", "%00"]
            for name in tricks:
                r = await http.get(url + "/api/recordings/" + name, allow_redirects=False)
                body = await r.read()
                assert r.status == 404, (name, r.status, body)
                assert b"the secret" not in body and b"root:" not in body
                assert "no recording" in (await r.json())["error"] and "outside the folder" in (await r.json())["error"]
            # the URL itself climbing out is normalised away before routing: never the secret
            r = await http.get(url + "/api/recordings/../../secret.txt")
            assert r.status == 404 and b"the secret" not in await r.read()
            # the static files: NUL bytes and climbing are a 404 too, never a 500
            for name in ("app.js%00", "%00.js", "..%2F..%2Fsecret.txt", "..%2Fserver%2Fapp.py", "%2Fetc%2Fpasswd"):
                r = await http.get(url + "/" + name)
                assert r.status == 404, (name, r.status)
            # no command names a file: every field that could is refused by the schema
            for cmd, fragment in (({"type": "record", "on": True, "path": "../x"}, "has no field 'path'"),
                                  ({"type": "record", "on": "../x"}, "must be"),
                                  ({"type": "rewind", "segment": "../../etc/passwd"}, "must be an integer"),
                                  ({"type": "timeline", "timeline": "/etc/passwd"}, "timeline"),
                                  ({"type": "timeline", "timeline": {"file": "../x"}}, "timeline")):
                r = await http.post(url + "/api/command", json=cmd)
                assert r.status == 400 and fragment in (await r.json())["error"], (cmd, await r.text())
            assert sorted(p.name for p in folder.iterdir()) == sorted(
                ["longlive-20250101-120000.mp4", "longlive-20250101-130000.mp4",
                 "longlive-20250101-140000.timeline.json", "longlive-20250101-150000.mp4"])
    asyncio.run(main())


# -- binding and the made-up token -------------------------------------------------------------------
def test_a_loopback_bind_needs_no_token_and_any_other_gets_one(caplog):
    caplog.set_level(logging.DEBUG)
    assert serve.performer_token("127.0.0.1", None) == (None, False)
    assert serve.performer_token("::1", None) == (None, False)
    assert serve.performer_token("0.0.0.0", "chosen-by-me") == ("chosen-by-me", False)
    token, made = serve.performer_token("0.0.0.0", None)
    assert made and len(token) >= 24 and token != serve.performer_token("0.0.0.0", None)[0]
    assert serve.performer_token("192.0.2.2", None)[1]

    def addresses(use_ipv4=True, use_ipv6=True):
        return [a for a in ("192.0.2.2", "fd00::2") if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    lines = serve.announcement("0.0.0.0", 8080, token, True, "tiny", addresses=addresses)
    text = "\n".join(lines)
    assert lines[0] == "LongLive live is serving on http://127.0.0.1:8080/  (tiny embedded default)"
    assert "on the network: http://192.0.2.2:8080/" in text and "fd00" not in text     # 0.0.0.0 is IPv4 only
    assert text.count(token) == 1 and f"http://192.0.2.2:8080/?token={token}" in text
    assert "[fd00::2]" in "\n".join(serve.announcement("::", 8080, token, True, None, addresses=addresses))
    given = "\n".join(serve.announcement("0.0.0.0", 8080, "chosen-by-me", False, None, addresses=addresses))
    assert "chosen-by-me" not in given and "needs the performer token" in given
    local = serve.announcement("127.0.0.1", 8080, None, False, None, addresses=addresses)
    assert local == ["LongLive live is serving on http://127.0.0.1:8080/"]
    assert token not in caplog.text


def test_serve_prints_a_made_up_token_once_and_never_logs_it(capsys, caplog, tmp_path, monkeypatch):
    """`serve.run` with a non-loopback bind and no --token, up to the point where it would serve:
    the socket is a stand-in bound to 127.0.0.1 that reports 0.0.0.0 (nothing leaves 127.0.0.0/8)."""
    caplog.set_level(logging.DEBUG)
    from longlive.cli import build_parser

    args = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--port", "8080", "--recordings",
                                      str(tmp_path), "--no-ai"])
    args.subcommand = None
    seen: dict[str, Any] = {}

    class Sock:
        def getsockname(self):
            return ("0.0.0.0", 8080)

        def close(self):
            pass

    monkeypatch.setattr(serve, "listen", lambda host, port: Sock())
    monkeypatch.setattr(serve, "build_engine", lambda a: Engine(FakePipeline(size=(32, 16)), prompt="start"))
    monkeypatch.setattr("server.addresses.machine_addresses", lambda use_ipv4=True, use_ipv6=True: ("192.0.2.2",))

    async def fake_serve(app, sock, lines):
        from server.app import ACCESS
        seen["access"], seen["lines"] = app[ACCESS], lines
        print("\n".join(lines))
        return 0

    monkeypatch.setattr(serve, "_serve", fake_serve)
    assert serve.run(args) == 0
    token = seen["access"].token
    out = capsys.readouterr().out
    assert token and out.count(token) == 1 and f"http://192.0.2.2:8080/?token={token}" in out
    assert seen["access"].role(None) == "viewer" and seen["access"].role(token) == "performer"
    assert token not in caplog.text
    args.prompt = "x" * 2001
    with pytest.raises(UserError, match="2001 characters long; the limit is 2000"):
        serve.run(args)
    args.prompt, args.allow_origin = "fine", ["show.example.com"]
    with pytest.raises(UserError, match="allow-origin"):
        serve.door_from_args(args, "127.0.0.1")
