"""The text side: UMT5 encoder vs the golden fixtures, tokenizers, cleaning, cache, placement, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from golden import assert_close
from streaming import WeightsError
from streaming.config import ConfigError, load_config
from streaming.text import (ByteTokenizer, PromptEncoder, UMT5Tokenizer, clean_prompt, load_umt5,
                            relative_position_buckets)
from streaming.weights import WeightFiles

CPU = torch.device("cpu")


def write_tokenizer(folder: Path, words: list[str]) -> Path:
    """A small T5-like tokenizer.json: <pad>=0, </s>=1, <unk>=2, then `words`; the
    post-processor appends </s> like T5's (the encoder must not add a second one)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from tokenizers.processors import TemplateProcessing

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def id_words(vocab_size: int) -> list[str]:
    """Words whose ids in `write_tokenizer` equal their index: id i <-> word(i)."""
    return [f"t{i}" for i in range(3, vocab_size)]


def word(i: int) -> str:
    return {0: "<pad>", 1: "</s>", 2: "<unk>"}.get(i, f"t{i}")


# -- golden -------------------------------------------------------------------
def test_encoder_matches_golden(fixture_set):
    cfg, t = fixture_set.config(), fixture_set.tensors
    model = load_umt5(cfg, fixture_set.file("t5.safetensors"), CPU, torch.float32)
    out = model(t["t5.ids"], t["t5.mask"])
    assert_close(out, t["t5.encoder_output"], f"{fixture_set.name} t5.encoder_output")
    embeds = out.clone()
    for b, n in enumerate(t["t5.mask"].sum(dim=1).tolist()):
        embeds[b, n:] = 0
    assert_close(embeds, t["t5.prompt_embeds"], f"{fixture_set.name} t5.prompt_embeds")


def test_prompt_encoder_end_to_end_matches_golden(tmp_path, fixture_set):
    """A prompt whose words map to the fixture's ids gives the fixture's prompt_embeds."""
    cfg, t = fixture_set.config(), fixture_set.tensors
    assert t["t5.ids"].shape[1] == cfg.model.text_len
    tok_dir = write_tokenizer(tmp_path / "umt5-xxl", id_words(cfg.text.vocab_size))
    files = WeightFiles(root=fixture_set.path, t5=fixture_set.file("t5.safetensors"), tokenizer=tok_dir)
    enc = PromptEncoder.from_config(cfg, files, CPU)
    for b in range(t["t5.ids"].shape[0]):
        n = int(t["t5.mask"][b].sum())
        ids = t["t5.ids"][b, : n - 1].tolist()   # the last real token is EOS, added by the encoder
        prompt = "  " + "   ".join(word(i) for i in ids) + " \n"
        got_ids, got_mask = enc.tokenize(prompt)
        assert torch.equal(got_ids[0], t["t5.ids"][b]) and torch.equal(got_mask[0], t["t5.mask"][b])
        out = enc.encode(prompt)
        assert out.dtype == torch.float32 and out.device == CPU
        assert_close(out, t["t5.prompt_embeds"][b : b + 1], f"{fixture_set.name} prompt {b}")


# -- numerics pieces ----------------------------------------------------------------
def test_relative_position_buckets_are_t5_bidirectional():
    b = relative_position_buckets(1, 2001, 32, 128)[0]  # query at 0, keys at 0..2000
    assert b[0] == 0 and b[1] == 17 and b[7] == 23 and b[8] == 24 and b[2000] == 31
    b = relative_position_buckets(2001, 1, 32, 128)[:, 0]  # key at 0, queries 0..2000 (key before query)
    assert b[0] == 0 and b[1] == 1 and b[7] == 7 and b[8] == 8 and b[127] == 15 and b[2000] == 15
    assert 8 < int(b[20]) < int(b[50]) < 15                  # logarithmic part grows


