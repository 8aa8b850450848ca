"""The fast tier (`make check`) has no servers: under LONGLIVE_FAST_TIER=1 a test that is not marked
`integration` and starts an HTTP server, in-process or as `longlive serve`, fails saying to mark it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from golden import REPO

CASES = '''
import subprocess, sys, asyncio
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

def test_an_in_process_server():
    async def main():
        server = TestServer(web.Application())
        await server.start_server()
        await server.close()
    asyncio.run(main())

def test_serve_as_a_program():
    subprocess.run([sys.executable, "-m", "longlive", "serve", "--help"], capture_output=True, timeout=120)

@pytest.mark.integration
def test_a_marked_server():
    subprocess.run([sys.executable, "-m", "longlive", "serve", "--help"], capture_output=True, timeout=120)

def test_other_programs():
    subprocess.run([sys.executable, "-c", "print('serve')"], check=True, timeout=60)
'''


def test_the_fast_tier_fails_unmarked_tests_that_start_a_server(tmp_path):
    for name in ("conftest.py", "golden.py"):
        shutil.copy(REPO / "tests" / name, tmp_path / name)
    (tmp_path / "test_cases.py").write_text(CASES)
    env = {**os.environ, "LONGLIVE_FAST_TIER": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=-rA",
                          "-W", "ignore::pytest.PytestUnknownMarkWarning", str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = run.stdout
    assert "FAILED test_cases.py::test_an_in_process_server" in out, out[-3000:]
    assert "FAILED test_cases.py::test_serve_as_a_program" in out, out[-3000:]
    assert "PASSED test_cases.py::test_a_marked_server" in out, out[-3000:]
    assert "PASSED test_cases.py::test_other_programs" in out, out[-3000:]
    assert out.count("mark it @pytest.mark.integration") >= 2, out[-3000:]
