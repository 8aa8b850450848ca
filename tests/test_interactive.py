"""`longlive interactive`: chunks of whole blocks in one stream, review of enhanced prompts,
back / goto from exact snapshots, Ctrl-C, the session folder, and the command at a terminal.

The expected frames always come from driving a `VideoPipeline` by hand (start, switch_prompt,
reseed_noise, next_frames) and are compared by block hash with the session's timeline.json
(the hashes of the raw frames, before encoding)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import av
import pexpect
import pytest

from longlive import cli
from streaming.config import load_config
from streaming.noise import SEED_MAX
from streaming.pipeline import VideoPipeline
from studio.enhancer import EnhancerConfig, EnhancerSession
from studio.interactive import InteractiveSession, TerminalIO, blocks_per_chunk
from studio.sidecar import block_hash

REPO = Path(__file__).resolve().parents[1]
REVIEW = "Enter accepts, r regenerates, e edits> "


# -- helpers ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe() -> VideoPipeline:
    return VideoPipeline.from_config(load_config("tiny"))


class ScriptIO:
    """Scripted input: each item is a line, an exception to raise (EOFError, KeyboardInterrupt) or a
    callable run as a checkpoint between lines. `interrupt` = {bar name: update number} raises
    KeyboardInterrupt once inside that progress bar (Ctrl-C while a chunk is made)."""

    def __init__(self, lines, interrupt: dict[str, int] | None = None):
        self.lines = list(lines)
        self.out: list[str] = []
        self.asked: list[str] = []
        self.interrupt = dict(interrupt or {})

    def say(self, text: str = "", style: str | None = None) -> None:
        self.out.append(text)

    def ask(self, prompt: str) -> str:
        self.asked.append(prompt)
        while self.lines and callable(self.lines[0]) and not isinstance(self.lines[0], type):
            self.lines.pop(0)()
        if not self.lines:
            raise EOFError
        item = self.lines.pop(0)
        if isinstance(item, type) and issubclass(item, BaseException):
            raise item
        return item

    def progress(self, total: int, desc: str):
        script = self

        class Bar:
            updates = 0

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def update(self, n):
                self.updates += 1
                if script.interrupt.get(desc) == self.updates:
                    del script.interrupt[desc]
                    raise KeyboardInterrupt

        return Bar()

    @property
    def text(self) -> str:
        return "\n".join(self.out)


class StubEnhancer:
    """Deterministic answers ("enhanced N: text"); the real, transport-free EnhancerSession."""

    def __init__(self, available: bool = True, notice: str | None = None):
        self.available, self.notice = available, notice
        self.session = EnhancerSession(EnhancerConfig.load())
        self.calls: list[tuple[str, str]] = []

    def enhance(self, text: str, kind: str = "prompt"):
        self.calls.append((kind, text))
        return SimpleNamespace(text=f"enhanced {len(self.calls)}: {text}", source="ai", error=None,
                               input_tokens=12, output_tokens=7, cost_usd=0.0002)


def session(pipe, tmp_path, lines, *, enhancer=None, seconds=0.5, max_chunks=6, seed=7, interrupt=None, plan=None):
    script = ScriptIO(lines, interrupt)
    s = InteractiveSession(pipe, enhancer or StubEnhancer(), tmp_path, seconds, max_chunks, seed, script, plan=plan)
    return s, script


def hashes_of(sidecar: Path) -> list[str]:
    return [b["hash"] for b in json.loads(sidecar.read_text())["longlive"]["blocks"]]


def hashes(folder: Path) -> list[str]:
    """The raw frames' hashes of every block of the session, from its timeline.json."""
    return hashes_of(folder / "timeline.json")


def noise_seeds(folder: Path) -> dict[int, int]:
    run, = json.loads((folder / "timeline.json").read_text())["longlive"]["runs"]
    return {c["block"]: c["noise_seed"] for c in run["changes"] if "noise_seed" in c}


def by_hand(pipe, chunks: list[tuple[str, int | None]], seed: int, bpc: int) -> list[str]:
    """One stream driven by hand: chunk 1 starts it, each later chunk switches the prompt at its first
    block, a redo with fresh noise reseeds there."""
    out = []
    for i, (prompt, noise) in enumerate(chunks):
        if i == 0:
            pipe.start(prompt, seed)
        else:
            pipe.switch_prompt(prompt)
        if noise is not None:
            pipe.reseed_noise(noise)
        out += [block_hash(pipe.next_frames().frames) for _ in range(bpc)]
    return out


