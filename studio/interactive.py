"""`longlive interactive`: make a video chunk by chunk at the terminal, one prompt per chunk.

The session asks for a grounding (the subject and the setting), then for one prompt per
chunk. A prompt goes through the prompt enhancer (`studio.enhancer`) and is shown for review
(Enter accepts, `r` regenerates, `e` edits: the enhanced text is printed and a replacement
line read, an empty line keeping it); `No AI: <text>` uses the text as written. With `--no-ai`,
or when the enhancer is not available, every prompt is used as written and there is no review
(the enhancer's notice is printed once at the start). At the prompt:

    <text>            enhance, review, then make the next chunk
    No AI: <text>     make the next chunk with <text> as written
    list              the chunks made, with their prompts and time ranges
    back [same]       redo the last chunk (your next prompt makes it again)
    goto N [same]     redo from chunk N (1-indexed), discarding the chunks after it
    done              write final_video.mp4 and exit
    quit              exit without the final video, keeping what was saved
    help              this list

Chunks are whole generator blocks. `blocks_per_chunk` is the number of blocks whose frames
first reach `round(chunk_duration * fps)` frames, counting that block 0 of a stream gives
1 + 4*(F-1) frames and every later block 4*F (F latent frames per block: 3 in the tiny and
LongLive configs, so 9 then 12 frames; `studio.timeline.BlockClock.blocks_for`). At 16 fps a
10 s chunk is 14 blocks: chunk 1 is 9 + 13*12 = 165 frames, every later chunk 168. So every
chunk ends on a block boundary and the next one continues the one stream seamlessly: chunk 1
starts it (`pipe.start(prompt, seed)`), each later chunk switches the prompt at its first
block (`pipe.switch_prompt`, the KV re-cache of the live server).

Going back (`back`, `goto N`) discards chunks N and later (their files too) and puts the
generator in the state at the end of chunk N-1: `pipe.snapshot("cpu")` is taken at the end
of every chunk and restored (for chunk 1 the stream starts afresh). The redone chunk draws
fresh noise (`pipe.reseed_noise`, the seed drawn from `random.Random(--seed)`, so the same
session typed again gives the same video) unless `same` is asked for: then it has the noise
of the take it replaces, and the same prompt gives the very same frames as before. The
enhancer's history is reverted to that point too (`session.mark()` before each chunk's
prompt, `session.revert(mark)`). No warm-up pass is needed: the official demo re-runs a
discarded warm-up chunk after going back because it cannot capture its state exactly; here
the snapshot is the exact state (KV window, latent tail, noise, decoder caches), and restoring
it then generating equals never having left (`tests/test_pipeline.py`). Ctrl-C while a chunk
is made cancels that chunk only (the state at the end of the previous chunk is restored);
Ctrl-C or end of input at the prompt quits, keeping what was saved.

The session folder, `OUTPUT_DIR/session_YYYYMMDD_HHMMSS/`, holds `chunk_N.mp4` and
`chunk_N_prompts.json` ({"user", "processed", "source": "ai" | "raw"}) for each chunk (N from
1), `running_N.mp4` (chunks 1..N joined without re-encoding), `history.json` (the grounding,
the settings and the chunks with their time ranges; rewritten atomically after every change),
`timeline.json` (the session's sidecar timeline: `longlive render session/timeline.json`
makes the final video again, frame for frame) and, on `done`, `final_video.mp4`.

The terminal is the only user interface: colours only when stdout is a terminal and NO_COLOR
is unset; a progress bar (frames, frames/s) on stderr while a chunk is made; all input and
output go through a small I/O object (`TerminalIO`), so tests can script a session.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from streaming.errors import UserError
from streaming.noise import SEED_MAX

from .lineage import Lineage
from .sidecar import MadeBlock, SidecarBuilder, Source, block_hash
from .timeline import BlockClock

DONE, QUIT, GO_ON = "done", "quit", "go on"
REVIEW_HELP = "Enter accepts, r regenerates, e edits"
COMMANDS = """\
  <text>           enhance it, review it, then make the next chunk
  No AI: <text>    make the next chunk with <text> exactly as written
  list             the chunks made, with their prompts and time ranges
  back [same]      redo the last chunk (fresh noise; "same" keeps its noise)
  goto N [same]    redo from chunk N, discarding the chunks after it
  done             write final_video.mp4 and exit
  quit             exit without the final video (what was saved stays)"""
_NO_AI = re.compile(r"^\s*no\s*ai\s*:", re.IGNORECASE)
_GOTO = re.compile(r"^goto\s+(\S+)(?:\s+(\S+))?$", re.IGNORECASE)


class InteractiveError(UserError):
    """An interactive session that cannot start; one sentence for the user."""


# -- the terminal ------------------------------------------------------------------------------------
_STYLES = {"prompt": "1", "ai": "36", "good": "32", "warn": "33", "bad": "31", "dim": "2", "head": "1;34"}


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class TerminalIO:
    """Input and output of a session: lines in, lines out, a progress bar while a chunk is made."""

    def __init__(self, stdin: Any = None, stdout: Any = None, stderr: Any = None,
                 env: dict[str, str] | None = None):
        self.stdin = stdin if stdin is not None else sys.stdin
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr
        env = os.environ if env is None else env
        self.color = _isatty(self.stdout) and "NO_COLOR" not in env
        self._console = self.stdin is sys.stdin and self.stdout is sys.stdout
        self._readline = False
        if self._console and _isatty(self.stdin):
            try:
                import readline  # noqa: F401  (line editing and history for input())
                self._readline = True
            except ImportError:
                pass

    def paint(self, text: str, style: str | None) -> str:
        if not self.color or style is None:
            return text
        return f"\x1b[{_STYLES[style]}m{text}\x1b[0m"

    def say(self, text: str = "", style: str | None = None) -> None:
        print(self.paint(text, style), file=self.stdout, flush=True)

    def ask(self, prompt: str) -> str:
        """One line (without its newline); EOFError at the end of input, KeyboardInterrupt on Ctrl-C."""
        shown = self.paint(prompt, "prompt")
        if self._console:
            if self._readline and self.color:     # readline must not count the colour codes as width
                shown = re.sub(r"(\x1b\[[0-9;]*m)", "\x01\\1\x02", shown)
            return input(shown)
        self.stdout.write(shown)
        self.stdout.flush()
        line = self.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\r\n")

    def progress(self, total: int, desc: str) -> Any:
        from tqdm import tqdm

        return tqdm(total=total, unit="frame", desc=desc, file=self.stderr, disable=None, leave=False,
                    dynamic_ncols=True)


# -- what a session keeps ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _BlockRecord:
    block: int
    prompt: str
    frames: int
    hash: str


@dataclass
class Chunk:
    index: int                       # 1-based
    user: str
    processed: str
    source: str                      # "ai" | "raw"
    noise_seed: int | None           # fresh noise from this chunk's first block (a redo), else None
    blocks: list[_BlockRecord]
    snapshot: Any                    # the pipeline at the end of the chunk
    mark: Any                        # the enhancer's history before this chunk's prompt
    start: float = 0.0
    end: float = 0.0
    frames: int = 0


def blocks_per_chunk(chunk_duration: float, fps: float, latent_frames_per_block: int) -> int:
    """Blocks whose frames first reach round(chunk_duration * fps) (block 0: 1 + 4(F-1), later 4F)."""
    return BlockClock(fps, latent_frames_per_block).blocks_for(chunk_duration)


def _split_no_ai(line: str) -> tuple[bool, str]:
    m = _NO_AI.match(line)
    return (True, line[m.end():].strip()) if m else (False, line.strip())


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _seconds(t: float) -> str:
    return f"{t:.2f}"


class InteractiveSession:
    """One session: the prompt loop, the chunks and the session folder."""

    def __init__(self, pipe: Any, enhancer: Any, out_dir: str | Path, chunk_duration: float = 10.0,
                 max_chunks: int = 6, seed: int = 42, io: Any = None, weights: str = "embedded",
                 plan: list[str] | None = None):
        self.pipe, self.enhancer = pipe, enhancer
        self.plan = list(plan or [])           # a timeline's prompts, one per chunk (--timeline)
        max_chunks = max(int(max_chunks), len(self.plan))
        self.io = io if io is not None else TerminalIO()
        self.chunk_duration, self.max_chunks, self.seed = float(chunk_duration), int(max_chunks), int(seed)
        cfg = pipe.cfg
        self.config_name = cfg.name
        self.fps = cfg.video.fps
        self.F = cfg.latent_frames_per_block
        self.width, self.height = pipe.size
        self.clock = BlockClock(self.fps, self.F)
        self.bpc = blocks_per_chunk(self.chunk_duration, self.fps, self.F)
        self.source = Source(config=cfg.name, weights=weights, fps=float(self.fps), latent_frames_per_block=self.F,
                             width=self.width, height=self.height,
                             denoising_steps=tuple(int(t) for t in cfg.schedule.denoising_steps), seed=self.seed)
        self.rng = random.Random(self.seed)
        self.chunks: list[Chunk] = []
        self.grounding: dict[str, str] | None = None
        self._next_noise: int | None = None     # the noise of the next chunk's first block (a redo)
        self._pipe_at: int | None = None        # the pipeline is at the end of this many chunks (None: unknown)
        self.folder = self._make_folder(Path(out_dir))
        self.session_id = self.folder.name.removeprefix("session_")

    # -- the folder ----------------------------------------------------------------------------------
    @staticmethod
    def _make_folder(out_dir: Path) -> Path:
        if out_dir.exists() and not out_dir.is_dir():
            raise InteractiveError(f"--output-dir {out_dir} is a file; give a folder for the session folders")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InteractiveError(f"cannot make the output folder {out_dir}: {e.strerror or e}") from None
        if not os.access(out_dir, os.W_OK):
            raise InteractiveError(f"cannot write in the output folder {out_dir}; pick another with --output-dir")
        stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
        for n in range(1, 1000):
            folder = out_dir / (f"session_{stamp}" if n == 1 else f"session_{stamp}_{n}")
            try:
                folder.mkdir()
                return folder
            except FileExistsError:
                continue
        raise InteractiveError(f"cannot make a new session folder in {out_dir}")  # pragma: no cover

    def path(self, kind: str, n: int | None = None) -> Path:
        names = {"chunk": f"chunk_{n}.mp4", "prompts": f"chunk_{n}_prompts.json", "running": f"running_{n}.mp4",
                 "final": "final_video.mp4", "history": "history.json", "timeline": "timeline.json"}
        return self.folder / names[kind]

    # -- timing --------------------------------------------------------------------------------------
    def _span(self, index: int) -> tuple[int, int]:
        """Stream blocks [first, end) of chunk `index` (1-based)."""
        return (index - 1) * self.bpc, index * self.bpc

    def _times(self, index: int) -> tuple[float, float]:
        first, end = self._span(index)
        return self.clock.start_time(first), self.clock.start_time(end)

    def _frames(self, index: int) -> int:
        first, end = self._span(index)
        return sum(self.clock.frames_in(b) for b in range(first, end))

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> int:
        self._intro()
        try:
            if not self._ask_grounding():
                return self._quit()
            while True:
                planned = self._planned()
                if planned:
                    self.io.say(f"plan for chunk {len(self.chunks) + 1}: {planned}\n"
                                f"  (Enter makes it as written; or type your own prompt or a command)", "dim")
                line = self.io.ask(self._label())
                if self._command(line) in (DONE, QUIT):
                    return 0
        except (EOFError, KeyboardInterrupt):       # at the prompt: quit, keeping what was saved
            self.io.say("")
            return self._quit()

    def _intro(self) -> None:
        io = self.io
        io.say(f"session folder: {self.folder}", "head")
        first, later = self._frames(1), self._frames(2)
        io.say(f"each chunk is {self.bpc} block{'s' * (self.bpc != 1)}: chunk 1 {first} frames "
               f"({first / self.fps:.2f} s), later chunks {later} frames ({later / self.fps:.2f} s) at "
               f"{self.fps} fps, {self.width}x{self.height}; up to {self.max_chunks} chunks, seed {self.seed}", "dim")
        notice = getattr(self.enhancer, "notice", None)
        if notice:
            io.say(notice, "warn")
        io.say("commands:\n" + self._commands(), "dim")
        self._save()

    def _commands(self) -> str:
        if self._ai():
            return COMMANDS
        return COMMANDS.replace("enhance it, review it, then make the next chunk",
                                "make the next chunk with it as written")

    def _label(self) -> str:
        n = len(self.chunks) + 1
        return f"chunk {n}/{self.max_chunks}> " if n <= self.max_chunks else f"all {self.max_chunks} chunks made> "

    def _ask_grounding(self) -> bool:
        io = self.io
        io.say("First the grounding: the subject and the setting the whole video keeps "
               "(e.g. a red fox in a snowy forest).")
        while True:
            line = io.ask("grounding> ").strip()
            word = line.lower()
            if word in ("quit", "exit"):
                return False
            if not line:
                io.say("the grounding must not be empty: describe the subject and the setting", "bad")
                continue
            if word in ("help", "?"):
                io.say(self._commands())
                continue
            if word in ("done", "list", "back", "back same") or word.startswith("goto"):
                io.say(f"there are no chunks yet: first describe the subject and the setting ({word} comes later)",
                       "bad")
                continue
            raw, text = _split_no_ai(line)
            if not text:
                io.say("write the text after No AI:, e.g. No AI: a red fox in a snowy forest", "bad")
                continue
            if raw or not self._ai():
                processed, source = text, "raw"
            else:
                reviewed = self._review(text, "grounding")
                if reviewed is None:
                    io.say("grounding dropped; give it again", "warn")
                    continue
                processed, source = reviewed
            self.enhancer.session.set_grounding(processed)
            self.grounding = {"user": text, "processed": processed}
            self._save()
            io.say(f"grounding: {processed}", "good")
            return True

    def _command(self, line: str) -> str:
        io = self.io
        text = line.strip()
        word = " ".join(text.lower().split())
        if not text and self._planned():
            self._prompt("No AI: " + self._planned())     # the plan's prompt, as the planner wrote it
            return GO_ON
        if not text:
            io.say(f"type the prompt of chunk {len(self.chunks) + 1}, or a command (help lists them)", "dim")
            return GO_ON
        if word in ("help", "?"):
            io.say(self._commands())
            return GO_ON
        if word == "list":
            self._list()
            return GO_ON
        if word in ("back", "back same"):
            if not self.chunks:
                io.say("there is no chunk to go back to yet", "bad")
                return GO_ON
            self._go_back(len(self.chunks), same=word.endswith("same"))
            return GO_ON
        if word.split(" ", 1)[0] == "goto":
            self._goto(word)
            return GO_ON
        if word == "done":
            return self._done()
        if word in ("quit", "exit"):
            self._quit()
            return QUIT
        self._prompt(text)
        return GO_ON

    # -- commands ------------------------------------------------------------------------------------
    def _list(self) -> None:
        io = self.io
        if self.grounding:
            io.say(f"grounding: {self.grounding['processed']}", "dim")
        if not self.chunks:
            io.say("no chunks yet")
        for c in self.chunks:
            said = "" if c.user == c.processed else f"  (you: {c.user})"
            io.say(f"chunk {c.index}  {_seconds(c.start)}-{_seconds(c.end)} s  [{c.source}]  {c.processed}{said}")
        n = len(self.chunks) + 1
        if n <= self.max_chunks:
            start, end = self._times(n)
            io.say(f"next: chunk {n}, {_seconds(start)}-{_seconds(end)} s", "dim")

    def _goto(self, word: str) -> None:
        io = self.io
        m = _GOTO.match(word)
        made = len(self.chunks)
        if m is None or not m.group(1).isdigit() or m.group(2) not in (None, "same"):
            io.say("goto takes a chunk number, like goto 2 (goto 2 same keeps its noise)", "bad")
            return
        n = int(m.group(1))
        if not made:
            io.say("there is no chunk to go to yet", "bad")
        elif not 1 <= n <= made:
            io.say(f"there is no chunk {n}: chunks 1-{made} are made" if made > 1 else
                   f"there is no chunk {n}: only chunk 1 is made", "bad")
        else:
            self._go_back(n, same=m.group(2) == "same")

    def _go_back(self, n: int, same: bool) -> None:
        """Discard chunks n.. and stand at the end of chunk n-1: the next prompt makes chunk n again."""
        io = self.io
        old = self.chunks[n - 1]
        dropped = self.chunks[n - 1:]
        self.chunks = self.chunks[: n - 1]
        for c in dropped:
            for kind in ("chunk", "prompts", "running"):
                self.path(kind, c.index).unlink(missing_ok=True)
        self.enhancer.session.revert(old.mark)
        if n > 1:
            self.pipe.restore(self.chunks[-1].snapshot)
            self._pipe_at = n - 1
        else:
            self._pipe_at = None           # chunk 1 starts the stream afresh
        self._next_noise = old.noise_seed if same else self.rng.randint(0, SEED_MAX)
        self._save()
        gone = f"chunk {n}" if len(dropped) == 1 else f"chunks {n}-{dropped[-1].index}"
        where = "the start" if n == 1 else f"the end of chunk {n - 1} ({_seconds(self.chunks[-1].end)} s)"
        noise = "the same noise as before" if same else f"fresh noise (seed {self._next_noise})"
        io.say(f"back at {where}: {gone} discarded; your next prompt makes chunk {n} again with {noise}", "warn")
        io.say(f"chunk {n} was: {old.processed}", "dim")

    def _done(self) -> str:
        from .videofile import concat_videos

        io = self.io
        if not self.chunks:
            io.say("there is nothing to write yet: make a chunk first (or quit)", "bad")
            return GO_ON
        final = concat_videos([self.path("chunk", c.index) for c in self.chunks], self.path("final"))
        frames = sum(c.frames for c in self.chunks)
        n = len(self.chunks)
        io.say(f"wrote {final} ({n} chunk{'s' * (n != 1)}, {frames} frames, {frames / self.fps:.2f} s at "
               f"{self.fps} fps, {self.width}x{self.height})", "good")
        io.say(f"longlive render {self.path('timeline')} makes it again, frame for frame", "dim")
        return DONE

    def _quit(self) -> int:
        n = len(self.chunks)
        kept = f"kept {n} chunk{'s' * (n != 1)}" + (f" (running_{n}.mp4 is the video so far)" if n else "")
        self.io.say(f"quit: {kept} in {self.folder}; no final video written", "warn")
        return 0

    # -- a prompt ------------------------------------------------------------------------------------
    def _planned(self) -> str | None:
        """The plan's prompt for the next chunk, if the session follows a timeline."""
        n = len(self.chunks)
        return self.plan[n] if n < len(self.plan) else None

    def _ai(self) -> bool:
        return bool(getattr(self.enhancer, "available", False))

    def _prompt(self, line: str) -> None:
        io = self.io
        n = len(self.chunks) + 1
        if n > self.max_chunks:
            io.say(f"all {self.max_chunks} chunks are made (--max-chunks): done writes the final video, "
                   f"back or goto N redoes a chunk", "bad")
            return
        raw, text = _split_no_ai(line)
        if not text:
            io.say("write the prompt after No AI:, e.g. No AI: the fox jumps over a log", "bad")
            return
        session = self.enhancer.session
        mark = session.mark()
        if raw or not self._ai():
            processed, source = text, "raw"
            if raw:
                io.say("(as written, no AI)", "dim")
        else:
            reviewed = self._review(text, "prompt")
            if reviewed is None:
                session.revert(mark)
                io.say(f"prompt dropped: chunk {n} not made", "warn")
                return
            processed, source = reviewed
        session.accept(processed)
        if not self._make_chunk(text, processed, source, mark):
            session.revert(mark)

    def _enhance(self, text: str, kind: str) -> Any:
        self.io.say("enhancing...", "dim")
        res = self.enhancer.enhance(text, kind=kind)
        if getattr(res, "error", None):
            self.io.say(res.error, "warn")
        if not (getattr(res, "text", "") or "").strip():
            res = SimpleNamespace(text=text, source="raw", error=None, cost_usd=None)
        return res

    def _review(self, text: str, kind: str) -> tuple[str, str] | None:
        """Enhance and review until accepted: (processed, source); None when dropped with Ctrl-C."""
        io = self.io
        try:
            res = self._enhance(text, kind)
            while True:
                title = "enhanced grounding" if kind == "grounding" else "enhanced prompt"
                io.say(f"{title}" + ("" if res.source == "ai" else " (as written)") + ":", "head")
                io.say(f"  {res.text}", "ai")
                cost = getattr(res, "cost_usd", None)
                if res.source == "ai" and cost is not None:
                    io.say(f"  ({getattr(res, 'input_tokens', 0)} tokens in, {getattr(res, 'output_tokens', 0)} out, "
                           f"${cost:.4f})", "dim")
                choice = io.ask(f"{REVIEW_HELP}> ").strip().lower()
                if choice == "":
                    return res.text.strip(), res.source
                if choice == "r":
                    res = self._enhance(text, kind)
                elif choice == "e":
                    io.say("edit it: type the replacement line (Enter keeps it as shown)", "dim")
                    io.say(res.text)
                    new = io.ask("edit> ").strip()
                    if not new or new == res.text.strip():
                        return res.text.strip(), res.source
                    return new, "raw"
                else:
                    io.say(f"answer with Enter (accept), r (regenerate) or e (edit); Ctrl-C drops this {kind}",
                           "bad")
        except KeyboardInterrupt:
            io.say("")
            return None

    # -- a chunk -------------------------------------------------------------------------------------
    def _lineage(self, specs: list[tuple[str, int | None]]) -> Lineage:
        """The stream's lineage for chunks with these (processed prompt, noise seed)."""
        lineage: Lineage | None = None
        for i, (prompt, noise) in enumerate(specs):
            first = i * self.bpc
            lineage = Lineage(prompt, self.seed) if lineage is None else lineage.with_prompt(first, prompt)
            if noise is not None:
                lineage = lineage.with_noise(first, noise)
        assert lineage is not None
        return lineage

    def _specs(self) -> list[tuple[str, int | None]]:
        return [(c.processed, c.noise_seed) for c in self.chunks]

    def _to_chunk_start(self, n: int, lineage: Lineage) -> None:
        """The pipeline at the first block of chunk n, its changes applied (as `longlive render` does)."""
        first, _ = self._span(n)
        if n == 1:
            self.pipe.start(lineage.prompt, lineage.seed)
        elif self._pipe_at != n - 1:
            self.pipe.restore(self.chunks[n - 2].snapshot)
        self._pipe_at = None
        for change in lineage.changes_at(first):
            if change.prompt is not None:
                self.pipe.switch_prompt(change.prompt)
            else:
                self.pipe.reseed_noise(change.noise_seed)

    def _make_chunk(self, user: str, processed: str, source: str, mark: Any) -> bool:
        from .videofile import VideoWriter, concat_videos

        io = self.io
        n = len(self.chunks) + 1
        noise = self._next_noise
        lineage = self._lineage(self._specs() + [(processed, noise)])
        first, end = self._span(n)
        start_s, end_s = self._times(n)
        total = self._frames(n)
        records: list[_BlockRecord] = []
        began = time.perf_counter()
        try:
            io.say(f"making chunk {n}: {_seconds(start_s)}-{_seconds(end_s)} s, {total} frames (Ctrl-C cancels it)",
                   "dim")
            self._to_chunk_start(n, lineage)
            with VideoWriter(self.path("chunk", n), self.width, self.height, self.fps) as out, \
                    io.progress(total, f"chunk {n}") as bar:
                for _ in range(first, end):
                    blk = self.pipe.next_frames()
                    frames = np.asarray(blk.frames)
                    out.write(frames)
                    records.append(_BlockRecord(int(blk.block), blk.prompt, len(frames), block_hash(frames)))
                    bar.update(len(frames))
            snapshot = self.pipe.snapshot("cpu")
            _atomic_json(self.path("prompts", n), {"user": user, "processed": processed, "source": source})
            concat_videos([self.path("chunk", c.index) for c in self.chunks] + [self.path("chunk", n)],
                          self.path("running", n))
        except KeyboardInterrupt:
            for kind in ("chunk", "prompts", "running"):
                self.path(kind, n).unlink(missing_ok=True)
            if n > 1:
                self.pipe.restore(self.chunks[-1].snapshot)
                self._pipe_at = n - 1
            where = "the start" if n == 1 else f"the end of chunk {n - 1}"
            io.say("")
            io.say(f"chunk {n} cancelled: back at {where}; type its prompt again, or another", "warn")
            return False
        took = time.perf_counter() - began
        self.chunks.append(Chunk(n, user, processed, source, noise, records, snapshot, mark,
                                 start=start_s, end=end_s, frames=total))
        self._pipe_at = n
        self._next_noise = None
        self._save()
        io.say(f"chunk {n} made: {total} frames, {_seconds(start_s)}-{_seconds(end_s)} s, in {took:.1f} s "
               f"({total / max(took, 1e-9):.1f} frames/s); running_{n}.mp4 is the video so far", "good")
        if n == self.max_chunks:
            io.say(f"that was the last chunk (--max-chunks {self.max_chunks}): done writes the final video, "
                   f"back or goto N redoes a chunk", "dim")
        return True

    # -- history.json and timeline.json --------------------------------------------------------------
    def _save(self) -> None:
        history = {
            "session": self.session_id,
            "grounding": self.grounding,
            "settings": {"chunk_duration": self.chunk_duration, "latent_frames_per_chunk": self.bpc * self.F,
                         "blocks_per_chunk": self.bpc, "fps": self.fps, "seed": self.seed,
                         "config": self.config_name, "width": self.width, "height": self.height,
                         "max_chunks": self.max_chunks, "weights": self.source.weights},
            "chunks": [{"index": c.index, "user": c.user, "processed": c.processed, "source": c.source,
                        "start": round(c.start, 6), "end": round(c.end, 6)} for c in self.chunks],
        }
        _atomic_json(self.path("history"), history)
        timeline = self.path("timeline")
        if not self.chunks:
            timeline.unlink(missing_ok=True)
            return
        lineage = self._lineage(self._specs())
        builder = SidecarBuilder(self.source)
        for c in self.chunks:
            for r in c.blocks:
                builder.add(MadeBlock(np.empty((r.frames, 0, 0, 3), np.uint8), r.block, r.prompt, lineage), r.hash)
        builder.timeline().save(timeline)