def test_full_size_on_meta_and_shared_pos_keys():
    from streaming.config import TextConfig
    from streaming.text import UMT5Encoder

    with torch.device("meta"):
        full = UMT5Encoder(TextConfig())                       # UMT5-XXL: no memory used
    n = sum(p.numel() for p in full.parameters())
    assert 5.6e9 < n < 5.75e9                                  # 5.68 B parameters
    assert "blocks.23.pos_embedding.embedding.weight" in full.state_dict()
    cfg = load_config("tiny").replace(text={"shared_pos": True})
    shared = PromptEncoder.from_config(cfg, None, CPU)
    keys = set(shared.model.state_dict())
    assert "pos_embedding.embedding.weight" in keys and not any("blocks.0.pos_embedding" in k for k in keys)
    out = shared.encode("shared bias")
    assert torch.isfinite(out).all() and torch.count_nonzero(out[0, len("shared bias") + 1:]) == 0


# -- cleaning and tokenizers --------------------------------------------------------
def test_clean_prompt_fixes_html_mojibake_and_whitespace():
    assert clean_prompt("  a\u00a0red\t\tfox \n\n jumps  ") == "a red fox jumps"
    assert clean_prompt("cats &amp; dogs") == "cats & dogs"
    assert clean_prompt("cats &amp;amp; dogs") == "cats & dogs"        # unescaped twice
    assert clean_prompt("caf\u00c3\u00a9") == "caf\u00e9"                  # ftfy fixes mojibake
    assert clean_prompt("   ") == ""


def test_umt5_tokenizer_cleans_appends_eos_and_pads(tmp_path):
    folder = write_tokenizer(tmp_path / "tok", ["a", "red", "fox", "&", "jumps"])
    tok = UMT5Tokenizer.from_folder(folder, text_len=8)
    assert tok.eos_id == 1
    enc = PromptEncoder(load_config("tiny"), model=None, tokenizer=tok, device=CPU)  # tokenize only
    ids, mask = enc.tokenize(" a  red&amp;amp;\tfox ")   # -> "a red& fox": "red&" is unknown
    assert ids.dtype == torch.long and ids.shape == (1, 8) and mask.shape == (1, 8)
    assert ids[0].tolist() == [3, 2, 5, 1, 0, 0, 0, 0]
    assert mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    ids, mask = enc.tokenize("a red &amp; fox")
    assert ids[0].tolist() == [3, 4, 6, 5, 1, 0, 0, 0]      # one EOS only, then pad 0
    assert int(mask.sum()) == 5


def test_umt5_tokenizer_truncates_keeping_eos_last(tmp_path):
    folder = write_tokenizer(tmp_path / "tok", ["a", "red", "fox"])
    tok = UMT5Tokenizer.from_folder(folder, text_len=6)
    ids, mask = tok(" ".join(["a", "red", "fox"] * 10))
    assert ids[0].tolist() == [3, 4, 5, 3, 4, 1]
    assert mask[0].tolist() == [1] * 6
    ids, mask = tok("")                                        # empty prompt: EOS only
    assert ids[0].tolist() == [1, 0, 0, 0, 0, 0] and int(mask.sum()) == 1


def test_byte_tokenizer_ids_eos_padding_truncation():
    tok = ByteTokenizer(text_len=6)
    ids, mask = tok("ab")
    assert ids[0].tolist() == [ord("a") + 2, ord("b") + 2, 1, 0, 0, 0]
    assert mask[0].tolist() == [1, 1, 1, 0, 0, 0]
    ids, mask = tok("\u00e9")                                  # two UTF-8 bytes
    assert ids[0].tolist()[:3] == [0xC3 + 2, 0xA9 + 2, 1]
    ids, mask = tok("x" * 50)
    assert ids[0].tolist() == [ord("x") + 2] * 5 + [1] and int(mask.sum()) == 6


# -- the tiny default: byte tokenizer + seeded encoder -----------------------------
def test_tiny_default_is_deterministic_and_prompts_differ():
    cfg = load_config("tiny")
    a1 = PromptEncoder.from_config(cfg, None, CPU).encode("a red fox in the snow")
    a2 = PromptEncoder.from_config(cfg, None, CPU).encode("a red fox in the snow")
    assert a1.shape == (1, cfg.model.text_len, cfg.model.text_dim) and a1.dtype == torch.float32
    assert torch.equal(a1, a2)
    b = PromptEncoder.from_config(cfg, None, CPU).encode("a blue whale at dawn")
    n = min(len("a red fox in the snow"), len("a blue whale at dawn")) + 1
    assert (a1[0, :n] - b[0, :n]).abs().mean() > 0.3
    other_seed = PromptEncoder.from_config(cfg.replace(weights_seed=cfg.weights_seed + 1), None, CPU).encode("a red fox in the snow")
    assert not torch.allclose(a1, other_seed, atol=1e-3)