def frame_count(path: Path) -> int:
    with av.open(str(path)) as f:
        return sum(1 for _ in f.decode(video=0))


def chunk_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if re.match(r"(chunk|running)_", p.name))


# -- the rule --------------------------------------------------------------------------------------------
def test_a_chunk_is_the_blocks_whose_frames_first_reach_its_duration():
    def counted(seconds, fps, f):
        want, frames, blocks = max(1, round(seconds * fps)), 0, 0
        while frames < want:
            frames += 1 + 4 * (f - 1) if blocks == 0 else 4 * f
            blocks += 1
        return blocks

    for seconds in (0.1, 0.5, 0.57, 0.6, 1, 1.3125, 1.4, 2, 10, 30):
        for fps, f in ((16, 3), (16, 1), (24, 4)):
            assert blocks_per_chunk(seconds, fps, f) == counted(seconds, fps, f), (seconds, fps, f)
    assert blocks_per_chunk(10, 16, 3) == 14 and blocks_per_chunk(1, 16, 3) == 2 and blocks_per_chunk(0.5, 16, 3) == 1


# -- in process: review, back/goto, Ctrl-C, quit ---------------------------------------------------------
def test_review_accepts_regenerates_and_edits_and_no_ai_is_verbatim(pipe, tmp_path):
    enh = StubEnhancer()
    s, script = session(pipe, tmp_path, [
        "a fox in snow", "r", "",                       # grounding: regenerated once, then accepted
        "it runs", "",                                  # chunk 1: accepted
        "it jumps", "e", "the fox leaps over a log",    # chunk 2: edited to the user's line
        "it sits", "e", "",                             # chunk 3: edit offered, empty keeps the enhanced text
        "No AI: the fox sleeps",                        # chunk 4: verbatim, no enhancer call, no review
        "it wakes", "x", "",                            # chunk 5: a wrong answer is explained, then accepted
        "done"], enhancer=enh)
    assert s.run() == 0
    assert enh.calls == [("grounding", "a fox in snow")] * 2 + [("prompt", t) for t in
                                                                ("it runs", "it jumps", "it sits", "it wakes")]
    want = [("it runs", "enhanced 3: it runs", "ai"), ("it jumps", "the fox leaps over a log", "raw"),
            ("it sits", "enhanced 5: it sits", "ai"), ("the fox sleeps", "the fox sleeps", "raw"),
            ("it wakes", "enhanced 6: it wakes", "ai")]
    folder = s.folder
    for n, (user, processed, source) in enumerate(want, 1):
        assert json.loads((folder / f"chunk_{n}_prompts.json").read_text()) == \
            {"user": user, "processed": processed, "source": source}
    assert script.asked.count(REVIEW) == 7 and "edit> " in script.asked
    assert "enhanced 5: it sits" in script.out                      # the enhanced text is shown for editing
    assert any(line.startswith("answer with Enter (accept), r (regenerate) or e (edit)") for line in script.out)
    assert enh.session.grounding == "enhanced 2: a fox in snow"
    assert enh.session.history == [p for _, p, _ in want]
    history = json.loads((folder / "history.json").read_text())
    assert history["grounding"] == {"user": "a fox in snow", "processed": "enhanced 2: a fox in snow"}
    assert [(c["index"], c["user"], c["processed"]) for c in history["chunks"]] == \
        [(n, u, p) for n, (u, p, _) in enumerate(want, 1)]
    # one stream, the processed prompts switching at each chunk's first block (1 block per chunk here)
    assert hashes(folder) == by_hand(pipe, [(p, None) for _, p, _ in want], 7, 1)
    assert frame_count(folder / "final_video.mp4") == 9 + 4 * 12


