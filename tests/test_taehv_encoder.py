"""The TAEHV encoder: equal to madebyollin/taehv's own `encode_video` and `StreamingTAEHV` on
every TAEHV set that has encoder cases (sizes from the set's tensors), streamed in chunks of
any length as whole, aligned with the stream's blocks as the Wan encoder is, and its refusals."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from golden import assert_close, fixture_root
from streaming.taehv_encoder import TAEHVEncoder, build_encoder, load_taehv_encoder
from streaming.weights import WeightsError

ENCODER_FILES = ("taehv_encoder.safetensors", "taehv_encode_cases.safetensors")


def _sets():
    root = fixture_root()
    if root is None or not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if all((p / f).is_file() for f in ENCODER_FILES))


@pytest.fixture(scope="module", params=_sets() or [None], ids=lambda p: p.name if p else "none")
def golden(request):
    if request.param is None:
        pytest.fail("no fixture set has taehv_encoder.safetensors and taehv_encode_cases.safetensors")
    cases = load_file(str(request.param / "taehv_encode_cases.safetensors"))
    names = sorted({k.split(".")[0] for k in cases})
    return load_taehv_encoder(request.param / "taehv_encoder.safetensors"), cases, names


def test_sizes_come_from_the_checkpoint(golden):
    enc, cases, names = golden
    for name in names:
        frames, latents = cases[f"{name}.frames"], cases[f"{name}.latents"]
        assert enc.latent_channels == latents.shape[2]
        assert frames.shape[1] == enc.time_factor * latents.shape[1]
        assert frames.shape[-1] == enc.space_factor * latents.shape[-1]


def test_whole_clip_equals_published_encode_video(golden):
    enc, cases, names = golden
    for name in names:
        ours = enc.encode_frames(cases[f"{name}.frames"], enc.new_state())
        assert_close(ours, cases[f"{name}.latents"], f"{name}: whole clip")
        assert_close(ours, cases[f"{name}.stream_latents"], f"{name}: the published streaming")


@pytest.mark.parametrize("chunks", [[1] * 24, [3, 5, 7, 9], [4] * 6, [2, 0, 22]])
def test_chunks_of_any_length_give_the_whole_clips_latents(golden, chunks):
    """The state carries each memory block's last frame and each time pool's leftovers."""
    enc, cases, names = golden
    for name in names:
        frames = cases[f"{name}.frames"]
        state, parts, at = enc.new_state(), [], 0
        for size in chunks:
            parts.append(enc.encode_frames(frames[:, at:at + size], state))
            at += size
        assert_close(torch.cat(parts, 1), cases[f"{name}.latents"][:, :frames[:, :at].shape[1] // enc.time_factor],
                     f"{name}: chunks {chunks}")


def test_blocks_of_the_stream_are_aligned_as_the_wan_encoders(golden):
    """[-1, 1] frames in blocks of 9 then 12: three latents each, latent 0 from frame 0 alone (it
    goes in four times), latent k from frames 4k-3 .. 4k; the same whole or in blocks."""
    enc, cases, names = golden
    step = enc.time_factor
    for name in names:
        frames = cases[f"{name}.frames"][:, :1 + 4 * 5]            # 21 frames: blocks of 9 and 12
        video = frames * 2 - 1
        padded = torch.cat([frames[:, :1].expand(-1, step - 1, -1, -1, -1), frames], 1)
        expected = enc.encode_frames(padded, enc.new_state())
        state = enc.new_state()
        blocks = [enc(video[:, :9], state), enc(video[:, 9:21], state)]
        assert [b.shape[1] for b in blocks] == [3, 3]
        assert_close(torch.cat(blocks, 1), expected, f"{name}: blocks of 9 and 12")
        assert_close(enc(video), expected, f"{name}: whole")
        # latent 0 is frame 0's alone: changing frame 1 leaves it as it is, and changes latent 1
        other = video.clone()
        other[:, 1] = -other[:, 1]
        changed = enc(other)
        assert_close(changed[:, :1], expected[:, :1], f"{name}: latent 0")
        assert not torch.allclose(changed[:, 1], expected[:, 1])


def test_dropping_the_state_between_blocks_changes_the_latents(golden):
    """What the streaming test guards: a stream that forgot its carry differs from the clip."""
    enc, cases, names = golden
    video = cases[f"{names[0]}.frames"][:, :21] * 2 - 1
    whole = enc(video)
    state = enc.new_state()
    first = enc(video[:, :9], state)
    fresh = enc.new_state()
    fresh.started = True
    assert not torch.allclose(torch.cat([first, enc(video[:, 9:21], fresh)], 1), whole, atol=1e-4)


@pytest.mark.parametrize("frames, started, words", [(8, False, r"1 \+ 4k"), (9, True, "multiple of 4"),
                                                    (0, False, r"1 \+ 4k")])
def test_chunks_of_the_wrong_length_are_refused(frames, started, words):
    enc = TAEHVEncoder(build_encoder(width=4))
    state = enc.new_state()
    state.started = started
    with pytest.raises(ValueError, match=words):
        enc(torch.zeros(1, frames, 3, 16, 16), state)


def test_frames_not_a_multiple_of_eight_are_refused():
    enc = TAEHVEncoder(build_encoder(width=4))
    with pytest.raises(ValueError, match="multiples of 8"):
        enc(torch.zeros(1, 1, 3, 20, 16))


def test_a_checkpoint_without_an_encoder_is_one_clear_error(tmp_path):
    path = tmp_path / "decoder_only.safetensors"
    save_file({"decoder.1.weight": torch.zeros(4, 16, 3, 3)}, str(path))
    with pytest.raises(WeightsError, match="has no TAEHV encoder"):
        load_taehv_encoder(path)


def test_published_sizes_load_from_a_checkpoint(tmp_path):
    """A checkpoint of another width, latent size and patch loads with its own sizes."""
    torch.manual_seed(0)
    src = build_encoder(latent_channels=32, width=6, time_strides=(2, 2, 2), patch_size=2)
    path = tmp_path / "other.pth"
    torch.save({f"encoder.{k}": v for k, v in src.state_dict().items()}, path)
    enc = load_taehv_encoder(path)
    assert (enc.latent_channels, enc.time_factor, enc.patch_size, enc.space_factor) == (32, 8, 2, 16)
    out = enc(torch.rand(1, 9, 3, 32, 48) * 2 - 1)
    assert out.shape == (1, 2, 32, 2, 3)
