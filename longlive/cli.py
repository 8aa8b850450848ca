"""`longlive`: the one command line.

Each subcommand is one row of `SUBCOMMANDS`: its name, a line of help, the function that
declares its arguments (plain argparse, here, so `--help` imports nothing heavy) and the
function that runs it, named `"module:function"` and imported only when the command runs.
The rooms own the work: `server.serve` (the live server), `studio.generate` (offline video
files), `bench.speed` and `bench.kernel_check` (the tools that measure and check). To add a
command, write its run function in its room, its arguments here, and add a row.

Errors a user can cause (`streaming.errors.UserError` and its kinds) print one line
(`longlive: ...`) and exit with status 2; Ctrl-C exits with 130 and SIGTERM with 143, in
both cases after the command has cleaned up (no half-written files).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

from studio import stopping   # a flag only (studio/__init__ imports nothing): imported before any signal

EXIT_USAGE = 2
MAX_SECONDS = 24 * 3600       # longest `generate` (a day of video)

Run = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Union[str, Run]      # "module:function", imported when the command runs (or the function itself)

    def target(self) -> Run:
        if callable(self.run):
            return self.run
        module, _, function = self.run.partition(":")
        return getattr(importlib.import_module(module), function)


# -- argument types: each refusal is one sentence --------------------------------------------
def _whole(text: str, what: str = "a whole number") -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def seed(text: str) -> int:
    from streaming.noise import SEED_MAX

    value = _whole(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"{value} is out of range; a seed is between 0 and {SEED_MAX}")
    return value


def positive_int(text: str) -> int:
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def port(text: str) -> int:
    value = _whole(text, "a port number")
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{value} is out of range; a port is between 1 and 65535")
    return value


def megabytes(text: str) -> int:
    value = _whole(text, "a number of MiB")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 (off) or more")
    return value


def osc_target(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets: [::1]:9000), where OSC replies go."""
    host, sep, number = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not number.isdigit() or not 0 < int(number) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT; write it like 127.0.0.1:9000 "
                                         "(a port between 1 and 65535)")
    return host, int(number)


def token(text: str) -> str:
    if len(text) < 8 or len(text) > 256 or any(c.isspace() or not c.isprintable() for c in text):
        raise argparse.ArgumentTypeError("a token is 8 to 256 printable characters without spaces")
    return text


def allowed_host(text: str) -> str:
    """--allow-host NAME: a host name or address the server also answers to (no scheme, no path)."""
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if not bare or len(bare) > 253 or any(c in bare for c in "/\\@?#% \t") or "://" in text:
        raise argparse.ArgumentTypeError(f"{text[:60]!r} is not a host name; write it like show.example.com")
    return text


def allowed_origin(text: str) -> str:
    """--allow-origin ORIGIN: scheme://host[:port] of a site whose pages may use /api."""
    scheme, sep, rest = text.partition("://")
    if scheme not in ("http", "https") or not sep or not rest or any(c in rest for c in "/?#@ ") :
        raise argparse.ArgumentTypeError(f"{text[:60]!r} is not an origin; write it like https://show.example.com")
    return text


def rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"{text} is outside 0 (no limit) to 100000")
    return value


def kbps(text: str) -> int:
    value = _whole(text, "a bitrate in kbit/s")
    if not 50 <= value <= 50_000:
        raise argparse.ArgumentTypeError(f"{value} kbit/s is outside 50-50000")
    return value


def _real(text: str, lo: float, hi: float, unit: str, what: str) -> float:
    """A number from lo to hi; the mistakes say what it is ("a number of seconds", "...BPM...")."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of {unit}") from None
    if not lo <= value <= hi:
        raise argparse.ArgumentTypeError(f"{what} of {text} is outside {lo:g}-{hi:g}")
    return value


def keyframe_seconds(text: str) -> float:
    return _real(text, 0.5, 600, "seconds", "a keyframe interval")


def strength(text: str) -> float:
    value = _real(text, 0.0, 1.0, "strength (0 to 1)", "a strength")
    if value != value:                       # nan passes the range check
        raise argparse.ArgumentTypeError("a strength is a number from 0 to 1")
    return value


def ice_server(text: str) -> str:
    if not text.startswith(("stun:", "stuns:", "turn:", "turns:")) or len(text) > 500 or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"{text[:60]!r} is not a stun: or turn: URL")
    return text


def whip_url(text: str) -> str:
    """A WHIP endpoint: an http:// or https:// URL with a host (what is shown of it leaves out any secrets)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port                      # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError("the WHIP endpoint must be an http:// or https:// URL with a host, "
                                         "like https://sfu.example.com/whip/endpoint/stage")
    return text


def bpm(text: str) -> float:
    return _real(text, 20, 300, "beats per minute", "a tempo (BPM)")