def test_back_and_goto_continue_from_the_previous_chunk_and_revert_the_enhancer(pipe, tmp_path):
    enh = StubEnhancer()
    seen: dict[str, object] = {}
    folder = lambda: s.folder                                          # noqa: E731
    s, script = session(pipe, tmp_path, [
        "No AI: a harbour",
        "No AI: boats", "No AI: gulls", "No AI: rain",
        lambda: seen.update(first=hashes(folder()), history=list(enh.session.history)),
        "back same",
        lambda: seen.update(after_back=(chunk_files(folder()), list(enh.session.history),
                                        json.loads((folder() / "history.json").read_text())["chunks"])),
        "No AI: rain",                                                  # the same prompt, the same noise
        lambda: seen.update(same=hashes(folder())),
        "back", "No AI: rain",                                          # fresh noise
        lambda: seen.update(fresh=hashes(folder()), fresh_noise=noise_seeds(folder())),
        "goto 2 same",
        lambda: seen.update(after_goto=(chunk_files(folder()), list(enh.session.history))),
        "No AI: gulls", "No AI: fog", "list", "done"], enhancer=enh)
    assert s.run() == 0
    first = seen["first"]
    assert seen["history"] == ["boats", "gulls", "rain"]
    files, history, chunks = seen["after_back"]
    assert files == ["chunk_1.mp4", "chunk_1_prompts.json", "chunk_2.mp4", "chunk_2_prompts.json",
                     "running_1.mp4", "running_2.mp4"]                # chunk 3 discarded, its files too
    assert history == ["boats", "gulls"] and [c["index"] for c in chunks] == [1, 2]
    assert seen["same"] == first                                       # back same + same prompt: the very same frames
    fresh, noise = seen["fresh"], seen["fresh_noise"]
    assert list(noise) == [2] and 0 <= noise[2] <= SEED_MAX
    assert fresh[:2] == first[:2] and fresh[2] != first[2]
    assert fresh == by_hand(pipe, [("boats", None), ("gulls", None), ("rain", noise[2])], 7, 1)
    files, history = seen["after_goto"]
    assert files == ["chunk_1.mp4", "chunk_1_prompts.json", "running_1.mp4"] and history == ["boats"]
    # goto 2 same: chunk 2 again as it first was; chunk 3 new
    final = hashes(s.folder)
    assert final[:2] == first[:2]
    assert final == by_hand(pipe, [("boats", None), ("gulls", None), ("fog", None)], 7, 1)
    assert enh.session.history == ["boats", "gulls", "fog"]
    listing = [line for line in script.out if line.startswith("chunk ") and " s  [" in line]
    assert listing[-3:] == ["chunk 1  0.00-0.56 s  [raw]  boats", "chunk 2  0.56-1.31 s  [raw]  gulls",
                            "chunk 3  1.31-2.06 s  [raw]  fog"]
    assert frame_count(s.folder / "final_video.mp4") == 9 + 12 + 12


def test_the_same_session_typed_again_gives_the_same_video_and_its_redo_noise(pipe, tmp_path):
    lines = ["No AI: a desert", "No AI: dunes", "No AI: wind", "goto 1", "No AI: dunes", "No AI: wind", "done"]
    made = []
    for run, seed in enumerate((3, 3, 4)):
        s, _ = session(pipe, tmp_path / str(run), lines, seed=seed)
        assert s.run() == 0
        made.append((hashes(s.folder), noise_seeds(s.folder)))
    assert made[0] == made[1]                                          # reproducible, the redo's noise too
    assert list(made[0][1]) == [0] and made[2][1][0] != made[0][1][0]  # drawn from the session's seed
    assert made[0][0] == by_hand(pipe, [("dunes", made[0][1][0]), ("wind", None)], 3, 1)


def test_ctrl_c_while_a_chunk_is_made_cancels_that_chunk_only(pipe, tmp_path):
    enh = StubEnhancer()
    seen = {}
    s, script = session(pipe, tmp_path, [
        "No AI: a meadow", "No AI: bees",
        "No AI: rain",                                                  # interrupted in its first block
        lambda: seen.update(files=sorted(p.name for p in s.folder.iterdir()), history=list(enh.session.history),
                            chunks=json.loads((s.folder / "history.json").read_text())["chunks"]),
        "a storm", KeyboardInterrupt,                                   # Ctrl-C at the review drops the prompt
        "No AI: rain", "done"], enhancer=enh, seconds=1, interrupt={"chunk 2": 1})
    assert s.run() == 0
    assert seen["files"] == ["chunk_1.mp4", "chunk_1_prompts.json", "history.json", "running_1.mp4",
                             "timeline.json"]                           # nothing of chunk 2, no partial file
    assert seen["history"] == ["bees"] and len(seen["chunks"]) == 1
    assert "chunk 2 cancelled: back at the end of chunk 1; type its prompt again, or another" in script.out
    assert "prompt dropped: chunk 2 not made" in script.out
    # the chunk made after the cancel continues chunk 1 as if nothing had happened
    assert hashes(s.folder) == by_hand(pipe, [("bees", None), ("rain", None)], 7, 2)
    assert enh.session.history == ["bees", "rain"]
    assert frame_count(s.folder / "final_video.mp4") == 21 + 24


