"""`longlive serve`: load the pipeline, start the engine and serve the app until Ctrl-C or SIGTERM.

The port is taken first, so a port in use is reported before the slow model load. The
asyncio loop lives here and in the modules it serves (app, control, webrtc), nowhere else.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import ipaddress
import logging
import secrets
import signal
import socket
from typing import Callable, Iterable

from streaming.errors import UserError, one_line

from .engine import Engine

log = logging.getLogger("longlive")

# libraries whose INFO lines are per-connection chatter (ICE checks, DTLS states): warnings only,
# unless --log-level debug
CHATTY_LOGGERS = ("aioice", "aiortc", "aiohttp.access")


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    check_prompt(args.prompt)
    sock = listen(args.host, args.port)
    source = None
    try:
        bound, port = sock.getsockname()[:2]
        token, generated = performer_token(bound, args.token)
        door = door_from_args(args, bound)  # a bad --allow-host or --allow-origin is one sentence, before the load
        from .control.osc import options_from_args  # the OSC port too is taken before the model loads

        osc = options_from_args(argparse.Namespace(**{**vars(args), "token": token}))   # a made-up token locks OSC too
        from .performing.cues import CueBank

        cues = CueBank.load(args.cues)      # a bad cue file is one sentence before the model loads
        gst_sink = gst_sink_pipeline(args)  # so are missing GStreamer and a bad --gst-sink pipeline
        input_file = input_file_of(args)    # and an --input file that cannot be read
        engine = build_engine(args)
        source = start_input(engine, input_file, args)
        from .app import create_app  # aiohttp/aiortc load only when serving
        from .door.roles import Access
        from .media.webrtc import MediaOptions

        folder = args.record if args.record is not None else args.recordings
        from .enhance import AsyncPromptEnhancer

        from .door.limits import Limits

        app = create_app(engine, host=bound,    # media offered where HTTP listens
                         recordings=folder, record=args.record is not None,
                         enhancer=AsyncPromptEnhancer(enabled=not args.no_ai), osc=osc,
                         cues=cues, bpm=args.bpm, link=args.link,
                         media=MediaOptions(bitrate=args.bitrate * 1000, keyframe_interval_s=args.keyframe_interval,
                                            ice_servers=tuple(args.ice_server)),
                         whip=whip_options(args), gst_sink=gst_sink,
                         access=Access(token, args.viewer_token, args.max_viewers), door=door,
                         limits=Limits(control_per_second=getattr(args, "control_rate", 30.0),
                                       offers_per_minute=getattr(args, "offer_rate", 60.0)))
    except BaseException:
        sock.close()
        if source is not None:
            source.stop()
        raise
    lines = announcement(bound, port, token, generated, engine.pipe.cfg.name if engine.pipe.embedded_default else None)
    try:
        return asyncio.run(_serve(app, sock, lines))
    finally:
        if source is not None:
            source.stop()


def input_file_of(args: argparse.Namespace) -> str | None:
    """`--input FILE`, checked (readable, with video frames) before the model loads."""
    path = getattr(args, "input", None)
    if path is None:
        return None
    from .media.file_source import check

    check(path)
    return path


def start_input(engine: Engine, path: str | None, args: argparse.Namespace):
    """The engine's input clock fed by the --input file's thread (None without --input)."""
    if path is None:
        return None
    from .media.file_source import FileSource
    from .media.input_clock import InputClock

    engine.input = InputClock(fps=engine.pipe.fps)
    engine.input_strength = getattr(args, "strength", 0.7)
    source = FileSource(path, engine.input, fit=engine.pipe.size)
    source.start()
    return source


def check_prompt(text: str) -> None:
    """--prompt keeps to the limit every prompt keeps to (UserError otherwise)."""
    from .protocol import MAX_PROMPT_CHARS

    if not text.strip():
        raise UserError("--prompt must not be empty")
    if len(text.strip()) > MAX_PROMPT_CHARS:
        raise UserError(f"--prompt is {len(text.strip())} characters long; the limit is {MAX_PROMPT_CHARS}")


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def performer_token(bound: str, given: str | None) -> tuple[str | None, bool]:
    """The performer token to serve with, and whether it was made up here: the one given
    (--token, $LONGLIVE_TOKEN); none for a loopback bind without one (this machine only, everyone
    here steers); for any other bind without one, a new random one, so that nobody on the network
    steers a show by accident."""
    if given is not None:
        return given, False
    if is_loopback(bound):
        return None, False
    return secrets.token_urlsafe(18), True


def door_from_args(args: argparse.Namespace, bound: str):
    """The door (server/door/checks.py) for a server bound to `bound`, with --allow-host and --allow-origin."""
    from .door.checks import Door

    try:
        return Door(bind=bound, allow_hosts=getattr(args, "allow_host", None) or (),
                    allow_origins=getattr(args, "allow_origin", None) or ())
    except ValueError as e:
        raise UserError(str(e)) from None


def reachable(bound: str, port: int, addresses: Callable[..., Iterable[str]] | None = None) -> list[str]:
    """The URLs a server bound to `bound` can be opened at from other machines: the bound
    address, or for an all-interfaces bind every address of the machine (the ones WebRTC offers
    candidates on); none for a loopback bind."""
    if is_loopback(bound):
        return []
    if addresses is None:
        from .addresses import machine_addresses as addresses
    if ipaddress.ip_address(bound).is_unspecified:
        found = [a for a in addresses(use_ipv4=True, use_ipv6=bound == "::") if not is_loopback(a)]
    else:
        found = [bound]
    return [url(a, port) for a in found]


def announcement(bound: str, port: int, token: str | None, generated: bool, embedded_default: str | None,
                 addresses: Callable[..., Iterable[str]] | None = None) -> list[str]:
    """What `serve` prints once it listens: where to open it (and the embedded default's preset
    when no weights were given), and, when it made one up, the performer token, in a URL that
    carries it (printed this once, on stdout; never logged)."""
    lines = [f"LongLive live is serving on {url(bound, port)}" + (f"  ({embedded_default} embedded default)"
                                                                   if embedded_default else "")]
    urls = reachable(bound, port, addresses)
    if ipaddress.ip_address(bound).is_unspecified:
        lines.append("  on the network: " + ("  ".join(urls) if urls else "no address found besides this machine's"))
    if generated and token is not None:
        where = urls[0] if urls else url(bound, port)
        lines.append(f"  to steer, open {where}?token={token}  (a performer token made up for this run, shown "
                     "only here; --token T to choose one); everyone else only watches")
    elif token is not None and not is_loopback(bound):
        lines.append("  steering needs the performer token (--token); everyone else only watches")
    return lines


def whip_options(args: argparse.Namespace):
    """`--whip URL [--whip-token T]` as the publisher's options (None without --whip)."""
    if getattr(args, "whip", None) is None:
        return None
    from .media.whip import WhipOptions

    return WhipOptions(url=args.whip, token=getattr(args, "whip_token", None),
                       ice_servers=tuple(getattr(args, "ice_server", None) or ()))


