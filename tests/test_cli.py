"""`longlive`: the subcommand table, one-line errors with exit status 2, clean Ctrl-C."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from server import cli
from test_webrtc import REPO, free_port


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "LONGLIVE_WEIGHTS": "", **(env or {})})


def test_every_subcommand_is_a_cmd_function_in_one_table():
    parser = cli.build_parser()
    names = [c.name for c in cli.SUBCOMMANDS]
    assert "serve" in names
    for command in cli.SUBCOMMANDS:
        assert command.run.__name__ == f"cmd_{command.name}"
        assert getattr(cli, f"cmd_{command.name}") is command.run
    args = parser.parse_args(["serve"])
    assert args.run is cli.cmd_serve
    assert (args.config, args.host, args.port, args.seed, args.weights) == (None, "127.0.0.1", 8080, 0, None)
    assert cli.default_config(args) == "tiny"
    assert cli.default_config(parser.parse_args(["serve", "--weights", "w"])) == "longlive"
    assert cli.default_config(parser.parse_args(["serve", "--weights", "w", "--config", "x.yaml"])) == "x.yaml"


def test_the_table_takes_a_new_subcommand(monkeypatch):
    def cmd_hello(args: argparse.Namespace) -> int:
        return 7 if args.loud else 3

    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("--loud", action="store_true")

    monkeypatch.setattr(cli, "SUBCOMMANDS", cli.SUBCOMMANDS + (cli.Subcommand("hello", "say hello", add, cmd_hello),))
    assert cli.main(["hello", "--loud"]) == 7
    assert cli.main(["hello"]) == 3


def test_weights_default_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("LONGLIVE_WEIGHTS", "/opt/weights")
    assert cli.build_parser().parse_args(["serve"]).weights == "/opt/weights"
    assert cli.build_parser().parse_args(["serve", "--weights", "/x"]).weights == "/x"


@pytest.mark.parametrize("args, env, fragment", [
    (["serve", "--config", "no-such-preset"], {}, "no config named 'no-such-preset'"),
    (["serve", "--weights", "/no/such/folder"], {}, "/no/such/folder"),
    (["serve"], {"LONGLIVE_WEIGHTS": "/no/such/env/folder"}, "/no/such/env/folder"),
    (["serve", "--port", "70000"], {}, "--port must be between"),
    (["serve", "--host", "no-such-host.invalid"], {}, "unknown host"),
])
def test_user_errors_are_one_line_with_status_2(args, env, fragment, monkeypatch, capsys):
    for key, value in {"LONGLIVE_WEIGHTS": "", **env}.items():
        monkeypatch.setenv(key, value)
    assert cli.main(args + ["--port", str(free_port())] if "--port" not in args else args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("longlive: ") and fragment in err
    assert "\n" not in err and "Traceback" not in err


def test_port_in_use_is_one_line_with_status_2():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        t0 = time.monotonic()
        out = run_cli("serve", "--port", str(port))
    assert out.returncode == 2
    assert out.stderr.strip() == f"longlive: port {port} on 127.0.0.1 is already in use; pick another with --port"
    assert "Traceback" not in out.stdout + out.stderr
    assert time.monotonic() - t0 < 60


def test_missing_subcommand_is_a_usage_error():
    out = run_cli()
    assert out.returncode == 2 and "usage: longlive" in out.stderr


def test_ctrl_c_stops_the_server_cleanly():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--port", str(port)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "LONGLIVE_WEIGHTS": ""})
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "serving on" in line:
            break
    assert f"http://127.0.0.1:{port}/" in "".join(lines)
    assert any("No weights given: running the tiny embedded default" in ln for ln in lines)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    everything = "".join(lines) + out
    assert proc.returncode == 0, everything
    assert "stopped" in out and "engine stopped" in out and "Traceback" not in everything
    with socket.socket() as s:            # the port is free again
        s.bind(("127.0.0.1", port))