@pytest.mark.parametrize("end", ["quit", EOFError, KeyboardInterrupt])
def test_quit_end_of_input_and_ctrl_c_at_the_prompt_keep_what_was_saved(pipe, tmp_path, end):
    s, script = session(pipe, tmp_path, ["No AI: a lake", "No AI: ducks", "No AI: swans", end])
    assert s.run() == 0
    assert chunk_files(s.folder) == ["chunk_1.mp4", "chunk_1_prompts.json", "chunk_2.mp4", "chunk_2_prompts.json",
                                     "running_1.mp4", "running_2.mp4"]
    assert not (s.folder / "final_video.mp4").exists()
    assert frame_count(s.folder / "running_2.mp4") == 9 + 12
    assert len(json.loads((s.folder / "history.json").read_text())["chunks"]) == 2
    assert script.out[-1].startswith("quit: kept 2 chunks (running_2.mp4 is the video so far)")


def test_without_the_enhancer_prompts_are_used_as_written_with_no_review(pipe, tmp_path):
    enh = StubEnhancer(available=False, notice="AI enhancement is off (--no-ai): prompts are used as written")
    s, script = session(pipe, tmp_path, ["a castle", "it rains", "done"], enhancer=enh)
    assert s.run() == 0
    assert enh.calls == [] and REVIEW not in script.asked
    assert script.out.count(enh.notice) == 1
    assert json.loads((s.folder / "chunk_1_prompts.json").read_text()) == \
        {"user": "it rains", "processed": "it rains", "source": "raw"}
    assert enh.session.grounding == "a castle" and enh.session.history == ["it rains"]


def test_a_timeline_is_the_chunk_plan_enter_takes_its_prompt_as_written(pipe, tmp_path):
    enh = StubEnhancer()
    s, script = session(pipe, tmp_path, ["a castle", "", "", "", "No AI: my own third", "done"], enhancer=enh,
                        plan=["planned one", "planned two"])
    assert s.run() == 0
    prompts = [json.loads((s.folder / f"chunk_{n}_prompts.json").read_text())["processed"] for n in (1, 2, 3)]
    assert prompts == ["planned one", "planned two", "my own third"]
    assert "plan for chunk 1: planned one" in "\n".join(script.out)
    assert not any("planned" in text for _, text in enh.calls)      # the plan's prompts are not rewritten again


def test_mistakes_get_one_sentence_each(pipe, tmp_path):
    s, script = session(pipe, tmp_path, [
        "", "list", "No AI:",                                           # at the grounding
        "No AI: a volcano",
        "done", "back", "goto 1", "", "No AI:  ",                       # nothing made yet
        "No AI: lava", "No AI: ash",
        "goto", "goto two", "goto 3", "goto 0", "goto 1 maybe",
        "No AI: smoke",                                                 # past --max-chunks 2
        "done"], max_chunks=2)
    assert s.run() == 0
    said = script.out
    for expected in ("the grounding must not be empty: describe the subject and the setting",
                     "there are no chunks yet: first describe the subject and the setting (list comes later)",
                     "write the text after No AI:, e.g. No AI: a red fox in a snowy forest",
                     "there is nothing to write yet: make a chunk first (or quit)",
                     "there is no chunk to go back to yet",
                     "there is no chunk to go to yet",
                     "type the prompt of chunk 1, or a command (help lists them)",
                     "write the prompt after No AI:, e.g. No AI: the fox jumps over a log",
                     "goto takes a chunk number, like goto 2 (goto 2 same keeps its noise)",
                     "there is no chunk 3: chunks 1-2 are made",
                     "there is no chunk 0: chunks 1-2 are made",
                     "all 2 chunks are made (--max-chunks): done writes the final video, "
                     "back or goto N redoes a chunk"):
        assert expected in said, expected
    assert said.count("goto takes a chunk number, like goto 2 (goto 2 same keeps its noise)") == 3
    assert all("\n" not in line for line in said if not line.startswith("commands:"))
    assert script.asked[-1] == "all 2 chunks made> "
    assert len(hashes(s.folder)) == 2 and frame_count(s.folder / "final_video.mp4") == 21


