"""`longlive`: the subcommand table, one-line errors with exit status 2, clean Ctrl-C, a fast --help."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from longlive import cli
from streaming.config import EMBEDDED_DEFAULT, choose_preset, load_config
from test_webrtc import REPO, free_port


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "longlive", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "LONGLIVE_WEIGHTS": "", **(env or {})})


def test_every_subcommand_is_one_row_naming_the_function_its_room_runs():
    parser = cli.build_parser()
    assert [c.name for c in cli.SUBCOMMANDS] == ["serve", "generate", "render", "interactive", "plan", "bench",
                                                 "train", "kernels"]
    rooms = {"serve": "server.serve:run", "generate": "studio.generate:run", "render": "studio.render:run",
             "interactive": "studio.interactive:run", "plan": "studio.plan:run",
             "bench": "bench.speed:run", "train": "training.toy_run:run", "kernels": "bench.kernel_check:run"}
    for command in cli.SUBCOMMANDS:
        assert command.run == rooms[command.name]
        assert callable(command.target()) and command.target().__name__ == "run"
    args = parser.parse_args(["serve"])
    assert args.subcommand.name == "serve"
    assert (args.config, args.host, args.port, args.seed, args.weights) == (None, "127.0.0.1", 8080, 0, None)
    assert choose_preset(args.config, args.weights) == EMBEDDED_DEFAULT
    assert choose_preset(None, "w") == "longlive"
    assert choose_preset("x.yaml", "w") == "x.yaml"


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
    assert str(cli.build_parser().parse_args(["serve"]).weights) == "/opt/weights"
    assert str(cli.build_parser().parse_args(["serve", "--weights", "/x"]).weights) == "/x"


@pytest.mark.parametrize("args, env, fragment", [
    (["serve", "--config", "no-such-preset"], {}, "no config named 'no-such-preset'"),
    (["serve", "--weights", "/no/such/folder"], {}, "/no/such/folder"),
    (["serve"], {"LONGLIVE_WEIGHTS": "/no/such/env/folder"}, "/no/such/env/folder"),
    (["serve", "--host", "no-such-host.invalid"], {}, "unknown host"),
    (["serve", "--device", "bogus"], {}, "unknown device 'bogus'"),
    (["serve", "--device", "cuda:7"], {}, "cuda:7"),
])
def test_user_errors_are_one_line_with_status_2(args, env, fragment, monkeypatch, capsys):
    for key, value in {"LONGLIVE_WEIGHTS": "", **env}.items():
        monkeypatch.setenv(key, value)
    assert cli.main(args + ["--port", str(free_port())] if "--port" not in args else args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("longlive: ") and fragment in err, err
    assert "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("args, fragment", [
    (["serve", "--port", "70000"], "argument --port: 70000 is out of range; a port is between 1 and 65535"),
    (["serve", "--seed", "-1"], "argument --seed: -1 is out of range; a seed is between 0 and"),
    (["serve", "--lead-blocks", "0"], "argument --lead-blocks: 0 must be at least 1"),
    (["generate", "--prompt", "x", "--seconds", "1e9"], "argument --seconds: 1e9 is out of range"),
    (["generate", "--prompt", "x", "--seconds", "nan"], "argument --seconds: nan is out of range"),
    (["generate", "--prompt", "x", "--seed", "-1"], "argument --seed: -1 is out of range"),
    (["bench", "--blocks", "0"], "argument --blocks: 0 must be at least 1"),
])
def test_out_of_range_arguments_are_refused_before_anything_runs(args, fragment, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err, err


def test_help_imports_nothing_heavy():
    """`--help` of every command answers without importing torch, the server or PyAV."""
    code = ("import sys\nfrom longlive import cli\n"
            "for name in ('serve', 'generate', 'bench', 'kernels'):\n"
            "    try: cli.main([name, '--help'])\n"
            "    except SystemExit: pass\n"
            "heavy = [m for m in ('torch', 'aiohttp', 'aiortc', 'av', 'streaming.config') if m in sys.modules]\n"
            "print('heavy:', heavy, file=sys.stderr)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "usage: longlive serve" in out.stdout and "usage: longlive kernels" in out.stdout
    assert out.stderr.strip().endswith("heavy: []"), out.stderr


@pytest.mark.integration
def test_port_in_use_is_one_line_with_status_2():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = run_cli("serve", "--port", str(port))
    assert out.returncode == 2
    assert out.stderr.strip() == f"longlive: port {port} on 127.0.0.1 is already in use; pick another with --port"
    assert "Traceback" not in out.stdout + out.stderr
    assert "No weights given" not in out.stdout          # refused before the (slow) model load


def test_missing_subcommand_is_a_usage_error():
    out = run_cli()
    assert out.returncode == 2
    assert out.stderr == "longlive: the following arguments are required: COMMAND (see longlive --help)\n"


@pytest.mark.integration
def test_ctrl_c_stops_the_server_cleanly():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "longlive", "serve", "--port", str(port)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "LONGLIVE_WEIGHTS": ""})
    lines = []
    for line in proc.stdout:            # until it serves and its engine generates
        lines.append(line)
        if any("serving on" in ln for ln in lines) and any("stream started" in ln for ln in lines):
            break
    assert f"http://127.0.0.1:{port}/" in "".join(lines)
    assert any(f"No weights given: running {load_config(EMBEDDED_DEFAULT).about}." in ln for ln in lines)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)      # (it finishes the block under way: seconds on a loaded machine)
    everything = "".join(lines) + out
    assert proc.returncode == 0, everything
    assert "stopped" in out and "engine stopped" in out and "Traceback" not in everything
    with socket.socket() as s:            # the port is free again
        s.bind(("127.0.0.1", port))


def test_the_default_log_level_keeps_webrtc_connection_chatter_out():
    """At info, aioice/aiortc (ICE checks, DTLS states) and per-request access lines stay out of
    serve's log; at debug they are left alone (and show)."""
    import logging

    from server.serve import CHATTY_LOGGERS, setup_logging
    names = ("aioice.ice", "aiortc.rtcpeerconnection", "aiohttp.access")

    def reset():
        for n in CHATTY_LOGGERS:
            logging.getLogger(n).setLevel(logging.NOTSET)
    root = logging.getLogger()
    level = root.level
    try:
        reset()
        setup_logging("info")
        root.setLevel(logging.INFO)             # (basicConfig leaves pytest's root logger alone)
        assert logging.getLogger("longlive").isEnabledFor(logging.INFO)
        assert not any(logging.getLogger(n).isEnabledFor(logging.INFO) for n in names)
        assert all(logging.getLogger(n).isEnabledFor(logging.WARNING) for n in names)
        reset()
        setup_logging("debug")
        assert all(logging.getLogger(n).level == logging.NOTSET for n in CHATTY_LOGGERS)
    finally:
        reset()
        root.setLevel(level)


