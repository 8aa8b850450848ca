"""`longlive`: the command line.

Each subcommand is a `cmd_<name>(args) -> int` function plus a function that declares its
arguments, registered once in `SUBCOMMANDS`. To add one, write both and add a row.
Errors a user can cause print one line (`longlive: ...`) and exit with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("longlive")

EXIT_USAGE = 2


class UserError(Exception):
    """Something the user can fix; printed as one line, exit status 2."""


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# -- serve ---------------------------------------------------------------------------------------
def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None,
                   help="preset name from configs/ or a YAML path (default: longlive with weights, else tiny)")
    p.add_argument("--weights", default=os.environ.get("LONGLIVE_WEIGHTS") or None, metavar="DIR",
                   help="folder with the LongLive weights (default: $LONGLIVE_WEIGHTS; none: random tiny weights)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first stream (default: 0)")
    p.add_argument("--prompt", default="A drifting nebula of glowing particles, slow camera push-in",
                   help="prompt of the first stream")
    p.add_argument("--device", default=None, help="torch device (default: the config's, usually auto)")
    p.add_argument("--lead-blocks", type=int, default=1,
                   help="blocks generated ahead of playback (default: 1; more = smoother, slower to react)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def cmd_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be between 1 and 65535, not {args.port}")
    if args.lead_blocks < 1:
        raise UserError("--lead-blocks must be at least 1")
    sock = listen(args.host, args.port)  # first: a taken port is reported before the slow model load
    try:
        engine = build_engine(args)
        from .app import create_app  # aiohttp/aiortc load only when serving

        app = create_app(engine)
    except BaseException:
        sock.close()
        raise
    return asyncio.run(_serve(app, sock, url(args.host, args.port), engine.pipe.embedded_default))


def build_engine(args: argparse.Namespace) -> Engine:
    """Load the config and the pipeline (the slow part with real weights)."""
    from streaming import ConfigError, WeightsError, load_config
    from streaming.pipeline import VideoPipeline

    from .engine import Engine

    try:
        cfg = load_config(default_config(args))
        pipe = VideoPipeline.from_config(cfg, weights=args.weights, device=args.device)
    except (ConfigError, WeightsError) as e:
        raise UserError(str(e)) from None
    except (RuntimeError, OSError) as e:
        raise UserError(f"cannot start the generator: {_one_line(e)}") from None
    if pipe.embedded_default:
        print("No weights given: running the tiny embedded default (random weights, abstract pictures). "
              "Use --weights DIR or LONGLIVE_WEIGHTS for LongLive 1.3B.", flush=True)
    return Engine(pipe, prompt=args.prompt, seed=args.seed, lead_blocks=args.lead_blocks)


async def _serve(app, sock: socket.socket, address: str, embedded_default: bool) -> int:
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
    print(f"LongLive live is serving on {address}" + ("  (tiny embedded default)" if embedded_default else ""),
          flush=True)
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
            raise UserError(f"port {port} on {host} is already in use; pick another with --port") from None
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.setblocking(False)
    return sock


def default_config(args: argparse.Namespace) -> str:
    """--config, else the real model's preset when weights are given, else the tiny default."""
    return args.config or ("longlive" if args.weights else "tiny")


# -- generate and bench ----------------------------------------------------------------------
def _offline(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run an offline command; the errors a user can cause become one line."""
    from streaming import ConfigError, WeightsError

    from .videofile import OutputError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except (ConfigError, WeightsError, OutputError, ValueError) as e:
        raise UserError(_one_line(e)) from None


def cmd_generate(args: argparse.Namespace) -> int:
    from . import generate
    return _offline(generate.run, args)


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    from . import generate
    generate.add_arguments(p)


def cmd_bench(args: argparse.Namespace) -> int:
    from streaming import bench
    return _offline(bench.run, args)


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    from streaming import bench
    bench.add_arguments(p)


def cmd_kernels(args: argparse.Namespace) -> int:
    from streaming import kernel_check
    return _offline(kernel_check.run, args)


def add_kernels_arguments(p: argparse.ArgumentParser) -> None:
    from streaming import kernel_check
    kernel_check.add_arguments(p)


# -- the table -----------------------------------------------------------------------------------
SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand("serve", "serve the live stream and the browser client", add_serve_arguments, cmd_serve),
    Subcommand("generate", "render a prompt to an MP4 file, offline", add_generate_arguments, cmd_generate),
    Subcommand("bench", "measure the generator's speed with random weights", add_bench_arguments, cmd_bench),
    Subcommand("kernels", "compile every Triton kernel launch for a GPU architecture (no GPU needed) and "
                          "report registers, spills and shared memory", add_kernels_arguments, cmd_kernels),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longlive", description="LongLive live: real-time generated video.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in SUBCOMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UserError as e:
        print(f"longlive: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