def resolution(text: str) -> tuple[int, int]:
    width, x, height = text.lower().partition("x")
    try:
        w, h = int(width), int(height)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a resolution; write it WIDTHxHEIGHT, like 832x480") from None
    if not x or not (0 < w <= 8192 and 0 < h <= 8192):
        raise argparse.ArgumentTypeError(f"{text!r} is out of range; width and height are between 1 and 8192")
    return w, h


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"{text} is out of range; give more than 0 and at most {MAX_SECONDS} "
                                         "seconds (a day)")
    return value


# -- arguments -------------------------------------------------------------------------------------
def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="preset name from configs/ (toy, tiny, longlive) or a YAML path "
                   "(default: longlive with weights, else toy, the toy world trained here)")
    p.add_argument("--weights", type=Path, default=os.environ.get("LONGLIVE_WEIGHTS") or None, metavar="DIR",
                   help="folder with the LongLive weights (default: $LONGLIVE_WEIGHTS; none: the toy world's own weights)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: the config's, usually auto)")


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    _model_arguments(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0: every interface, "
                        "and then a performer token is made up unless --token gives one)")
    p.add_argument("--port", type=port, default=8080, help="port to listen on (default: 8080)")
    p.add_argument("--seed", type=seed, default=0, help="noise seed of the first stream (default: 0)")
    p.add_argument("--prompt", default="A drifting nebula of glowing particles, slow camera push-in",
                   help="prompt of the first stream")
    p.add_argument("--lead-blocks", type=positive_int, default=1,
                   help="blocks generated ahead of playback (default: 1; more = smoother, slower to react)")
    p.add_argument("--recordings", type=Path, default=Path("recordings"), metavar="DIR",
                   help="folder the Record button writes to (default: ./recordings)")
    p.add_argument("--record", type=Path, default=None, metavar="DIR",
                   help="record from the start into DIR (it becomes the recordings folder)")
    p.add_argument("--no-ai", action="store_true",
                   help="no AI prompt enhancement (default: on when ANTHROPIC_API_KEY is set)")
    p.add_argument("--cues", type=Path, default=None, metavar="FILE",
                   help="the cue bank, a YAML file (default: configs/cues/default.yaml, nine cues)")
    p.add_argument("--bpm", type=bpm, default=120.0, help="tempo for cues on the beat (default: 120; tap it in the page)")
    p.add_argument("--link", action="store_true",
                   help="follow an Ableton Link session's tempo and beat (needs the aalink package)")
    p.add_argument("--rewind-memory", type=megabytes, default=None, metavar="MiB",
                   help="host memory for rewind snapshots, one per prompt segment, oldest dropped first "
                        "(default: a quarter of this machine's memory; 0 turns rewind off)")
    p.add_argument("--osc", type=port, default=None, metavar="PORT",
                   help="take OSC commands over UDP on this port (default: off); see docs/PROTOCOL.md, OSC")
    p.add_argument("--osc-host", default="127.0.0.1", metavar="HOST",
                   help="address the OSC port listens on (default: 127.0.0.1, this machine only)")
    p.add_argument("--osc-reply", type=osc_target, default=None, metavar="HOST:PORT",
                   help="send OSC acks, errors, state and beats to HOST:PORT (default: nowhere)")
    p.add_argument("--bitrate", type=kbps, default=1000, metavar="KBPS",
                   help="video bitrate of the one shared encoder every viewer gets (default: 1000 kbit/s)")
    p.add_argument("--keyframe-interval", type=keyframe_seconds, default=4.0, metavar="SECONDS",
                   help="a keyframe at least this often (default: 4); joining viewers get one at once")
    p.add_argument("--ice-server", action="append", default=[], metavar="URL", type=ice_server,
                   help="a STUN or TURN server (stun:host:port, turn:host:port), for viewers beyond the LAN; "
                        "announced to WHEP players; may be repeated")
    p.add_argument("--whip", type=whip_url, default=None, metavar="URL",
                   help="also publish the stream into an SFU or media server at this WHIP endpoint (RFC 9725), "
                        "reconnecting if it goes away; see docs/DEPLOY.md")
    p.add_argument("--whip-token", default=os.environ.get("LONGLIVE_WHIP_TOKEN") or None, metavar="TOKEN",
                   help="Bearer token for the WHIP endpoint (default: $LONGLIVE_WHIP_TOKEN; never logged)")
    p.add_argument("--gst-sink", default=None, metavar="PIPELINE",
                   help="also feed every frame into this GStreamer pipeline, after an appsrc "
                        "(e.g. \"x264enc ! mp4mux ! filesink location=out.mp4\"; needs GStreamer and PyGObject: "
                        "make gstreamer); see docs/GSTREAMER.md")
    p.add_argument("--input", default=None, metavar="FILE",
                   help="drive the stream with this video file, looped (video-to-video; read with PyAV)")
    p.add_argument("--strength", type=strength, default=0.7, metavar="S",
                   help="how far the words reshape the input, 0 (the input itself) to 1 (the words alone); "
                        "default 0.7")
    p.add_argument("--token", default=os.environ.get("LONGLIVE_TOKEN") or None, metavar="TOKEN", type=token,
                   help="the performer token: only peers presenting it steer, everybody else only watches "
                        "(default: $LONGLIVE_TOKEN; none: everyone steers)")
    p.add_argument("--viewer-token", default=os.environ.get("LONGLIVE_VIEWER_TOKEN") or None, metavar="TOKEN",
                   type=token, help="watching needs this token (or the performer's) too (default: "
                                    "$LONGLIVE_VIEWER_TOKEN; none: anyone who reaches the server watches)")
    p.add_argument("--max-viewers", type=positive_int, default=None, metavar="N",
                   help="refuse viewers beyond N (pages and WHEP players; default: no limit)")
    p.add_argument("--osc-allow", action="append", default=[], metavar="ADDRESS",
                   help="take OSC from this sender address (may be repeated); with --token, OSC is taken only "
                        "from this machine and these")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME", type=allowed_host,
                   help="also answer requests for this host name (a DNS name, or what a reverse proxy sends as "
                        "Host; may be repeated); other names are refused (DNS rebinding)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN", type=allowed_origin,
                   help="let pages from this origin (https://host[:port]) use /api, e.g. behind a proxy that "
                        "rewrites Host (may be repeated); pages on other sites are refused")
    p.add_argument("--control-rate", type=rate, default=30.0, metavar="N",
                   help="control messages a second per connection, client address or OSC sender, in bursts of "
                        "twice that (default: 30; 0: no limit); the excess gets an error and is dropped")
    p.add_argument("--offer-rate", type=rate, default=60.0, metavar="N",
                   help="WebRTC offers (pages and WHEP players) a minute per client address (default: 60; "
                        "0: no limit); the excess gets 429")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", required=True, help="what to generate")
    p.add_argument("--seconds", type=seconds, default=10.0, help="length of the video (default 10)")
    p.add_argument("-o", "--output", type=Path, default=Path("out.mp4"),
                   help="video file to write: .mp4, .m4v, .mov or .mkv, H.264 (default out.mp4)")
    p.add_argument("--seed", type=seed, default=0, help="noise seed (default 0): the same seed gives the same video")
    _model_arguments(p)