# -- a Python without the packages (a fresh clone run with the system Python) ---------------------
WITHOUT = """
import sys
class Missing:      # these packages cannot be imported, as in a Python they were never installed in
    def find_spec(self, name, path=None, target=None):
        if name.partition('.')[0] in sys.argv[1].split(','):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Missing())
sys.prefix = sys.argv[2]            # which Python this is: the project's virtualenv or another
from longlive.cli import main
sys.exit(main(sys.argv[3:]))
"""


def run_without(missing: str, *args: str, prefix: str = "/usr") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT, missing, prefix, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "LONGLIVE_WEIGHTS": ""})


@pytest.mark.parametrize("missing, args, package", [
    ("torch,numpy", ["bench"], "PyTorch"),
    ("numpy", ["serve", "--port", "PORT"], "numpy"),
    ("numpy", ["generate", "--prompt", "x", "--seed", "3"], "numpy"),      # an argument's check imports it
    ("av", ["render", "TIMELINE", "-o", "OUT"], "PyAV"),     # (imported when the first frames are written)
])
def test_a_missing_package_is_one_line_naming_the_fix(missing, args, package, tmp_path):
    timeline = tmp_path / "t.json"
    timeline.write_text('{"prompts": [{"startTime": 0, "endTime": 0.5, "prompts": [{"text": "x", "weight": 100}]}],'
                        ' "settings": {"resolution": {"width": 64, "height": 48}}, "version": "2.0"}')
    named = {"TIMELINE": str(timeline), "OUT": str(tmp_path / "o.mp4"), "PORT": str(free_port())}
    args = [named.get(a, a) for a in args]
    out = run_without(missing, *args)
    assert out.returncode == 2, out.stderr
    line = (f"longlive: {package} is not installed in this Python ({sys.executable}); run `make serve` once, then "
            f"use .venv/bin/longlive (or `source .venv/bin/activate`)\n")
    if package == "PyAV":      # after what render says it is about to do
        assert out.stderr.endswith("\n" + line) and "Traceback" not in out.stderr, out.stderr
    else:
        assert out.stderr == line and out.stdout == ""