def gst_sink_pipeline(args: argparse.Namespace) -> str | None:
    """`--gst-sink PIPELINE`, checked: GStreamer is installed and the pipeline parses (UserError otherwise)."""
    pipeline = getattr(args, "gst_sink", None)
    if pipeline is None:
        return None
    from .media.gst_sink import check

    check(pipeline)
    return pipeline


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if level.lower() != "debug":
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def build_engine(args: argparse.Namespace) -> Engine:
    """Load the config and the pipeline (the slow part with real weights)."""
    from streaming.config import choose_preset, load_config
    from streaming.pipeline import VideoPipeline

    cfg = load_config(choose_preset(args.config, args.weights))
    try:
        pipe = VideoPipeline.from_config(cfg, weights=args.weights, device=args.device)
    except UserError:
        raise
    except (RuntimeError, OSError) as e:
        raise UserError(f"cannot start the generator: {one_line(e)}") from None
    if pipe.embedded_default:
        print(f"No weights given: running {cfg.about or cfg.name}. "
              "Use --weights DIR or LONGLIVE_WEIGHTS for LongLive 1.3B.", flush=True)
    return Engine(pipe, prompt=args.prompt, seed=args.seed, lead_blocks=args.lead_blocks,
                  rewind_bytes=None if args.rewind_memory is None else args.rewind_memory << 20)


async def _serve(app, sock: socket.socket, lines: list[str]) -> int:
    from aiohttp import web

    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):   # not on this platform
            pass
    print("\n".join(lines), flush=True)     # the only place a made-up token is shown (never logged)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await runner.cleanup()
    print("stopped", flush=True)
    return 0


def url(host: str, port: int) -> str:
    """The address to open in a browser (all-interfaces binds are shown as this machine)."""
    shown = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}/"


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or UserError in one sentence."""
    try:
        family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.create_server((host, port), family=family, backlog=128)
    except socket.gaierror:
        raise UserError(f"cannot listen on {host}:{port}: unknown host {host!r}") from None
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            import os   # `make serve` says it started us: there the port is PORT=, not --port
            how = "make serve PORT=N" if os.environ.get("LONGLIVE_VIA_MAKE") else "--port"
            raise UserError(f"port {port} on {host} is already in use; pick another with {how}") from None
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.setblocking(False)
    return sock