def test_colours_only_on_a_terminal_without_no_color():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert TerminalIO(stdin=io.StringIO(), stdout=Tty(), env={}).color
    assert not TerminalIO(stdin=io.StringIO(), stdout=Tty(), env={"NO_COLOR": "1"}).color
    assert not TerminalIO(stdin=io.StringIO(), stdout=io.StringIO(), env={}).color
    out = Tty()
    t = TerminalIO(stdin=io.StringIO("hello\n"), stdout=out, env={})
    t.say("made", "good")
    assert t.ask("chunk 1> ") == "hello"
    with pytest.raises(EOFError):
        t.ask("chunk 1> ")
    assert "\x1b[32mmade\x1b[0m" in out.getvalue() and "\x1b[1mchunk 1> \x1b[0m" in out.getvalue()
    plain = io.StringIO()
    TerminalIO(stdin=io.StringIO(), stdout=plain, env={}).say("made", "good")
    assert plain.getvalue() == "made\n"


# -- the command line ------------------------------------------------------------------------------------
def test_the_command_line_arguments(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LONGLIVE_WEIGHTS", "")
    args = cli.build_parser().parse_args(["interactive"])
    assert (args.chunk_duration, args.max_chunks, args.seed, args.output_dir, args.no_ai, args.timeline) == \
        (10.0, 6, 42, Path("."), False, None)
    assert args.subcommand.run == "studio.interactive:run"
    for argv, says in ((["--chunk-duration", "0"], "argument --chunk-duration: 0 is out of range"),
                       (["--max-chunks", "0"], "argument --max-chunks: 0 must be at least 1"),
                       (["--seed", "-1"], "argument --seed: -1 is out of range")):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["interactive", *argv])
        assert exit_.value.code == 2 and says in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    for argv, says in ((["--timeline", str(tmp_path / "t.json")], "t.json does not exist"),
                       (["--output-dir", str(tmp_path / "afile")], "is a file; give a folder")):
        assert cli.main(["interactive", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("longlive: ") and says in err and "\n" not in err, err


# -- at a terminal ---------------------------------------------------------------------------------------
# How long one step at the terminal may take: loading the model, or making a chunk of 105 frames (6 s of CPU
# time on an idle 2-core machine, 25 s with the machine loaded several times over). Generous: it only bounds
# how long a broken program takes to fail.
STEP_S = 300


def spawn(tmp_path: Path, *args: str) -> tuple[pexpect.spawn, io.StringIO]:
    import signal

    env = {**os.environ, "LONGLIVE_WEIGHTS": "", "PYTHONPATH": str(REPO), "NO_COLOR": "1", "TERM": "dumb"}
    env.pop("ANTHROPIC_API_KEY", None)
    # Ctrl-C interrupts the program, as at a terminal, also when the tests run with SIGINT ignored: a shell
    # without job control starts its background jobs (`make test &`) so, a child inherits it, and Python
    # then installs no KeyboardInterrupt handler (Ctrl-C would do nothing and the chunk would be made)
    # the tiny preset, as the reference streams these tests compare with (`pipe`)
    argv = ["-m", "longlive", "interactive", "--no-ai", "--config", "tiny", "--output-dir", "out", *args]
    child = pexpect.spawn(sys.executable, argv,
                          cwd=str(tmp_path), env=env, encoding="utf-8", timeout=STEP_S, dimensions=(50, 200),
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    child.logfile_read = log = io.StringIO()
    return child, log


def step(child: pexpect.spawn, line: str, then: str) -> None:
    child.sendline(line)
    child.expect_exact(then)


def test_the_command_at_a_terminal_back_goto_list_done_and_render_again(pipe, tmp_path):
    child, log = spawn(tmp_path, "--chunk-duration", "1", "--max-chunks", "4", "--seed", "5")
    try:
        child.expect_exact("grounding> ")
        step(child, "a lighthouse on a cliff", "chunk 1/4> ")
        step(child, "a storm rolls in", "chunk 2/4> ")
        step(child, "the sea calms", "chunk 3/4> ")
        step(child, "night falls", "chunk 4/4> ")
        folder, = (tmp_path / "out").iterdir()
        first = hashes(folder)
        step(child, "back same", "chunk 3/4> ")
        assert not (folder / "chunk_3.mp4").exists()
        step(child, "night falls", "chunk 4/4> ")
        same = hashes(folder)
        step(child, "back", "chunk 3/4> ")
        step(child, "night falls", "chunk 4/4> ")
        fresh, fresh_noise = hashes(folder), noise_seeds(folder)
        step(child, "goto 1", "chunk 1/4> ")
        after_goto = chunk_files(folder), json.loads((folder / "history.json").read_text())["chunks"]
        step(child, "a calm sea", "chunk 2/4> ")
        step(child, "the sun rises", "chunk 3/4> ")
        child.sendline("list")
        child.expect(r"chunk 1  0\.00-1\.31 s  \[raw\]  a calm sea\s+chunk 2  1\.31-2\.81 s  \[raw\]  the sun rises")
        child.expect_exact("chunk 3/4> ")
        child.sendline("done")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    transcript = log.getvalue()
    assert child.exitstatus == 0, transcript
    assert transcript.count("AI enhancement is off (--no-ai): prompts are used as written") == 1
    assert "frame/s" in transcript                                     # the progress bar on stderr
    assert "\x1b[3" not in transcript                                  # NO_COLOR: no colours
    b = 2                                                              # blocks per chunk: 21 then 24 frames
    assert first == by_hand(pipe, [("a storm rolls in", None), ("the sea calms", None), ("night falls", None)], 5, b)
    assert same == first                                               # back same: the very same frames
    assert list(fresh_noise) == [4] and fresh[:4] == first[:4] and fresh[4:] != first[4:]
    assert fresh == by_hand(pipe, [("a storm rolls in", None), ("the sea calms", None),
                                   ("night falls", fresh_noise[4])], 5, b)
    assert after_goto == ([], [])                                      # goto 1 discards every chunk
    noise = noise_seeds(folder)
    assert list(noise) == [0]
    final = hashes(folder)
    assert final == by_hand(pipe, [("a calm sea", noise[0]), ("the sun rises", None)], 5, b)

    assert sorted(p.name for p in folder.iterdir()) == [
        "chunk_1.mp4", "chunk_1_prompts.json", "chunk_2.mp4", "chunk_2_prompts.json", "final_video.mp4",
        "history.json", "running_1.mp4", "running_2.mp4", "timeline.json"]
    counts = {name: frame_count(folder / name) for name in
              ("chunk_1.mp4", "chunk_2.mp4", "running_1.mp4", "running_2.mp4", "final_video.mp4")}
    assert counts == {"chunk_1.mp4": 21, "chunk_2.mp4": 24, "running_1.mp4": 21, "running_2.mp4": 45,
                      "final_video.mp4": 45}
    assert json.loads((folder / "chunk_2_prompts.json").read_text()) == \
        {"user": "the sun rises", "processed": "the sun rises", "source": "raw"}
    history = json.loads((folder / "history.json").read_text())
    assert history["session"] == folder.name.removeprefix("session_")
    assert re.fullmatch(r"\d{8}_\d{6}", history["session"])
    assert history["grounding"] == {"user": "a lighthouse on a cliff", "processed": "a lighthouse on a cliff"}
    settings = {k: history["settings"][k] for k in ("chunk_duration", "latent_frames_per_chunk", "blocks_per_chunk",
                                                    "fps", "seed", "config", "width", "height")}
    assert settings == {"chunk_duration": 1.0, "latent_frames_per_chunk": 6, "blocks_per_chunk": 2, "fps": 16,
                        "seed": 5, "config": "tiny", "width": 320, "height": 192}
    assert [{k: c[k] for k in ("index", "user", "processed", "start", "end")} for c in history["chunks"]] == [
        {"index": 1, "user": "a calm sea", "processed": "a calm sea", "start": 0.0, "end": 21 / 16},
        {"index": 2, "user": "the sun rises", "processed": "the sun rises", "start": 21 / 16, "end": 45 / 16}]

    # the session's timeline makes the final video again, frame for frame
    done = subprocess.run([sys.executable, "-m", "longlive", "render", str(folder / "timeline.json"),
                           "-o", "again.mp4"], cwd=tmp_path, capture_output=True, text=True, timeout=2 * STEP_S,
                          env={**os.environ, "LONGLIVE_WEIGHTS": "", "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert "the frames equal the recording's: all 4 blocks match its hashes" in done.stdout
    assert hashes_of(tmp_path / "again.timeline.json") == final
    assert frame_count(tmp_path / "again.mp4") == 45


def test_ctrl_c_during_a_chunk_at_a_terminal_then_quit_keeps_the_chunks(pipe, tmp_path):
    child, log = spawn(tmp_path, "--chunk-duration", "6", "--max-chunks", "3")    # 9 blocks: 105, then 108 frames
    try:
        child.expect_exact("grounding> ")
        step(child, "a windmill on a hill", "chunk 1/3> ")
        step(child, "the sails turn", "chunk 2/3> ")
        child.sendline("a storm comes")
        child.expect_exact("making chunk 2")            # said as the chunk begins, where Ctrl-C cancels it
        child.sendintr()
        made = child.expect_exact(["chunk 2 cancelled: back at the end of chunk 1", "chunk 2 made"])
        assert made == 0, "Ctrl-C did not cancel chunk 2: it was made\n" + log.getvalue()[-2000:]
        child.expect_exact("chunk 2/3> ")
        folder, = (tmp_path / "out").iterdir()
        assert chunk_files(folder) == ["chunk_1.mp4", "chunk_1_prompts.json", "running_1.mp4"]
        child.sendline("quit")
        child.expect_exact("quit: kept 1 chunk (running_1.mp4 is the video so far)")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, log.getvalue()
    # no final video, no partial file
    assert sorted(p.name for p in folder.iterdir()) == ["chunk_1.mp4", "chunk_1_prompts.json", "history.json",
                                                        "running_1.mp4", "timeline.json"]
    assert frame_count(folder / "chunk_1.mp4") == 105 and frame_count(folder / "running_1.mp4") == 105
    assert [c["user"] for c in json.loads((folder / "history.json").read_text())["chunks"]] == ["the sails turn"]


def test_with_the_real_enhancer_the_model_sees_grounding_and_history_and_back_reverts_it(pipe, tmp_path,
                                                                                          monkeypatch):
    """The session over studio.enhancer.PromptEnhancer and the fake Messages API (loopback, real SDK)."""
    from messages_api import FakeMessagesAPI
    from studio.enhancer import PromptEnhancer

    with FakeMessagesAPI() as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        for text in ("GROUNDED: a fox in a snowy birch wood", "FIRST: the fox trots left",
                     "FIRST AGAIN: the fox trots right", "SECOND: the fox leaps", "REDO: the fox sits"):
            api.answer_text(text)
        enh = PromptEnhancer(EnhancerConfig.load(), api_key="sk-ant-test-TERMSECRET")
        s, script = session(pipe, tmp_path, [
            "a fox in a wood", "",                    # grounding, accepted as enhanced
            "it trots", "r", "",                      # regenerate, then accept the second answer
            "it leaps", "e", "the fox leaps high",    # an edit replaces the answer
            "No AI: a plain third",                   # verbatim: no request
            "back",                                   # drop chunk 3: history back to two prompts
            "it sits", "",
            "done"], enhancer=enh)
        assert s.run() == 0
        asks = [r["json"]["messages"][-1]["content"] for r in api.messages_requests()]
    assert len(asks) == 5                                              # the No AI: line sent nothing
    as_text = [a if isinstance(a, str) else json.dumps(a) for a in asks]
    assert "a fox in a wood" in as_text[0]
    assert all("GROUNDED: a fox in a snowy birch wood" in a for a in as_text[1:])
    assert "FIRST AGAIN: the fox trots right" in as_text[3]            # the accepted one is history ...
    assert "FIRST: the fox trots left" not in as_text[3]               # ... the regenerated one is not
    assert "the fox leaps high" in as_text[4] and "a plain third" not in as_text[4]   # back reverted it
    processed = [json.loads((s.folder / f"chunk_{n}_prompts.json").read_text())["processed"] for n in (1, 2, 3)]
    assert processed == ["FIRST AGAIN: the fox trots right", "the fox leaps high", "REDO: the fox sits"]
    assert "sk-ant-test-TERMSECRET" not in "\n".join(script.out)
