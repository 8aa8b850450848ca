"""The `python -m streaming.<tool>` entry points (the same tools as `longlive <command>`)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable


def module_main(module: str, doc: str | None, add_arguments: Callable[[argparse.ArgumentParser], None],
                run: Callable[[argparse.Namespace], int], argv: list[str] | None,
                log_level: int = logging.WARNING) -> int:
    """Parse, run, and turn the errors a user can cause into one line and exit status 2."""
    p = argparse.ArgumentParser(prog=f"python -m streaming.{module}", description=(doc or "").split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except (ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"longlive {module}: {first}", file=sys.stderr)
        return 2
