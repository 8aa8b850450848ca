"""The committed toy-world weights (configs/toy/, the embedded default): they are what their
manifest says, and words steer what they draw, measured by the evaluator (`bench.toy_eval`) on a
small sample of prompts the model never saw in training. The same sample with the tokenizer's
words shuffled (each word reaching the model as another's token) fails: the evaluator tells a
model that follows its words from one that does not.

What is asserted is what these weights do reliably (docs/TOY_WORLD.md has every figure against
the issue's goals): the setting, at the goal of 90 %; the object's colour at twice chance (one in
eight colours); a switch of the setting shows within two blocks.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from bench.toy_eval import THRESHOLDS, Streams, evaluate_attributes
from bench.toy_measure import measure
from streaming.config import EMBEDDED_DEFAULT, load_config, preset_weights
from training.world import WORLD_VERSION

TOY = preset_weights(load_config("toy"))
SAMPLE = 12          # prompts (each 5 blocks of the product's pipeline)
SEED = 7             # not the evaluator's default seed: another draw of held-out prompts


def test_the_toy_world_is_the_embedded_default():
    assert EMBEDDED_DEFAULT == "toy"


def test_committed_weights_are_what_their_manifest_says():
    manifest = json.loads((TOY / "manifest.json").read_text())
    assert manifest["world_version"] == WORLD_VERSION
    assert not manifest["quick"]
    total = 0
    for name, entry in manifest["files"].items():
        data = (TOY / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
        total += len(data)
    assert total <= 16 * 2**20, total
    assert manifest["losses"]["dit"]["last"] < manifest["losses"]["dit"]["first"]


@pytest.fixture(scope="module")
def committed():
    return Streams(None, "toy")


def _shares(streams: Streams) -> dict[str, float]:
    tallies = evaluate_attributes(streams, SAMPLE, SEED, lambda line: None)
    for name, t in tallies.items():
        print(f"{name}: {t.share:.0%} misses {t.misses}")
    return {name: t.share for name, t in tallies.items()}


COLOUR_FLOOR = 2 / 8     # twice chance among the eight colours


@pytest.mark.slow
def test_committed_weights_follow_their_words(committed):
    shares = _shares(committed)
    assert shares["setting"] >= THRESHOLDS["setting"], shares
    assert shares["colour"] >= COLOUR_FLOOR, shares


@pytest.mark.slow
def test_the_evaluator_fails_a_model_whose_words_are_shuffled(tmp_path):
    shutil.copytree(TOY, tmp_path / "toy")
    path = tmp_path / "toy" / "tokenizer.json"
    tok = json.loads(path.read_text())
    vocab = tok["model"]["vocab"]
    words = [w for w in vocab if not w.startswith("[")]
    ids = [vocab[w] for w in words]
    shuffled = np.random.default_rng(0).permutation(len(ids))
    for w, j in zip(words, shuffled):
        vocab[w] = ids[j]
    path.write_text(json.dumps(tok))
    shares = _shares(Streams(str(tmp_path / "toy"), "toy"))
    assert shares["setting"] < 0.5, shares


GRASS = "a big red ball moving right over green grass"
SNOW = "a big red ball moving right over white snow"


def test_a_switch_from_grass_to_snow_turns_the_ground_white(committed):
    """Offline, the product's pipeline: grass for 4 blocks, then the switch (the re-cache); the
    second block after it is snow from its first frame to its last."""
    pipe = committed.pipe
    pipe.start(GRASS, seed=11)
    before = [pipe.next_frames().frames for _ in range(4)]
    pipe.switch_prompt(SNOW)
    after = [pipe.next_frames().frames for _ in range(2)]
    assert [measure(f).setting for f in before[-1]] == ["grass"] * len(before[-1])
    assert [measure(f).setting for f in after[1]] == ["snow"] * len(after[1])


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["snow", "sand", "ocean"])
def test_the_committed_vae_draws_every_colour_as_itself(committed, setting):
    """Each of the eight colours, a big ball drawn by the world over `setting`, through the
    committed VAE as the product runs it (the encoder, then the streaming decoder): the last
    second of the round trip measures as the colour drawn. (Before the decoder's colour stage,
    `vae_training.COLOUR`, red came back grey-green and orange yellow.)"""
    import torch

    from streaming.pipeline import to_uint8
    from streaming.vae_encoder import load_encoder
    from training.world import COLOURS, Clip, Scene, render

    encoder = load_encoder(load_config("toy").vae, TOY / "vae.safetensors")
    decoder = committed.pipe.decoder
    seen = {}
    for colour in COLOURS:
        frames = render(Clip.of(Scene(colour, "ball", "right", setting, "big"), 33, 3))
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        decoder.reset()
        with torch.no_grad():
            out = to_uint8(decoder.decode(encoder(video[None]))).cpu().numpy()
        seen[colour] = [measure(f).colour for f in out[-16::3]]
    wrong = {c: s for c, s in seen.items() if s.count(c) < len(s) // 2 + 1}
    assert not wrong, wrong
