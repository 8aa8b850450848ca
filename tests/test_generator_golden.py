"""The generator against the official LongLive code: every case of every golden set."""

from __future__ import annotations

import pytest
import torch

from golden import assert_close
from streaming import RecordedNoise, StreamingGenerator, load_dit
from streaming.schedule import Schedule


def _dit(fixture_set, lora: bool, cfg):
    return load_dit(cfg, fixture_set.file("generator_ckpt.pt"), fixture_set.file("lora_ckpt.pt") if lora else None)


@pytest.mark.parametrize("case,lora", [("forward", False), ("forward_lora", True)])
def test_forward(fixture_set, case, lora):
    t = fixture_set.tensors
    cfg = fixture_set.config()
    dit = _dit(fixture_set, lora, cfg)
    window = dit.new_window(cfg.window.local_attn_size, cfg.window.sink_size, cfg.frame_seq_length)
    x, ts = t["forward.noisy_input"], t[f"{case}.timestep"]
    flow = dit(x, ts, dit.encode_prompt(t["context_a"]), window, start_frame=0)
    sched = Schedule.from_config(cfg.schedule)
    x0 = sched.flow_to_x0(flow, x, float(sched.sigma_of(float(ts[0, 0]))))
    assert_close(flow, t[f"{case}.flow_pred"], f"{case}.flow_pred")
    assert_close(x0, t[f"{case}.x0_pred"], f"{case}.x0_pred")


def test_schedule_tables(fixture_set):
    t = fixture_set.tensors
    sched = Schedule.from_config(fixture_set.config().schedule)
    assert_close(sched.sigmas, t["scheduler_sigmas"], "scheduler sigmas")
    assert_close(sched.timesteps, t["scheduler_timesteps"], "scheduler timesteps")
    assert_close(sched.steps, t["denoising_step_list"], "warped denoising steps")


def _run_stream(fixture_set, global_sink: bool, lora: bool):
    t = fixture_set.tensors
    case = fixture_set.cases["stream"]
    cfg = fixture_set.config(global_sink=global_sink)
    fpb = cfg.latent_frames_per_block
    gen = StreamingGenerator(_dit(fixture_set, lora, cfg), cfg,
                             RecordedNoise(t["stream.noise"], t["stream.randn_draws"], fpb))
    trace = []
    gen.trace = lambda *record: trace.append(record)
    gen.reset(t["context_a"], seed=0)
    total = t["stream.noise"].shape[1]
    switch = case.get("switch_frame_index")
    blocks, switched = [], False
    for start in range(0, total, fpb):
        if switch is not None and start >= switch and not switched:
            gen.switch_prompt(t["context_b"])
            switched = True
        blocks.append(gen.next_block())
    return torch.cat(blocks, dim=1), trace


def test_stream(fixture_set):
    t = fixture_set.tensors
    switch = fixture_set.cases["stream"].get("switch_frame_index")
    out, trace = _run_stream(fixture_set, global_sink=True, lora=False)
    assert_close(out, t["stream.output_latents"], "stream.output_latents")
    # the whole trace, step by step: model inputs and x0 of every denoising call
    denoise = [r for r in trace if r[0] == "denoise"]
    shape = t["stream.denoise_inputs"].shape
    assert_close(torch.stack([r[3] for r in denoise]).view(shape), t["stream.denoise_inputs"], "denoise inputs")
    assert_close(torch.stack([r[4] for r in denoise]).view(shape), t["stream.denoise_x0"], "denoise x0")
    recache = [r for r in trace if r[0] == "recache"]
    if "stream.recache.input" not in t:
        return
    assert len(recache) == 1
    # the frames that land on the protected sink are skipped (their K/V would be discarded);
    # every frame that is re-cached must match the official re-cache
    cfg = fixture_set.config()
    applied_at = -(-switch // cfg.latent_frames_per_block) * cfg.latent_frames_per_block     # the first block boundary >= switch
    done = recache[0][3].shape[1]
    skipped = cfg.window.sink_size if applied_at > cfg.window.local_attn_size else 0
    assert done == t["stream.recache.input"].shape[1] - skipped
    assert_close(recache[0][3], t["stream.recache.input"][:, -done:], "recache input")
    assert_close(recache[0][4], t["stream.recache.x0_pred_discarded"][:, -done:], "recache x0")


def test_stream_no_global_sink(fixture_set):
    out, _ = _run_stream(fixture_set, global_sink=False, lora=False)
    assert_close(out, fixture_set.tensors["stream_no_global_sink.output_latents"], "stream_no_global_sink")


def test_stream_lora(fixture_set):
    out, _ = _run_stream(fixture_set, global_sink=True, lora=True)
    assert_close(out, fixture_set.tensors["stream_lora.output_latents"], "stream_lora")


def test_flat_safetensors_weights_equal_checkpoint(fixture_set):
    """generator.safetensors (base layout, no prefix) and lora.safetensors (raw PEFT dict)
    load to the same merged model as the LongLive checkpoint layout."""
    cfg = fixture_set.config()
    a = load_dit(cfg, fixture_set.file("generator_ckpt.pt"), fixture_set.file("lora_ckpt.pt")).state_dict()
    b = load_dit(cfg, fixture_set.file("generator.safetensors"), fixture_set.file("lora.safetensors")).state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