def add_render_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("timeline", type=Path, help="a timeline: a recording's .timeline.json, a Scope v2.0 timeline "
                   "or a Scope workflow (.scope-workflow.json)")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="video file to write: .mp4, .m4v, .mov or .mkv (default: the timeline's name, .mp4)")
    p.add_argument("--seed", type=seed, default=None, help="noise seed (default: the timeline's)")
    p.add_argument("--resolution", type=resolution, default=None, metavar="WxH",
                   help="frame size (default: the timeline's; adjusted to the nearest the model can make)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted render of the same output")
    _model_arguments(p)


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("story", help="the story, in a sentence or a page")
    p.add_argument("--seconds", type=seconds, default=60.0, help="length of the video (default 60)")
    p.add_argument("-o", "--output", type=Path, default=Path("timeline.json"),
                   help="the timeline to write (default timeline.json)")
    p.add_argument("--segments", type=positive_int, default=None,
                   help="how many prompt segments (default: one per 8 seconds)")
    p.add_argument("--seed", type=seed, default=None, help="noise seed written into the timeline's settings")


def add_interactive_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chunk-duration", type=seconds, default=10.0, metavar="SECONDS",
                   help="length of each chunk (default 10), rounded up to whole generator blocks")
    p.add_argument("--max-chunks", type=positive_int, default=6, help="most chunks in the video (default 6)")
    p.add_argument("--seed", type=seed, default=42,
                   help="noise seed (default 42): the same seed and the same prompts give the same video")
    p.add_argument("--output-dir", type=Path, default=Path("."), metavar="DIR",
                   help="folder for the session folder session_YYYYMMDD_HHMMSS/ (default: the current folder)")
    p.add_argument("--no-ai", action="store_true", help="use every prompt as written (no AI prompt enhancement)")
    p.add_argument("--timeline", type=Path, default=None, metavar="FILE",
                   help="a timeline (from longlive plan, a recording, Scope) as the chunk plan: one prompt per chunk")
    _model_arguments(p)


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None,
                   help="preset or YAML path (default: longlive, the full size, on a CUDA GPU; toy, the embedded "
                        "default, on a CPU)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--blocks", type=positive_int, default=8, help="steady-state blocks to time (default 8)")
    p.add_argument("--warmup", type=positive_int, default=3, help="blocks before timing (default 3)")
    p.add_argument("--fp8", action="store_true", help="FP8 linear layers in the DiT (Hopper)")
    p.add_argument("--decoder", choices=("wan", "taehv"), default=None, help="override the config's decoder")
    p.add_argument("--no-kernels", action="store_true", help="skip the per-kernel comparison")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's dense matrix TFLOP/s for the floor (known for H100/H200/A100...)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this file")