def test_rows_past_the_real_tokens_are_zero():
    cfg = load_config("tiny")
    out = PromptEncoder.from_config(cfg, None, CPU).encode("  abc  ")   # cleaned "abc" + EOS = 4 rows
    assert out[0, :4].abs().sum(dim=-1).min() > 0
    assert torch.count_nonzero(out[0, 4:]) == 0


def test_byte_kind_needs_room_for_pad_and_eos():
    with pytest.raises(ConfigError, match="vocab_size must be at least 258"):
        load_config("tiny").replace(text={"vocab_size": 256})


# -- cache and placement ----------------------------------------------------------
def test_cache_skips_the_encoder_for_the_same_cleaned_prompt():
    enc = PromptEncoder.from_config(load_config("tiny"), None, CPU)
    first = enc.encode("cats & dogs")
    assert enc.passes == 1
    again = enc.encode("  cats   &amp;\tdogs \n")          # cleans to the same text
    assert enc.passes == 1 and torch.equal(first, again)
    again.fill_(7.0)                                        # the caller's copy, not the cache's
    assert torch.equal(enc.encode("cats & dogs"), first) and enc.passes == 1
    enc.encode("cats and dogs")
    assert enc.passes == 2


def test_cache_evicts_the_least_recently_used():
    enc = PromptEncoder.from_config(load_config("tiny").replace(text={"cache_size": 2}), None, CPU)
    enc.encode("A"), enc.encode("B"), enc.encode("A")       # A hit: B is now the oldest
    assert enc.passes == 2
    enc.encode("C")                                         # evicts B
    assert enc.cached_prompts() == ["A", "C"] and enc.passes == 3
    enc.encode("A")
    assert enc.passes == 3
    enc.encode("B")
    assert enc.passes == 4 and enc.cached_prompts() == ["A", "B"]


def test_cache_size_zero_always_encodes():
    enc = PromptEncoder.from_config(load_config("tiny").replace(text={"cache_size": 0}), None, CPU)
    a, b = enc.encode("same"), enc.encode("same")
    assert enc.passes == 2 and torch.equal(a, b) and enc.cached_prompts() == []


def test_offload_gives_the_same_embedding_as_resident(monkeypatch):
    cfg = load_config("tiny")
    resident = PromptEncoder.from_config(cfg, None, CPU).encode("a lighthouse at night")
    off = PromptEncoder.from_config(cfg.replace(text={"placement": "offload"}), None, CPU)
    assert off.placement == "offload" and not off.offloaded     # on a CPU device both are the same
    # Exercise the weight round trip (device copy, encode, weights back home) on the CPU.
    monkeypatch.setattr(PromptEncoder, "offloaded", property(lambda self: True))
    homes = [p.data_ptr() for p in off.model.parameters()]
    out = off.encode("a lighthouse at night")
    assert torch.equal(out, resident) and off.passes == 1
    assert [p.data_ptr() for p in off.model.parameters()] == homes
    assert all(p.device == CPU for p in off.model.parameters())


