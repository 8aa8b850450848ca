"""The engine with a live input: each block takes the input clock's frames for it and the
input strength; an input that stops lets the stream go on from the words with one notice, and
its return is said too."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from server.engine import Engine
from server.media.input_clock import InputClock
from server.protocol import Notice


class Pipe:
    fps, size, embedded_default, device = 16, (16, 16), True, None
    cfg = SimpleNamespace(name="fake", latent_frames_per_block=3)

    def __init__(self):
        self.calls, self.block = [], 0

    @property
    def input_frames_wanted(self) -> int:
        return 9 if self.block == 0 else 12

    def encode(self, prompt):
        return ("embedding", prompt)

    def start(self, prompt, seed=0, embedding=None):
        self.block = 0

    def switch_prompt(self, prompt, embedding=None, transition=None):
        pass

    def next_frames(self, frames=None, strength=None):
        self.calls.append(None if frames is None else (len(frames), strength))
        n = 9 if self.block == 0 else 12
        self.block += 1
        return SimpleNamespace(frames=np.zeros((n, 16, 16, 3), np.uint8), block=self.block - 1, prompt="p",
                               dit_ms=1.0, decode_ms=1.0, transition=None)


def test_blocks_take_the_inputs_frames_and_say_when_it_stops_and_comes_back():
    now = [0.0]
    pipe = Pipe()
    engine = Engine(pipe, prompt="p")
    engine.input = InputClock(hold=1.0, clock=lambda: now[0])
    engine.input_strength = 0.4
    said = []
    engine.emit = lambda event: said.append(event.message) if isinstance(event, Notice) else None
    frame = np.zeros((16, 16, 3), np.uint8)
    for n in range(12):
        engine.input.push(frame, n / 16)
    pipe.start("p")
    engine._next_frames()                       # the first block: 9 frames of the input
    engine._next_frames()                       # then 12 (the newest held)
    now[0] += 2.0                               # the input stopped
    engine._next_frames()
    engine._next_frames()
    for n in range(12, 24):
        engine.input.push(frame, n / 16)
    engine._next_frames()
    assert pipe.calls == [(9, 0.4), (12, 0.4), None, None, (12, 0.4)]
    assert said == ["the input stopped: the stream goes on from the words alone", "the input is back"]
