"""Text-to-text pairs (T5 fine-tuning): an input text and its target text.

The pairs of a split come from one of
  - JSONL files: `input.files.SPLIT`, comma-separated globs of
    {"input": ..., "target": ...} lines;
  - a TFDS dataset by name (`input.dataset`): its features
    `input.input_key` and `input.target_key` (a translation set's two
    languages, a summarisation set's article and summary);
  - labelled text (`input.labelled`, a `text_classification` input block,
    e.g. rt-polarity, with the same stratified splits): each text and its
    class's name, renamed by `input.target_names` {class: target text}.
`input.prefix` is put before every input ("sst2 sentence: "). A T5
vocabulary (`dataio/sentinels.py`: `input.vocab_file`, or one of
`input.vocab_size` trained on the training pairs) makes "inputs" (B,
source_len) and "targets" (B, target_len), each closed by </s> and padded
with 0 (longer texts are cut). Training draws shuffled epochs as a function
of (seed, step); evaluation covers a split once, padding rows at weight 0.
"""
import os

import jax
import numpy as np

from bigmodel_jax.data import text_classification, text_corpus
from bigmodel_jax.dataio import jsonl, sentinels, tfds_source
from bigmodel_jax.dataio.common import (SplitCache, StepInput, eval_positions,
                                        shuffled_indices)
from bigmodel_jax.errors import ConfigError


def batch_spec(config) -> dict:
  """Sources (B, source_len) and targets (B, target_len), int32."""
  return {"inputs": jax.ShapeDtypeStruct(
      (config.batch_size, config.source_len), np.int32),
          "targets": jax.ShapeDtypeStruct(
              (config.batch_size, config.target_len), np.int32)}


def units(config) -> tuple[str, int]:
  """Tokens a global batch holds: its sources' and targets' positions."""
  return "tokens", config.batch_size * (config.source_len + config.target_len)


def _jsonl(config, split: str) -> list[tuple[str, str]]:
  pairs = []
  for path in text_corpus.paths(config, split):
    for where, record in jsonl.records(path):
      if not isinstance(record, dict) or not all(
          isinstance(record.get(k), str) for k in ("input", "target")):
        raise ConfigError(f"{where} needs string fields \"input\" and "
                          "\"target\".")
      pairs.append((record["input"], record["target"]))
  return pairs


def _tfds(config, split: str) -> list[tuple[str, str]]:
  data = tfds_source.source(config.dataset, split, config.get("data_dir"))
  keys = (config.input_key, config.target_key)
  out = []
  for i in range(len(data)):
    record = data[i]
    missing = [k for k in keys if k not in record]
    if missing:
      raise ConfigError(f"{config.dataset} has no feature(s) {missing}; it "
                        f"has {sorted(record)} (input.input_key, "
                        "input.target_key).")
    out.append(tuple(_text(record[k]) for k in keys))
  return out


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _labelled(config, split: str) -> list[tuple[str, str]]:
  data = text_classification.splits(config.labelled)[split]
  names = dict(config.get("target_names") or {})
  return [(text, names.get(data.class_names[label], data.class_names[label]))
          for text, label in zip(data.texts, data.labels)]


def pairs(config, split: str) -> list[tuple[str, str]]:
  """The split's (input, target) texts, from the configured source."""
  if config.get("labelled"):
    found = _labelled(config, split)
  elif config.get("dataset"):
    found = _tfds(config, split)
  else:
    found = _jsonl(config, split)
  if not found:
    raise ConfigError(f"Split {split!r} of input {config.name!r} has no "
                      "pairs.")
  return found


class TextToText(StepInput):
  """What text-to-text inputs share: their `tokenizer` (a T5 vocabulary)
  and the model fields they decide."""

  def model_fields(self) -> dict:
    return {"vocab_size": self.tokenizer.vocab_size,
            "pad_id": self.tokenizer.pad_id, "eos_id": self.tokenizer.eos_id,
            "source_len": self.config.source_len,
            "target_len": self.config.target_len}

  def save(self, workdir: str) -> None:
    self.tokenizer.save(os.path.join(workdir, "tokenizer.json"))


class Input(TextToText):

  def __init__(self, config, *, seed: int, process_index: int,
               process_count: int):
    super().__init__(config, seed=seed, process_index=process_index,
                     process_count=process_count)
    self.pairs = SplitCache(lambda split: pairs(config, split))
    self.prefix = config.get("prefix") or ""
    self.tokenizer = sentinels.for_input(config, [
        text for source, target in self.pairs[config.train_split]
        for text in (self.prefix + source, target)], process_count)
    self.encoded = SplitCache(lambda split: self._encode(self.pairs[split]))
    self.encoded[config.eval_split]  # Missing data fails now, not mid-run.

  def _encode(self, split_pairs: list) -> dict:
    return {"inputs": self.tokenizer.encode_batch(
        [self.prefix + source for source, _ in split_pairs],
        self.config.source_len),
            "targets": self.tokenizer.encode_batch(
                [target for _, target in split_pairs], self.config.target_len)}

  def _batch(self, split: str, indices) -> dict:
    return {k: v[indices] for k, v in self.encoded[split].items()}

  def train_batch(self, step: int) -> dict:
    indices = shuffled_indices(len(self.pairs[self.config.train_split]),
                               self.config.batch_size, self.seed, step)
    return self._batch(self.config.train_split, indices[self._rows])

  def train_size(self) -> int:
    return len(self.pairs[self.config.train_split])

  def train_examples(self, indices: np.ndarray, step: int) -> dict:
    del step
    return self._batch(self.config.train_split, indices)

  def num_eval_batches(self, split: str | None = None) -> int:
    return -(-len(self.pairs[split or self.config.eval_split]) //
             self.config.batch_size)

  def eval_batches(self, split: str | None = None):
    """A split (default `input.eval_split`) once, in order."""
    split = split or self.config.eval_split
    for indices, weights in eval_positions(len(self.pairs[split]),
                                           self.config.batch_size, self._rows):
      yield {**self._batch(split, indices), "weights": weights}


load_tokenizer = sentinels.load
