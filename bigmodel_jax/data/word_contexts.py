"""word2vec training examples from any text corpus: skip-gram pairs or CBOW
windows, with negatives drawn from the unigram distribution to the 3/4.

Text comes as for `text_corpus` (a TFDS dataset by name or local
.txt/.jsonl/.parquet files); each document is split into sentences at blank
lines (`input.sentence_split`: "paragraph", or "line") and into lowercase
words (`dataio/words.py`). The vocabulary keeps the training split's words
seen `input.min_count` times (at most `input.max_vocab`); other words are
dropped from the text, as gensim does. Each split's sentences are held in
memory as one array of word ids (4 bytes a word).

A batch row is one centre word drawn with the probability that frequent-word
subsampling keeps it (Mikolov et al. 2013, gensim's formula with threshold
`input.sample`; 0: no subsampling), a window of b words each side with b
uniform in 1..`input.window` (within its sentence), and:

  skipgram  "inputs" (B, 1): the centre; "targets" (B, 1 + K): one word of
            its window, then K negatives; "weights" (B, 1 + K): the
            context word's keep probability (its subsampling, in
            expectation), 0 for a negative that is the target
  cbow      "inputs" (B, 2 window): the window's words each kept with its
            keep probability, PAD_ID elsewhere; "targets": the centre, then
            K negatives; "weights": 1 (0 for an empty window)

Rows are drawn, not swept: a batch is a pure function of (seed, step), so
a resumed run and any process count see the same global batches; eval
batches of a split are the same every time.
"""
import os

import jax
import numpy as np

from bigmodel_jax.data import text_corpus
from bigmodel_jax.dataio.common import SplitCache, StepInput
from bigmodel_jax.dataio.words import PAD_ID, UNK_ID, Words, split_words
from bigmodel_jax.errors import ConfigError

MODES = ("skipgram", "cbow")


def _context_width(config) -> int:
  return 1 if config.mode == "skipgram" else 2 * config.window


def batch_spec(config) -> dict:
  rows, width = config.batch_size, 1 + config.negatives
  return {"inputs": jax.ShapeDtypeStruct((rows, _context_width(config)),
                                         np.int32),
          "targets": jax.ShapeDtypeStruct((rows, width), np.int32),
          "weights": jax.ShapeDtypeStruct((rows, width), np.float32)}


def units(config) -> tuple[str, int]:
  """Throughput in centre words (one per row)."""
  return "tokens", config.batch_size


def sentences(config, split: str):
  """The split's sentences as lists of words, in corpus order."""
  separator = {"paragraph": "\n\n", "line": "\n"}[config.sentence_split]
  for text, _ in text_corpus.pieces(config, split)[0]:
    for sentence in text.split(separator):
      words = split_words(sentence)
      if words:
        yield words


class Corpus:
  """A split's in-vocabulary words as one id array, with each position's
  sentence bounds and the running sum of its words' keep probabilities
  (what centre words are drawn by)."""

  def __init__(self, vocab: Words, split_sentences, keep: np.ndarray):
    ids = [vocab.ids(s) for s in split_sentences]
    ids = [s[s != UNK_ID] for s in ids]  # Unknown words are dropped.
    ids = [s for s in ids if len(s)]
    if not ids:
      raise ConfigError("The split has no word of the vocabulary.")
    lengths = np.array([len(s) for s in ids])
    self.tokens = np.concatenate(ids)
    ends = np.cumsum(lengths)
    self.start = np.repeat(ends - lengths, lengths)
    self.end = np.repeat(ends, lengths)
    self.kept = np.cumsum(keep[self.tokens])


class Input(StepInput):
  """Skip-gram or CBOW rows for one process (its share of each batch)."""

  def __init__(self, config, *, seed: int, process_index: int,
               process_count: int):
    super().__init__(config, seed=seed, process_index=process_index,
                     process_count=process_count)
    if config.mode not in MODES:
      raise ConfigError(f"input.mode={config.mode!r}: use one of {MODES}.")
    if config.window < 1 or config.negatives < 1:
      raise ConfigError("input.window and input.negatives must be >= 1.")
    self.tokenizer = Words.build(sentences(config, config.train_split),
                                 config.min_count, config.max_vocab)
    counts = self.tokenizer.counts.astype(np.float64)
    self.keep = keep_probabilities(counts, config.sample)
    noise = counts ** 0.75
    self._noise = np.cumsum(noise / noise.sum())
    self.corpora = SplitCache(lambda split: Corpus(
        self.tokenizer, sentences(config, split), self.keep))
    self.train = self.corpora[config.train_split]
    self.corpora[config.eval_split]  # Missing data fails now, not mid-run.

  def model_fields(self) -> dict:
    return {"vocab_size": self.tokenizer.vocab_size}

  def train_batch(self, step: int) -> dict:
    return self._batch(self.train, np.random.default_rng([self.seed, step]))

  def eval_batches(self, split: str | None = None):
    corpus = self.corpora[split or self.config.eval_split]
    for i in range(self.config.eval_steps):
      yield self._batch(corpus, np.random.default_rng([self.seed, 1 << 30,
                                                       i]))

  def _batch(self, corpus: Corpus, rng: np.random.Generator) -> dict:
    """This process's rows of the global batch drawn with `rng`."""
    config, rows = self.config, self.config.batch_size
    centre = np.searchsorted(corpus.kept, rng.random(rows) * corpus.kept[-1],
                             side="right").clip(0, len(corpus.tokens) - 1)
    offsets = np.concatenate([np.arange(-config.window, 0),
                              np.arange(1, config.window + 1)])
    reach = rng.integers(1, config.window + 1, rows)
    position = centre[:, None] + offsets
    valid = ((np.abs(offsets) <= reach[:, None]) &
             (position >= corpus.start[centre, None]) &
             (position < corpus.end[centre, None]))
    words = corpus.tokens[np.where(valid, position, centre[:, None])]
    negatives = np.searchsorted(self._noise, rng.random(
        (rows, config.negatives)), side="right").astype(np.int32)
    if config.mode == "skipgram":
      pick = np.argmax(np.where(valid, rng.random(valid.shape), -1), 1)
      context = words[np.arange(rows), pick]
      weight = self.keep[context] * valid.any(1)
      inputs, target = corpus.tokens[centre][:, None], context
    else:
      kept = valid & (rng.random(valid.shape) < self.keep[words])
      inputs = np.where(kept, words, PAD_ID)
      target, weight = corpus.tokens[centre], kept.any(1).astype(float)
    targets = np.concatenate([target[:, None], negatives], 1)
    weights = np.concatenate([np.ones((rows, 1)), negatives != target[:, None]],
                             1) * weight[:, None]
    return {"inputs": inputs.astype(np.int32)[self._rows],
            "targets": targets.astype(np.int32)[self._rows],
            "weights": weights.astype(np.float32)[self._rows]}

  def save(self, workdir: str) -> None:
    self.tokenizer.save(os.path.join(workdir, "tokenizer.json"))


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
  """Each word's probability of being kept by subsampling (gensim's
  formula: (sqrt(c / t) + 1) t / c with t = sample x total, at most 1); 0
  for the special ids, which never occur."""
  if not sample:
    return (counts > 0).astype(np.float64)
  threshold = sample * counts.sum()
  with np.errstate(divide="ignore", invalid="ignore"):
    keep = (np.sqrt(counts / threshold) + 1) * threshold / counts
  return np.where(counts > 0, np.minimum(keep, 1.0), 0.0)


def load_tokenizer(workdir: str) -> Words:
  return Words.load(os.path.join(workdir, "tokenizer.json"))