# -- the command ----------------------------------------------------------------------------------------
def make_enhancer(no_ai: bool) -> Any:
    from .enhancer import EnhancerConfig, PromptEnhancer

    return PromptEnhancer(EnhancerConfig.load(), enabled=not no_ai)


def run(args: argparse.Namespace) -> int:
    from streaming.config import choose_preset, load_config
    from streaming.pipeline import VideoPipeline

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("studio.enhancer").setLevel(logging.ERROR)   # the session shows its fallbacks itself
    plan = None
    if args.timeline is not None:
        from .timeline import Timeline

        timeline = Timeline.load(args.timeline)
        for note in timeline.notes:      # what of the file is not played as written (studio.timeline)
            print(f"{args.timeline.name}: {note}")
        plan = [segment.main_prompt().text for segment in timeline.segments]
        blended = sum(1 for segment in timeline.segments if not isinstance(segment.blend(), str))
        if blended:
            which = "1 segment blends" if blended == 1 else f"{blended} segments blend"
            print(f"{which} several prompts; interactive plays each segment's highest-weight prompt, "
                  f"since a chunk is one typed prompt")
    out_dir = Path(args.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InteractiveError(f"--output-dir {out_dir} is a file; give a folder for the session folders")
    cfg = load_config(choose_preset(args.config, args.weights))
    enhancer = make_enhancer(args.no_ai)
    io = TerminalIO()
    io.say(f"loading the model ({cfg.name})...", "dim")
    pipe = VideoPipeline.from_config(cfg, args.weights, args.device)
    if pipe.embedded_default:
        io.say(f"no weights given: {cfg.about or cfg.source}", "warn")
    weights = "embedded" if args.weights is None else Path(args.weights).name
    session = InteractiveSession(pipe, enhancer, out_dir, args.chunk_duration, args.max_chunks, args.seed, io,
                                 weights=weights, plan=plan)
    return session.run()
