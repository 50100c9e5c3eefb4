"""Span-corruption batches (T5 pretraining) from a text corpus.

The corpus is a TFDS text dataset (`input.dataset`, e.g. tiny_shakespeare)
or text files (`input.files.SPLIT` globs), tokenized once, line by line,
with a T5 vocabulary (`dataio/sentinels.py`). A row is a window of
consecutive tokens, as long as fits: about `noise_density` of its tokens,
in spans of mean length `mean_span` (Raffel et al.'s 0.15 and 3), are
dropped from the input, each span replaced by one sentinel <extra_id_K>;
the target is each sentinel followed by the tokens it replaced. Both end
with </s>. Windows and spans are drawn from (seed, step) for training and
fixed per eval batch; a split needs a window's worth of tokens.
"""
import pathlib

import numpy as np

from bigmodel_jax.data import text_corpus, text_to_text
from bigmodel_jax.dataio import sentinels, tfds_source
from bigmodel_jax.dataio.common import SplitCache
from bigmodel_jax.errors import ConfigError

batch_spec = text_to_text.batch_spec
units = text_to_text.units


def _lengths(raw: int, density: float, mean_span: float) -> tuple:
  """(noise tokens, spans, input length, target length) of a window of
  `raw` tokens, each length with its closing </s>."""
  noise = min(max(round(raw * density), 1), raw - 1)
  spans = max(round(noise / mean_span), 1)
  return noise, spans, raw - noise + spans + 1, noise + spans + 1


def window_length(config) -> int:
  """The longest window whose corrupted input fits `source_len`;
  ConfigError if its target does not fit `target_len`."""
  raw = 2
  while _lengths(raw + 1, config.noise_density,
                 config.mean_span)[2] <= config.source_len:
    raw += 1
  needed = _lengths(raw, config.noise_density, config.mean_span)[3]
  if needed > config.target_len:
    raise ConfigError(f"input.target_len={config.target_len} is too short "
                      f"for the spans of a {raw}-token window: it needs "
                      f"{needed}.")
  return raw


def _segments(rng: np.random.Generator, items: int, parts: int):
  """Lengths (parts,) >= 1 of a random split of `items` items."""
  cuts = np.sort(rng.choice(np.arange(1, items), parts - 1, replace=False))
  return np.diff(np.concatenate([[0], cuts, [items]]))


def corrupt(tokens: np.ndarray, rng: np.random.Generator, density: float,
            mean_span: float, sentinel, eos_id: int) -> tuple[list, list]:
  """(input ids, target ids) of one window: spans interleaved with kept
  runs (a kept run first), each span a sentinel in the input and the
  sentinel and its tokens in the target."""
  noise, spans, _, _ = _lengths(len(tokens), density, mean_span)
  kept = _segments(rng, len(tokens) - noise, spans)
  dropped = _segments(rng, noise, spans)
  inputs, targets, at = [], [], 0
  for k, (keep, drop) in enumerate(zip(kept, dropped)):
    inputs += tokens[at:at + keep].tolist() + [sentinel(k)]
    at += keep
    targets += [sentinel(k)] + tokens[at:at + drop].tolist()
    at += drop
  return inputs + [eos_id], targets + [eos_id]


class Input(text_to_text.TextToText):

  def __init__(self, config, *, seed: int, process_index: int,
               process_count: int):
    super().__init__(config, seed=seed, process_index=process_index,
                     process_count=process_count)
    self.raw = window_length(config)
    lines = SplitCache(self._lines)
    self.tokenizer = sentinels.for_input(config, lines[config.train_split],
                                         process_count)
    self.tokens = SplitCache(lambda split: self._tokens(lines[split], split))
    self.tokens[config.train_split], self.tokens[config.eval_split]

  def _lines(self, split: str) -> list[str]:
    if self.config.get("dataset"):
      text = tfds_source.load_text(self.config.dataset, split,
                                   self.config.get("data_dir"))
    else:
      text = "\n".join(pathlib.Path(p).read_text(encoding="utf-8")
                       for p in text_corpus.paths(self.config, split))
    return [line for line in text.splitlines() if line.strip()]

  def _tokens(self, lines: list[str], split: str) -> np.ndarray:
    tokens = np.concatenate([np.asarray(ids, np.int32) for ids in
                             self.tokenizer.pieces(lines)] or [[]])
    if len(tokens) <= self.raw:
      raise ConfigError(f"Split {split!r} has {len(tokens)} tokens; a "
                        f"window needs {self.raw + 1}.")
    return tokens

  def _batch(self, tokens: np.ndarray, rng: np.random.Generator) -> dict:
    """This process's rows of a global batch drawn from `rng`."""
    rows = self.config.batch_size
    starts = rng.integers(0, len(tokens) - self.raw, rows)
    out = {"inputs": np.zeros((rows, self.config.source_len), np.int32),
           "targets": np.zeros((rows, self.config.target_len), np.int32)}
    for row, start in enumerate(starts):
      pair = corrupt(tokens[start:start + self.raw], rng,
                     self.config.noise_density, self.config.mean_span,
                     self.tokenizer.sentinel, self.tokenizer.eos_id)
      for key, ids in zip(("inputs", "targets"), pair):
        out[key][row, :len(ids)] = ids
    return {k: v[self._rows] for k, v in out.items()}

  def train_batch(self, step: int) -> dict:
    return self._batch(self.tokens[self.config.train_split],
                       np.random.default_rng([self.seed, step]))

  def eval_batches(self, split: str | None = None):
    """The same `eval_steps` batches of a split every time."""
    tokens = self.tokens[split or self.config.eval_split]
    for i in range(self.config.eval_steps):
      yield self._batch(tokens, np.random.default_rng([self.seed, 1 << 30, i]))

load_tokenizer = sentinels.load
