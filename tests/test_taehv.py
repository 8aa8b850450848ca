"""The TAEHV-compatible fast decoder: streaming equals whole-clip decoding, frame counts
match the Wan decoder's, rewind state, and the published checkpoint layout loads."""

from __future__ import annotations

import pytest
import torch

from streaming.taehv import MemBlock, TGrow, build_decoder, load_taehv, random_taehv
from streaming.weights import WeightsError


def _small(seed=0):
    torch.manual_seed(seed)
    from streaming.taehv import TAEHVDecoder
    return TAEHVDecoder(build_decoder(widths=(8, 8, 4, 4)))


def test_stream_blocks_equal_whole_clip_and_frame_counts():
    dec = _small()
    z = torch.randn(1, 9, 16, 4, 6)
    whole = dec.decode(z)
    assert whole.shape == (1, 1 + 4 * 8, 3, 32, 48)
    dec.reset()
    parts = [dec.decode(z[:, i:i + 3]) for i in range(0, 9, 3)]
    assert [p.shape[1] for p in parts] == [9, 12, 12]
    torch.testing.assert_close(torch.cat(parts, 1), whole, atol=1e-6, rtol=1e-5)
    assert whole.min() >= -1 and whole.max() <= 1


def test_memory_blocks_carry_across_blocks():
    """The second block depends on the first (a stateless decoder would not)."""
    dec = _small(1)
    z = torch.randn(1, 6, 16, 4, 4)
    dec.decode(z[:, :3])
    carried = dec.decode(z[:, 3:])
    dec.reset()
    dec.decode(z[:, 3:] * 0)
    other = dec.decode(z[:, 3:])
    assert not torch.allclose(carried, other)


def test_state_rewinds():
    dec = _small(2)
    z = torch.randn(1, 9, 16, 4, 4)
    dec.decode(z[:, :3])
    saved = dec.state()
    a = dec.decode(z[:, 3:6])
    dec.set_state(saved)
    assert torch.equal(a, dec.decode(z[:, 3:6]))


def test_layout_of_the_published_decoder():
    d = build_decoder()
    sd = d.state_dict()
    assert isinstance(d[3], MemBlock) and isinstance(d[7], TGrow) and isinstance(d[13], TGrow)
    assert sd["1.weight"].shape == (256, 16, 3, 3)
    assert sd["3.conv.0.weight"].shape == (256, 512, 3, 3)
    assert sd["7.conv.weight"].shape == (256, 256, 1, 1)      # first TGrow: no time upscale
    assert sd["13.conv.weight"].shape == (256, 128, 1, 1)     # 128 channels x 2 frames
    assert sd["22.weight"].shape == (3, 64, 3, 3)


def test_load_checkpoint_with_encoder_keys(tmp_path):
    src = random_taehv("cpu", torch.float32, seed=3)
    sd = {f"decoder.{k}": v for k, v in src.decoder.state_dict().items()}
    sd["encoder.0.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "taew2_1.pth")
    dec = load_taehv(tmp_path / "taew2_1.pth", "cpu", torch.float32)
    z = torch.randn(1, 3, 16, 2, 2)
    assert torch.equal(dec.decode(z), src.decode(z))
    del sd["decoder.22.weight"]
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="bad.pth.*missing keys 22.weight"):
        load_taehv(tmp_path / "bad.pth", "cpu", torch.float32)