def add_kernels_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="longlive", help="preset or YAML path (default longlive: full size)")
    p.add_argument("--arch", type=int, action="append", default=None, metavar="SM",
                   help="compute capability to compile for, repeatable: 80 A100, 86/89 RTX 30xx/40xx, 90 "
                        "H100/H200, 120 RTX 50xx (default 90)")
    p.add_argument("--json", type=Path, default=None, help="also write the report to this file")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("runs/toy"), metavar="DIR",
                   help="the run folder: checkpoints, losses.jsonl, the weights and manifest.json (default runs/toy)")
    p.add_argument("--seed", type=seed, default=0, help="seed of everything drawn (default 0)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--quick", action="store_true", help="a few steps of every stage (a smoke test, not a model)")


# -- the table -----------------------------------------------------------------------------------
SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand("serve", "serve the live stream and the browser client", add_serve_arguments, "server.serve:run"),
    Subcommand("generate", "render a prompt to a video file, offline", add_generate_arguments, "studio.generate:run"),
    Subcommand("render", "render a timeline (a recording's or Scope's) to a video file, offline and exactly",
               add_render_arguments, "studio.render:run"),
    Subcommand("interactive", "make a video chunk by chunk at the terminal, one prompt per chunk, with going back",
               add_interactive_arguments, "studio.interactive:run"),
    Subcommand("plan", "have an LLM split a story into timed prompt segments: a timeline to play or render",
               add_plan_arguments, "studio.plan:run"),
    Subcommand("bench", "measure the generator's speed with random weights", add_bench_arguments, "bench.speed:run"),
    Subcommand("train", "train the toy world's model from a seed on this machine (docs/TOY_WORLD.md)",
               add_train_arguments, "training.toy_run:run"),
    Subcommand("kernels", "compile every Triton kernel launch for a GPU architecture (no GPU needed) and "
                          "report registers, spills and shared memory", add_kernels_arguments,
               "bench.kernel_check:run"),
)


class Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line, like every other error of the command."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="longlive", description="LongLive live: real-time generated video.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for command in SUBCOMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(subcommand=command)
    return parser


def _terminate(signum: int, frame: object) -> None:
    stopping.request(128 + signum)   # long commands check at each block too (studio/stopping.py)
    raise SystemExit(128 + signum)   # unwinds like Ctrl-C: files being written are removed


# the packages the commands import, by module, as a user knows them (the rest go by module name)
PACKAGE_NAMES = {"torch": "PyTorch", "av": "PyAV", "yaml": "PyYAML", "pythonosc": "python-osc",
                 "prometheus_client": "prometheus-client"}
OUR_PACKAGES = {"longlive", "server", "studio", "streaming", "training", "kernels", "bench", "client", "configs",
                "tools"}


def missing_package(e: ModuleNotFoundError) -> str | None:
    """One line for a package this Python lacks (a fresh clone run with the system Python),
    naming the fix; None when the error is not that (a module of ours, or a part missing
    from a package that is installed: a bug or a version mismatch, which keeps its traceback)."""
    import importlib.util

    top = (e.name or "").partition(".")[0]
    if not top or top in OUR_PACKAGES:
        return None
    try:
        if importlib.util.find_spec(top) is not None:
            return None
    except (ImportError, ValueError):
        pass
    root = Path(__file__).resolve().parent.parent
    venv = root / ".venv"
    try:
        shown = venv.relative_to(Path.cwd().resolve())
    except ValueError:
        shown = venv
    what = f"{PACKAGE_NAMES.get(top, top)} is not installed in this Python ({sys.executable})"
    if Path(sys.prefix).resolve() == venv.resolve():
        return f"{what}; run `make setup` (or `make serve`) in {root} to install the packages"
    return (f"{what}; run `make serve` once, then use {shown}/bin/longlive "
            f"(or `source {shown}/bin/activate`)")


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except ModuleNotFoundError as e:
        line = missing_package(e)
        if line is None:
            raise
        print(f"longlive: {line}", file=sys.stderr)
        return EXIT_USAGE


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)   # (an argument's type may import: --seed checks its range)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.subcommand.target()(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        from streaming.errors import UserError, one_line

        if not isinstance(e, UserError):
            raise
        print(f"longlive: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