# -- errors ---------------------------------------------------------------------
def test_missing_t5_and_missing_tokenizer_are_clear(tmp_path, fixture_set):
    cfg = fixture_set.config()
    with pytest.raises(WeightsError, match="models_t5_umt5-xxl-enc-bf16.pth"):
        PromptEncoder.from_config(cfg, None, CPU)
    with pytest.raises(WeightsError, match="models_t5_umt5-xxl-enc-bf16.pth.*not found in"):
        PromptEncoder.from_config(cfg, WeightFiles(root=tmp_path), CPU)
    files = WeightFiles(root=tmp_path, t5=fixture_set.file("t5.safetensors"))
    with pytest.raises(WeightsError, match="no tokenizer"):
        PromptEncoder.from_config(cfg, files, CPU)
    (tmp_path / "empty").mkdir()
    files = WeightFiles(root=tmp_path, t5=fixture_set.file("t5.safetensors"), tokenizer=tmp_path / "empty")
    with pytest.raises(WeightsError, match="tokenizer.json does not exist"):
        PromptEncoder.from_config(cfg, files, CPU)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{not json")
    with pytest.raises(WeightsError, match="not a readable tokenizer.json"):
        UMT5Tokenizer.from_folder(tmp_path / "broken", 8)


def test_misshaped_or_missing_encoder_keys_are_one_error(tmp_path, fixture_set):
    cfg = fixture_set.config()
    tok_dir = write_tokenizer(tmp_path / "tok", ["a"])
    sd = load_file(str(fixture_set.file("t5.safetensors")))
    bad = dict(sd)
    w = bad["blocks.0.attn.q.weight"]
    bad["blocks.0.attn.q.weight"] = torch.zeros(w.shape[0] + 1, w.shape[1])
    save_file(bad, str(tmp_path / "bad.safetensors"))
    files = WeightFiles(root=tmp_path, t5=tmp_path / "bad.safetensors", tokenizer=tok_dir)
    with pytest.raises(WeightsError, match=r"bad\.safetensors.*mis-shaped blocks\.0\.attn\.q\.weight"):
        PromptEncoder.from_config(cfg, files, CPU)
    short = {k: v for k, v in sd.items() if k != "norm.weight"}
    save_file(short, str(tmp_path / "short.safetensors"))
    files = WeightFiles(root=tmp_path, t5=tmp_path / "short.safetensors", tokenizer=tok_dir)
    with pytest.raises(WeightsError, match=r"short\.safetensors.*missing keys norm\.weight"):
        PromptEncoder.from_config(cfg, files, CPU)


# -- the toy world's word-level tokenizer ----------------------------------------------------
def _word_folder(tmp_path):
    from training.vocabulary import build_tokenizer

    build_tokenizer().save(str(tmp_path / "tokenizer.json"))
    return tmp_path


def test_word_tokenizer_knows_the_worlds_words_and_folds_the_rest(tmp_path):
    from streaming.text import WordTokenizer

    tok = WordTokenizer.from_folder(_word_folder(tmp_path), 8, 131)
    ids, mask = tok(clean_prompt("A RED ball, blorptz."))
    known = [i for i in ids[0, :int(mask.sum())].tolist()]
    assert known[-1] == 1 and mask.sum() == 7                      # a red ball , [UNK] . then EOS
    unk = tok.tokenizer.token_to_id("[UNK]")
    assert known.count(unk) == 1 and known[:3] != [unk] * 3
    same_unknown, _ = tok(clean_prompt("a red ball, zzqq."))
    assert torch.equal(same_unknown, ids)                           # any unknown word is the same token
    long, long_mask = tok(clean_prompt("red " * 20))
    assert long_mask.sum() == 8 and long[0, 7] == 1                 # truncated, EOS kept last


@pytest.mark.parametrize("content, words", [
    ('{"not": "a tokenizer"}', "not a readable tokenizer.json"),
])
def test_word_tokenizer_refuses_bad_files(tmp_path, content, words):
    from streaming.text import WordTokenizer

    (tmp_path / "tokenizer.json").write_text(content)
    with pytest.raises(WeightsError, match=words):
        WordTokenizer.from_folder(tmp_path, 8, 131)


def test_word_tokenizer_larger_than_the_config_is_refused(tmp_path):
    from streaming.text import WordTokenizer

    with pytest.raises(WeightsError, match="more than the config's text.vocab_size"):
        WordTokenizer.from_folder(_word_folder(tmp_path), 8, 100)


def test_random_encoder_of_a_small_vocabulary_folds_byte_ids():
    """`bench` runs any preset with random weights: byte ids fold into a smaller vocabulary."""
    from streaming.text import ByteTokenizer

    ids, _ = ByteTokenizer(16, vocab_size=131)(clean_prompt("ÿÿ zz"))
    assert int(ids.max()) < 131 and int(ids[0, 0]) >= 2
