"""Masked-language-model batches from a TFDS text dataset (BERT pretraining).

The text's lines are WordPiece-tokenized (a vocabulary trained on the train
split, or `input.vocab_file`) and packed into [CLS] ... [SEP] sequences of
`seq_len`. Each batch masks `mask_rate` of the real tokens: 80% become
[MASK], 10% a random token, 10% stay; the loss is on masked positions only
("weights"). Masks are drawn per (seed, step) — RoBERTa's dynamic masking —
or, with `input.static_masking`, once per sequence as in the original BERT.
"""
import os

import jax
import numpy as np

from bigmodel_jax.data import StepInput, process_rows, tfds_text
from bigmodel_jax.data.wordpiece import WordPiece


def batch_spec(config) -> dict:
  shape = (config.batch_size, config.seq_len)
  return {"inputs": jax.ShapeDtypeStruct(shape, np.int32),
          "targets": jax.ShapeDtypeStruct(shape, np.int32),
          "weights": jax.ShapeDtypeStruct(shape, np.float32)}


def units(config) -> tuple[str, int]:
  return "tokens", config.batch_size * config.seq_len


def pack(lines: list[np.ndarray], seq_len: int, cls_id: int, sep_id: int,
         pad_id: int) -> np.ndarray:
  """Consecutive tokenized lines packed into [CLS] ... [SEP] rows."""
  rows, current = [], []
  for ids in lines:
    ids = list(ids[:seq_len - 2])
    if current and len(current) + len(ids) > seq_len - 2:
      rows.append(current)
      current = []
    current += ids
  if current:
    rows.append(current)
  out = np.full((len(rows), seq_len), pad_id, np.int32)
  for i, ids in enumerate(rows):
    out[i, :len(ids) + 2] = [cls_id] + ids + [sep_id]
  return out


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
    self.config, self.seed = config, seed
    self._rows = process_rows(config.batch_size, process_index, process_count)
    train_text = self._text(config.train_split)
    if config.get("vocab_file"):
      self.tokenizer = WordPiece.from_file(config.vocab_file)
    elif process_count > 1:  # Vocabulary training is not deterministic.
      raise ValueError(
          "Several processes need one shared vocabulary: train it once (a "
          "one-process run writes WORKDIR/tokenizer.json) and pass "
          "--config.input.vocab_file=PATH.")
    else:
      self.tokenizer = WordPiece.train(train_text, config.vocab_size)
    self.train = self._packed(train_text)
    self.eval = self._packed(self._text(config.eval_split))
    vocab = self.tokenizer.tokenizer.token_to_id
    self.mask_id = vocab("[MASK]")
    self.special = np.array([vocab(t) for t in ("[PAD]", "[CLS]", "[SEP]")])

  def _text(self, split: str) -> list[str]:
    """The split's non-empty lines."""
    text = tfds_text.load_text(self.config.dataset, split,
                               self.config.data_dir)
    return [line for line in text.splitlines() if line.strip()]

  def _packed(self, lines: list[str]) -> np.ndarray:
    encoded = [e.ids[1:-1] for e in self.tokenizer.tokenizer.encode_batch(
        lines)]
    tok = self.tokenizer
    return pack(encoded, self.config.seq_len,
                tok.tokenizer.token_to_id("[CLS]"), tok.sep_id, tok.pad_id)

  def model_fields(self) -> dict:
    return {"vocab_size": self.tokenizer.vocab_size}

  def _mask(self, rows: np.ndarray, key) -> dict:
    return mask_tokens(rows, np.random.default_rng(key),
                       self.config.mask_rate, self.mask_id,
                       self.tokenizer.vocab_size, self.special)

  def train_batch(self, step: int) -> dict:
    """This process's rows of global batch `step`."""
    rng = np.random.default_rng([self.seed, step])
    index = rng.integers(0, len(self.train), self.config.batch_size)
    if self.config.static_masking:  # One fixed mask per sequence.
      rows = [self._mask(self.train[i][None], [self.seed, int(i)])
              for i in index[self._rows]]
      return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    batch = self._mask(self.train[index], [self.seed, step, 1])
    return {k: v[self._rows] for k, v in batch.items()}

  def eval_batches(self):
    """The same masked batches every time."""
    size = self.config.batch_size
    for i in range(self.config.eval_steps):
      rows = self.eval[np.arange(i * size, (i + 1) * size) % len(self.eval)]
      batch = self._mask(rows, [self.seed, 1 << 30, i])
      yield {k: v[self._rows] for k, v in batch.items()}

  def save(self, workdir: str) -> None:
    self.tokenizer.save(os.path.join(workdir, "tokenizer.json"))


def load_tokenizer(workdir: str) -> WordPiece:
  return WordPiece.from_file(os.path.join(workdir, "tokenizer.json"))
