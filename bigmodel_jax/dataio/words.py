"""Word-level vocabularies (word2vec): lowercase words, most frequent first.

  vocab = Words.build(sentences, min_count=5)   # sentences: lists of words
  ids = vocab.encode("O Romeo, Romeo!")         # unknown words -> UNK_ID
  Words.load(path); vocab.save(path)            # JSON, in the workdir

Words are runs of ASCII letters with inner apostrophes ("o'er", "'tis" ->
"tis"), lowercased (`split_words`); id 0 pads, id 1 stands for a word
outside the vocabulary, and words from id 2 on are sorted by descending
count, ties alphabetically (gensim's order).
"""
import collections
import json
import re

import numpy as np

from bigmodel_jax.errors import ConfigError

WORD = r"[a-z]+(?:'[a-z]+)*"
PAD_ID, UNK_ID = 0, 1
SPECIALS = ("<pad>", "<unk>")


def split_words(text: str) -> list[str]:
  return re.findall(WORD, text.lower())


class Words:
  """A word <-> id vocabulary with the word counts it was built from."""

  def __init__(self, words: list[str], counts: list[int]):
    self.words, self.counts = list(words), np.asarray(counts, np.int64)
    self._ids = {w: i for i, w in enumerate(self.words)}
    self.pad_id, self.eos_id = PAD_ID, None

  @classmethod
  def build(cls, sentences, min_count: int, max_size: int | None = None
            ) -> "Words":
    """The words of `sentences` (iterables of words) seen `min_count` times
    or more, the `max_size` most frequent at most."""
    counter = collections.Counter(w for s in sentences for w in s)
    kept = sorted(((w, c) for w, c in counter.items() if c >= min_count),
                  key=lambda wc: (-wc[1], wc[0]))[:max_size]
    if not kept:
      raise ConfigError(f"No word occurs input.min_count={min_count} times "
                        "in the training text.")
    return cls([*SPECIALS, *(w for w, _ in kept)],
               [0, 0, *(c for _, c in kept)])

  @property
  def vocab_size(self) -> int:
    return len(self.words)

  def word_ids(self) -> np.ndarray:
    """The ids that are words (not padding or unknown), in order."""
    return np.arange(len(SPECIALS), len(self.words))

  def ids(self, words: list[str]) -> np.ndarray:
    return np.asarray([self._ids.get(w, UNK_ID) for w in words], np.int32)

  def encode(self, text: str) -> np.ndarray:
    return self.ids(split_words(text))

  def encode_batch(self, texts: list[str], max_len: int) -> np.ndarray:
    """(len(texts), max_len) ids, truncated and padded with PAD_ID."""
    out = np.full((len(texts), max_len), PAD_ID, np.int32)
    for row, text in enumerate(texts):
      ids = self.encode(text)[:max_len]
      out[row, :len(ids)] = ids
    return out

  def decode(self, ids) -> str:
    return " ".join(self.words[i] for i in np.asarray(ids).tolist()
                    if i != PAD_ID)

  def save(self, path: str) -> None:
    with open(path, "w") as f:
      json.dump({"type": "words", "words": self.words,
                 "counts": self.counts.tolist()}, f)

  @classmethod
  def load(cls, path: str) -> "Words":
    with open(path) as f:
      saved = json.load(f)
    return cls(saved["words"], saved["counts"])

  def to_hf(self):
    """The same ids as a Hugging Face `tokenizers.Tokenizer`."""
    import tokenizers
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(
        dict(self._ids), unk_token=SPECIALS[UNK_ID]))
    tokenizer.normalizer = tokenizers.normalizers.Lowercase()
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Split(
        tokenizers.Regex(WORD), behavior="removed", invert=True)
    return tokenizer