def test_a_missing_package_in_the_projects_own_virtualenv_says_to_set_it_up_again():
    out = run_without("torch,numpy", "bench", prefix=str(REPO / ".venv"))
    assert out.returncode == 2
    assert out.stderr == (f"longlive: PyTorch is not installed in this Python ({sys.executable}); run `make setup` "
                          f"(or `make serve`) in {REPO} to install the packages\n")


def test_only_a_missing_package_becomes_the_line():
    """A module of ours, or a part missing from an installed package, is a bug: its traceback stays."""
    assert cli.missing_package(ModuleNotFoundError("x", name="server.nowhere")) is None
    assert cli.missing_package(ModuleNotFoundError("x", name="argparse.nowhere")) is None
    assert "no_such_package_here is not installed" in cli.missing_package(
        ModuleNotFoundError("x", name="no_such_package_here.sub"))


SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON) or subprocess.run(
    [SYSTEM_PYTHON, "-c", "import torch"], capture_output=True).returncode == 0,
    reason="no system Python without PyTorch here")
def test_the_system_python_says_where_the_command_is():
    out = subprocess.run([SYSTEM_PYTHON, "-m", "longlive", "bench"], cwd=REPO, capture_output=True, text=True,
                         timeout=300,
                         env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")})
    assert out.returncode == 2
    assert out.stderr.startswith("longlive: ") and out.stderr.count("\n") == 1, out.stderr
    assert f"is not installed in this Python ({SYSTEM_PYTHON}); run `make serve` once, then use .venv/bin/longlive " \
           f"(or `source .venv/bin/activate`)" in out.stderr


# -- a port in use, as `make serve` users change it -----------------------------------------------
@pytest.mark.integration
def test_port_in_use_under_make_serve_says_PORT():
    import shutil

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = run_cli("serve", "--port", str(port), env={"LONGLIVE_VIA_MAKE": "1"})
        assert out.returncode == 2
        assert out.stderr.strip() == f"longlive: port {port} on 127.0.0.1 is already in use; pick another with " \
                                     f"make serve PORT=N"
        # and `make serve` does start it so (setup and client taken as done: nothing is installed)
        if not (REPO / ".venv" / "bin" / "longlive").exists() or not shutil.which("make"):
            pytest.skip("no make, or no .venv/bin/longlive (make setup)")
        # (ARGS= and HOST=: a `make test ARGS=...` around this passes its own in the environment)
        made = subprocess.run(["make", "-o", "setup", "-o", "client", "serve", f"PORT={port}", "ARGS=",
                               "HOST=127.0.0.1"], cwd=REPO,
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "LONGLIVE_WEIGHTS": "", "MAKEFLAGS": ""})
    assert made.returncode != 0
    assert f"longlive: port {port} on 127.0.0.1 is already in use; pick another with make serve PORT=N" \
        in made.stderr.splitlines(), made.stderr
