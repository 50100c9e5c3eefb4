"""WordPiece tokenization (BERT) through the `tokenizers` package; any
tokenizer.json with start, end and padding tokens (SPECIALS: a CLIP or
RoBERTa checkpoint's byte-level BPE) is used the same way.

  tok = WordPiece.from_file("vocab.txt")          # or a tokenizer.json
  ids = tok.encode_batch(["a sentence", ...], max_len=64)  # (B, 64) int32
  tok = WordPiece.train(open("corpus.txt"), vocab_size=8000)  # a new vocabulary
"""
import os

import numpy as np
import tokenizers
from tokenizers.implementations import BertWordPieceTokenizer

from bigmodel_jax.errors import ConfigError


# Special tokens by role, as vocabularies name them: BERT's, RoBERTa's and
# CLIP's (which pads with its end token).
SPECIALS = {"pad": ("[PAD]", "<pad>", "<|endoftext|>"),
            "start": ("[CLS]", "<s>", "<|startoftext|>"),
            "end": ("[SEP]", "</s>", "<|endoftext|>")}


def _special(tokenizer: tokenizers.Tokenizer, role: str) -> tuple[str, int]:
  for token in SPECIALS[role]:
    if tokenizer.token_to_id(token) is not None:
      return token, tokenizer.token_to_id(token)
  raise ConfigError(f"The vocabulary has no {role} token (one of "
                    f"{list(SPECIALS[role])}).")


class WordPiece:
  """[CLS] text [SEP], truncated and padded to a fixed length (or a
  vocabulary's own start, end and padding tokens: SPECIALS)."""

  def __init__(self, tokenizer: tokenizers.Tokenizer):
    tokenizer.no_padding()
    tokenizer.no_truncation()
    self.tokenizer = tokenizer
    _, self.pad_id = _special(tokenizer, "pad")
    end, self.sep_id = _special(tokenizer, "end")
    start, cls_id = _special(tokenizer, "start")
    if tokenizer.post_processor is None:  # A newly trained vocabulary.
      tokenizer.post_processor = tokenizers.processors.BertProcessing(
          (end, self.sep_id), (start, cls_id))

  @classmethod
  def from_file(cls, path: str, lowercase: bool = True) -> "WordPiece":
    """From a BERT vocab.txt (one token per line) or a tokenizer.json."""
    if path.endswith(".json"):
      return cls(tokenizers.Tokenizer.from_file(path))
    return cls(BertWordPieceTokenizer(path, lowercase=lowercase)._tokenizer)

  @classmethod
  def train(cls, texts, vocab_size: int, lowercase: bool = True,
            min_frequency: int = 2) -> "WordPiece":
    """A new vocabulary learned from an iterable of texts (a local corpus)."""
    tokenizer = BertWordPieceTokenizer(lowercase=lowercase)
    tokenizer.train_from_iterator(texts, vocab_size=vocab_size,
                                  min_frequency=min_frequency,
                                  show_progress=False)
    return cls(tokenizer._tokenizer)

  @property
  def eos_id(self) -> int:
    """[SEP], which ends every encoded text (generation stops at it)."""
    return self.sep_id

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size()

  def encode(self, text: str) -> np.ndarray:
    """A prompt's ids: [CLS] and the text's tokens, open (no [SEP]): what a
    decoder trained on these texts continues."""
    return np.asarray(self.tokenizer.encode(text).ids[:-1], np.int32)

  def encode_batch(self, texts: list[str], max_len: int) -> np.ndarray:
    ids = np.full((len(texts), max_len), self.pad_id, np.int32)
    for row, encoding in enumerate(self.tokenizer.encode_batch(texts)):
      tokens = encoding.ids
      if len(tokens) > max_len:  # Keep the final [SEP].
        tokens = tokens[:max_len - 1] + [self.sep_id]
      ids[row, :len(tokens)] = tokens
    return ids

  def decode(self, ids) -> str:
    return self.tokenizer.decode([int(i) for i in ids if i != self.pad_id])

  def save(self, path: str) -> None:
    self.tokenizer.save(path)

  def to_hf(self) -> tokenizers.Tokenizer:
    """The Hugging Face tokenizer (for exported models)."""
    return self.tokenizer


def for_input(config, train_texts, process_count: int) -> WordPiece:
  """`input.vocab_file` if set, else a vocabulary of `input.vocab_size`
  trained on the training texts (one process only: training is not
  deterministic across processes)."""
  if config.get("vocab_file"):
    return WordPiece.from_file(config.vocab_file)
  if process_count > 1:
    raise ConfigError(
        "Several processes need one shared vocabulary: train it once (a "
        "one-process run writes WORKDIR/tokenizer.json) and pass "
        "--config.input.vocab_file=PATH.")
  return WordPiece.train(train_texts, config.vocab_size)


def load(workdir: str) -> WordPiece:
  """The vocabulary a run saved in its workdir."""
  return WordPiece.from_file(os.path.join(workdir, "tokenizer.json"))
