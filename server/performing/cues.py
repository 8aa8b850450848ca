"""The cue bank: named prompts (or blends, with their own transition) a performer fires.

Cues come from a YAML file (`configs/cues/default.yaml` unless `serve --cues FILE`), each
entry checked by the protocol's own `cue` command schema, so a file and a control message
share one vocabulary and one set of error sentences; `{"type": "cue", ...}` stores or
replaces a cue while the server runs (in memory: the file is never written).

Arming a cue asks the engine's encoder for its conditioning at once, beside generation
(`PromptEncoderWorker.prepare`), so firing it later costs no encoder time: the fired switch
goes to the engine with its embedding ready. One cue is armed at a time; firing it disarms
it (its text embeddings stay in the encoder's cache).
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from streaming.blend import Blend, TransitionSpec
from streaming.errors import UserError

from ..protocol import CueCommand, ProtocolError, parse_command

log = logging.getLogger(__name__)

MAX_CUE_FILE_BYTES = 1 << 20


class CueError(UserError, ValueError):
    """A cue file or cue number that cannot be used; one sentence."""


@dataclass(frozen=True)
class Cue:
    number: int
    name: str
    prompt: Blend
    transition: TransitionSpec | None = None     # None: the server's default transition

    @classmethod
    def of(cls, command: CueCommand) -> "Cue":
        return cls(command.cue, command.name or command.label[:40], command.blend, command.transition)

    def to_wire(self, armed: bool) -> dict[str, Any]:
        t = self.transition
        return {"cue": self.number, "name": self.name, "label": self.prompt.label,
                "prompts": [{"text": text, "weight": round(w, 6)} for text, w in self.prompt.parts],
                "transition": None if t is None else {"blocks": t.blocks, "method": t.method}, "armed": armed}


class CueBank:
    def __init__(self, cues: dict[int, Cue] | None = None):
        self._cues: dict[int, Cue] = dict(sorted((cues or {}).items()))
        self._armed: tuple[int, Future] | None = None

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path | None = None) -> "CueBank":
        """The cues of a YAML file (the shipped default when `path` is None)."""
        if path is None:
            text = resources.files("configs").joinpath("cues/default.yaml").read_text(encoding="utf-8")
            where = "the default cue file"
        else:
            p = Path(path)
            where = str(p)
            try:
                if p.stat().st_size > MAX_CUE_FILE_BYTES:
                    raise CueError(f"{where} is larger than {MAX_CUE_FILE_BYTES >> 20} MiB; is it a cue file?")
                text = p.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise CueError(f"no cue file at {where}") from None
            except (OSError, UnicodeDecodeError) as e:
                raise CueError(f"cannot read the cue file {where}: {e.__class__.__name__}") from None
        return cls.parse(text, where)

    @classmethod
    def parse(cls, text: str, where: str = "the cue file") -> "CueBank":
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark is not None else ""
            raise CueError(f"{where} is not valid YAML{at}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("cues"), list):
            raise CueError(f"{where} needs a list under 'cues:'")
        cues: dict[int, Cue] = {}
        for i, entry in enumerate(doc["cues"]):
            if not isinstance(entry, dict):
                raise CueError(f"{where}: cues[{i}] must be a map with cue, name and text or prompts")
            try:
                command = parse_command({**entry, "type": "cue"})
            except ProtocolError as e:
                raise CueError(f"{where}: cues[{i}]: {e}") from None
            assert isinstance(command, CueCommand)
            if command.cue in cues:
                raise CueError(f"{where}: cues[{i}] repeats cue {command.cue}")
            cues[command.cue] = Cue.of(command)
        return cls(cues)

    # -- the bank -------------------------------------------------------------------------------
    def __contains__(self, number: object) -> bool:
        """Whether cue `number` is set."""
        return number in self._cues

    def get(self, number: int) -> Cue:
        cue = self._cues.get(number)
        if cue is None:
            have = ", ".join(str(n) for n in self._cues) or "none"
            raise CueError(f"cue {number} is empty (cues set: {have})")
        return cue

    def set(self, command: CueCommand) -> Cue:
        cue = Cue.of(command)
        self._cues[cue.number] = cue
        self._cues = dict(sorted(self._cues.items()))
        if self._armed is not None and self._armed[0] == cue.number:
            self._armed = None                 # armed with what the cue used to be
        return cue

    def arm(self, number: int, encoding: Future) -> Cue:
        cue = self.get(number)
        if self._armed is not None and self._armed[0] != number:
            self._armed[1].cancel()            # (an encoding already running runs to its end)
        self._armed = (number, encoding)
        return cue

    def take_armed(self, number: int) -> Future | None:
        """The armed encoding when `number` is the armed cue (it is disarmed), else None."""
        if self._armed is None or self._armed[0] != number:
            return None
        _, job = self._armed
        self._armed = None
        return None if job.cancelled() else job

    def armed_ready(self) -> bool:
        """The armed cue's conditioning is encoded (firing it now costs no encoder time)."""
        return self._armed is not None and self._armed[1].done() and not self._armed[1].cancelled() \
            and self._armed[1].exception() is None

    @property
    def armed(self) -> int | None:
        return None if self._armed is None else self._armed[0]

    def listed(self) -> list[dict[str, Any]]:
        return [cue.to_wire(armed=n == self.armed) for n, cue in self._cues.items()]

    def __len__(self) -> int:
        return len(self._cues)

