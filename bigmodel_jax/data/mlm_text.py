"""Masked-language-model batches from a TFDS text dataset (BERT pretraining).

The text's lines are tokenized (`input.vocab_file`, or a vocabulary of the
kind `input.tokenizer` trained on the train split: BERT's WordPiece,
RoBERTa's byte-level BPE, ALBERT's Unigram) and packed into [CLS] ... [SEP]
sequences of `seq_len` (<s> ... </s> in RoBERTa's vocabulary). Each batch
masks `mask_rate` of the real tokens: 80% become [MASK], 10% a random
token, 10% stay; the loss is on masked positions only
("weights"). Masks are drawn per (seed, step) — RoBERTa's dynamic masking —
or, with `input.static_masking`, once per sequence as in the original BERT.

With `input.pairs` each row is [CLS] A [SEP] B [SEP] with "segments" 0 / 1,
A and B the two halves of a run of consecutive lines, and "nsp_targets" 0
for the text in order: "nsp" (next-sentence prediction, the original BERT)
takes B from another run in about half of the rows (target 1); "sop"
(ALBERT's sentence-order prediction) swaps A and B instead, so only their
order tells. Pairs are drawn with the masks (every step, or once per row
with static masking). Without pairs (RoBERTa) rows are packed lines of one
segment.
"""
import os

import jax
import numpy as np

from bigmodel_jax.dataio import tfds_source, wordpiece
from bigmodel_jax.dataio.common import SplitCache, StepInput, token_units
from bigmodel_jax.errors import ConfigError


def batch_spec(config) -> dict:
  shape = (config.batch_size, config.seq_len)
  spec = {"inputs": jax.ShapeDtypeStruct(shape, np.int32),
          "targets": jax.ShapeDtypeStruct(shape, np.int32),
          "weights": jax.ShapeDtypeStruct(shape, np.float32)}
  if config.get("pairs"):
    spec["segments"] = jax.ShapeDtypeStruct(shape, np.int32)
    spec["nsp_targets"] = jax.ShapeDtypeStruct(shape[:1], np.int32)
  return spec


units = token_units


def _runs(lines: list, budget: int) -> list[list]:
  """Consecutive lines grouped into runs of at most `budget` tokens."""
  runs, current = [], []
  for ids in lines:
    ids = list(ids[:budget])
    if current and sum(map(len, current)) + len(ids) > budget:
      runs.append(current)
      current = []
    current.append(ids)
  return runs + [current] if current else runs


def pack(lines: list[np.ndarray], seq_len: int, cls_id: int, sep_id: int,
         pad_id: int) -> np.ndarray:
  """Consecutive tokenized lines packed into [CLS] ... [SEP] rows."""
  rows = [sum(run, []) for run in _runs(lines, seq_len - 2)]
  out = np.full((len(rows), seq_len), pad_id, np.int32)
  for i, ids in enumerate(rows):
    out[i, :len(ids) + 2] = [cls_id] + ids + [sep_id]
  return out


def split_pairs(lines: list[np.ndarray], seq_len: int) -> list[tuple]:
  """(A, B) halves of runs of consecutive lines that fit [CLS] A [SEP] B
  [SEP] in `seq_len`, cut at the line boundary nearest the middle."""
  halves = []
  for run in _runs(lines, seq_len - 3):
    tokens = sum(run, [])
    if len(run) > 1:
      ends = np.cumsum([len(ids) for ids in run])[:-1]
      cut = int(ends[np.argmin(np.abs(ends - len(tokens) / 2))])
    else:
      cut = len(tokens) // 2
    if 0 < cut < len(tokens):
      halves.append((tokens[:cut], tokens[cut:]))
  return halves


PAIRS = ("nsp", "sop")


def pair_rows(halves: list[tuple], index, rng: np.random.Generator,
              seq_len: int, cls_id: int, sep_id: int, pad_id: int,
              kind: str = "nsp") -> dict:
  """Rows `index` as [CLS] A [SEP] B [SEP]: in about half of them (drawn
  from `rng`) B is another row's ("nsp"), or A and B change places ("sop").
  {"rows", "segments", "nsp_targets"}."""
  n = len(index)
  swapped = rng.uniform(size=n) < 0.5
  other = (np.asarray(index) + rng.integers(1, len(halves), size=n)) % len(
      halves)  # Never the row itself.
  rows = np.full((n, seq_len), pad_id, np.int32)
  segments = np.zeros((n, seq_len), np.int32)
  for row, (i, j, swap) in enumerate(zip(index, other, swapped)):
    a, b = halves[i]
    if swap:
      a, b = (b, a) if kind == "sop" else (a, halves[j][1])
    ids = [cls_id] + a + [sep_id] + b[:seq_len - 3 - len(a)] + [sep_id]
    rows[row, :len(ids)] = ids
    segments[row, len(a) + 2:len(ids)] = 1
  return {"rows": rows, "segments": segments,
          "nsp_targets": swapped.astype(np.int32)}


