"""T5's vocabulary: a SentencePiece Unigram (through `tokenizers`) whose
texts end with </s>, and sentinels <extra_id_K> for span corruption.

  vocab = Sentinels.train(texts, vocab_size=8000, sentinels=100)
  vocab = Sentinels.from_file("tokenizer.json")     # a T5 checkpoint's
  ids = vocab.encode_batch(["translate: ...", ...], max_len=64)  # (B, 64)
  vocab.sentinel(0)                                  # <extra_id_0>'s id

Ids are numbered as T5's: <pad> 0 (also the decoder's start), </s> 1,
<unk> 2, the pieces, then the sentinels at the end of the vocabulary,
<extra_id_0> last.
"""
import os

import numpy as np
import tokenizers
from tokenizers import decoders, normalizers, pre_tokenizers, processors

from bigmodel_jax.dataio import common
from bigmodel_jax.errors import ConfigError

SPECIALS = ("<pad>", "</s>", "<unk>")


def _name(k: int) -> str:
  return f"<extra_id_{k}>"


class Sentinels:
  """A text-to-text vocabulary (see the module doc)."""

  def __init__(self, tokenizer: tokenizers.Tokenizer):
    tokenizer.no_padding()
    tokenizer.no_truncation()
    self.tokenizer = tokenizer
    ids = [tokenizer.token_to_id(t) for t in SPECIALS]
    if ids != [0, 1, 2]:
      raise ConfigError(f"A T5 vocabulary has {list(SPECIALS)} as ids 0, 1, "
                        f"2; this one has them as {ids}.")
    self.pad_id, self.eos_id = 0, 1
    self.sentinels = []
    while tokenizer.token_to_id(_name(len(self.sentinels))) is not None:
      self.sentinels.append(tokenizer.token_to_id(_name(len(self.sentinels))))

  @classmethod
  def from_file(cls, path: str) -> "Sentinels":
    if not os.path.exists(path):
      raise ConfigError(f"No tokenizer at {path!r}.")
    return cls(tokenizers.Tokenizer.from_file(path))

  @classmethod
  def train(cls, texts, vocab_size: int, sentinels: int = 100
            ) -> "Sentinels":
    """A Unigram of `vocab_size` ids in all, `sentinels` of them."""
    if vocab_size <= sentinels + len(SPECIALS):
      raise ConfigError(f"input.vocab_size={vocab_size} leaves no room "
                        f"beside {sentinels} sentinels.")
    tokenizer = tokenizers.Tokenizer(tokenizers.models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(texts, tokenizers.trainers.UnigramTrainer(
        vocab_size=vocab_size - sentinels, special_tokens=list(SPECIALS),
        unk_token="<unk>", show_progress=False))
    tokenizer.add_special_tokens([_name(k)
                                  for k in reversed(range(sentinels))])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)])
    return cls(tokenizer)

  def sentinel(self, k: int) -> int:
    """The id of <extra_id_k>; ConfigError when there are fewer."""
    if k >= len(self.sentinels):
      raise ConfigError(f"The vocabulary has {len(self.sentinels)} "
                        f"sentinels; span corruption needs <extra_id_{k}>.")
    return self.sentinels[k]

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size()

  def pieces(self, texts: list[str]) -> list[list[int]]:
    """Each text's ids without the closing </s>."""
    return [e.ids[:-1] for e in self.tokenizer.encode_batch(texts)]

  def encode(self, text: str) -> np.ndarray:
    """A source text's ids, closed by </s> (what the encoder reads)."""
    return np.asarray(self.tokenizer.encode(text).ids, np.int32)

  def encode_batch(self, texts: list[str], max_len: int) -> np.ndarray:
    """(B, max_len) ids, cut to keep the closing </s>, padded with 0."""
    ids = np.full((len(texts), max_len), self.pad_id, np.int32)
    for row, encoding in enumerate(self.tokenizer.encode_batch(texts)):
      tokens = encoding.ids
      if len(tokens) > max_len:
        tokens = tokens[:max_len - 1] + [self.eos_id]
      ids[row, :len(tokens)] = tokens
    return ids

  def decode(self, ids) -> str:
    """Text of ids, up to the first </s>; sentinels are kept."""
    ids = [int(i) for i in ids]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    return self.tokenizer.decode([i for i in ids if i != self.pad_id],
                                 skip_special_tokens=False)

  def hf_special_tokens(self) -> dict:
    return {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
            "additional_special_tokens": [_name(k) for k in range(
                len(self.sentinels))]}

  def save(self, path: str) -> None:
    self.tokenizer.save(path)

  def to_hf(self) -> tokenizers.Tokenizer:
    return self.tokenizer


def for_input(config, train_texts, process_count: int) -> Sentinels:
  """`input.vocab_file` (a tokenizer.json) if set, else a vocabulary of
  `input.vocab_size` with `input.sentinels` trained on the texts (by one
  process: training is not deterministic across processes)."""
  if config.get("vocab_file"):
    return Sentinels.from_file(config.vocab_file)
  common.train_tokenizer_once(process_count, "vocab_file")
  return Sentinels.train(train_texts, config.vocab_size,
                         config.get("sentinels", 100))


def load(workdir: str) -> Sentinels:
  return Sentinels.from_file(os.path.join(workdir, "tokenizer.json"))
