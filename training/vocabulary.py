"""The toy world's tokenizer: one token per word the captions use, every other word one unknown token.

Built with the `tokenizers` library (a word-level model trained on the grammar's words, so it
is saved and read as an ordinary tokenizer.json): text is NFKC-normalised and lowercased, split
at whitespace and punctuation; `[PAD]` is id 0 and `[EOS]` id 1, as the byte tokenizer has them,
and `[UNK]` stands for any word outside the vocabulary, so a word the world does not know reaches
the model as the same token every time and changes nothing it learnt to draw.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from .captions import words

PAD, EOS, UNK = "[PAD]", "[EOS]", "[UNK]"
PUNCTUATION = (".", ",", ":")


def build_tokenizer() -> Tokenizer:
    """The word-level tokenizer of `captions.words()` and `PUNCTUATION` (the same ids on every run)."""
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=[PAD, EOS, UNK], min_frequency=1, show_progress=False)
    tokenizer.train_from_iterator([" ".join([*words(), *PUNCTUATION])], trainer=trainer)
    return tokenizer