def mask_tokens(rows: np.ndarray, rng: np.random.Generator, rate: float,
                mask_id: int, vocab_size: int, special: np.ndarray) -> dict:
  """BERT masking of `rows`: inputs, targets (the originals), weights."""
  candidates = ~np.isin(rows, special)
  chosen = candidates & (rng.uniform(size=rows.shape) < rate)
  action = rng.uniform(size=rows.shape)
  inputs = rows.copy()
  inputs[chosen & (action < 0.8)] = mask_id
  swap = chosen & (action >= 0.8) & (action < 0.9)
  inputs[swap] = rng.integers(0, vocab_size, size=int(swap.sum()))
  return {"inputs": inputs, "targets": rows,
          "weights": chosen.astype(np.float32)}


class Input(StepInput):

  def __init__(self, config, *, seed: int, process_index: int,
               process_count: int):
    super().__init__(config, seed=seed, process_index=process_index,
                     process_count=process_count)
    if config.get("pairs") not in (None, *PAIRS):
      raise ConfigError(f"input.pairs={config.pairs!r}; use one of {PAIRS} "
                        "or None.")
    train_text = self._text(config.train_split)
    self.tokenizer = wordpiece.for_input(config, train_text, process_count)
    self.ids = tuple(self.tokenizer.special_id(role)
                     for role in ("start", "end", "pad"))
    self.mask_id = self.tokenizer.special_id("mask")
    self.special = np.array(self.ids)
    self.train = self._packed(train_text)
    self.packed = SplitCache(lambda split: self._packed(self._text(split)))
    self.packed[config.eval_split]  # Missing data fails now, not mid-run.

  def _text(self, split: str) -> list[str]:
    """The split's non-empty lines."""
    text = tfds_source.load_text(self.config.dataset, split,
                                 self.config.data_dir)
    return [line for line in text.splitlines() if line.strip()]

  def _packed(self, lines: list[str]):
    """Packed rows, or with NSP the (A, B) halves that pairs are made of."""
    encoded = [e.ids[1:-1] for e in self.tokenizer.tokenizer.encode_batch(
        lines)]
    if self.config.get("pairs"):
      return split_pairs(encoded, self.config.seq_len)
    return pack(encoded, self.config.seq_len, *self.ids)

  def model_fields(self) -> dict:
    return {"vocab_size": self.tokenizer.vocab_size,
            "nsp": bool(self.config.get("pairs"))}

  def _batch(self, data, index, key) -> dict:
    """Rows `index` of `data` (with pairs: drawn from `key`), masked."""
    rng = np.random.default_rng(key)
    pairs = self.config.get("pairs")
    fields = ({"rows": data[index]} if not pairs else
              pair_rows(data, index, rng, self.config.seq_len, *self.ids,
                        kind=pairs))
    batch = mask_tokens(fields.pop("rows"), rng, self.config.mask_rate,
                        self.mask_id, self.tokenizer.vocab_size, self.special)
    return {**batch, **fields}

  def train_batch(self, step: int) -> dict:
    """This process's rows of global batch `step`."""
    rng = np.random.default_rng([self.seed, step])
    index = rng.integers(0, len(self.train), self.config.batch_size)
    if self.config.static_masking:  # One fixed mask per sequence.
      rows = [self._batch(self.train, [i], [self.seed, int(i)])
              for i in index[self._rows]]
      return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    batch = self._batch(self.train, index, [self.seed, step, 1])
    return {k: v[self._rows] for k, v in batch.items()}

  def eval_batches(self, split: str | None = None):
    """The same masked batches of a split every time."""
    data = self.packed[split or self.config.eval_split]
    size = self.config.batch_size
    for i in range(self.config.eval_steps):
      index = np.arange(i * size, (i + 1) * size) % len(data)
      batch = self._batch(data, index, [self.seed, 1 << 30, i])
      yield {k: v[self._rows] for k, v in batch.items()}

  def save(self, workdir: str) -> None:
    self.tokenizer.save(os.path.join(workdir, "tokenizer.json"))


load_tokenizer = wordpiece.load
