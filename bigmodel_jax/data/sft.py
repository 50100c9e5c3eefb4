"""Supervised fine-tuning data: conversations packed into decoder rows.

`input.files.SPLIT` names JSONL globs whose records are {"prompt",
"response"} or {"messages": [{"role", "content"}, ...]} (ending with the
assistant). Each conversation is rendered by the chat template
(`input.chat_template`, default `chat.DEFAULT`) and tokenized by
`input.tokenizer_file` (normally the base run's WORKDIR/tokenizer.json; if
unset, a byte-level BPE of `input.vocab_size` is trained on the training
conversations). The loss covers only the assistant's replies ("weights"):
the prompt is context, not a target. Conversations are packed whole into
rows of `seq_len` tokens (longer ones are cut, and counted), with segment
ids and positions so no token attends to another conversation. Rows are
packed once, in an order drawn from the seed; a batch is a pure function
of (seed, step). Conversations are held in memory as token ids. The
tokenizer and chat template are saved with the run for sampling and
serving.
"""
import os

import jax
import numpy as np

from bigmodel_jax.data import text_corpus

from bigmodel_jax.dataio import bpe, chat, jsonl
from bigmodel_jax.dataio.common import (SplitCache, StepInput, eval_positions,
                                      shuffled_indices, token_units)
from bigmodel_jax.errors import ConfigError

KEYS = ("inputs", "targets", "weights", "segments", "positions")
units = token_units


def batch_spec(config) -> dict:
  """(B, seq_len) rows: ids, next ids, loss weights, segments, positions."""
  shape = (config.batch_size, config.seq_len)
  return {key: jax.ShapeDtypeStruct(
      shape, np.float32 if key == "weights" else np.int32) for key in KEYS}


def read(config, split: str) -> list[list[dict]]:
  """The conversations of a split's JSONL files, in file order."""
  conversations = []
  for path in text_corpus.paths(config, split):
    for where, record in jsonl.records(path):
      conversations.append(chat.messages_of(record, where))
  return conversations


def pack(examples: list[tuple], order, seq_len: int) -> dict:
  """Rows of `seq_len` holding whole examples (ids, trained) in `order`;
  an example fills the rest of a row if it fits, else starts a new one.
  Padding has weight 0 and segment 0."""
  rows, row, used = [], [], 0
  for i in order:
    size = len(examples[i][0]) - 1  # Predictions it adds.
    if row and used + size > seq_len:
      rows.append(row)
      row, used = [], 0
    row.append(i)
    used += size
  rows.append(row)
  out = {key: np.zeros((len(rows), seq_len),
                       np.float32 if key == "weights" else np.int32)
         for key in KEYS}
  for r, members in enumerate(rows):
    at = 0
    for segment, i in enumerate(members, 1):
      ids, trained = examples[i]
      n = len(ids) - 1
      place = slice(at, at + n)
      out["inputs"][r, place], out["targets"][r, place] = ids[:-1], ids[1:]
      out["weights"][r, place] = trained[1:]
      out["segments"][r, place] = segment
      out["positions"][r, place] = np.arange(n)
      at += n
  return out


class Input(StepInput):
  """Packed conversations: this process's rows of each global batch."""

  def __init__(self, config, *, seed: int, process_index: int,
               process_count: int):
    super().__init__(config, seed=seed, process_index=process_index,
                     process_count=process_count)
    roles = config.get("chat_template")
    self.template = chat.Template(roles.to_dict() if roles else chat.DEFAULT)
    self.tokenizer = bpe.for_input(config, process_count, lambda: (
        text for messages in read(config, config.train_split)
        for text, _ in self.template.pieces(messages) if text))
    self.rows = SplitCache(self._rows_of)
    self.train = self.rows[config.train_split]
    self.rows[config.eval_split]  # Missing data fails now, not mid-run.

  def _rows_of(self, split: str) -> dict:
    """The split packed: in a seeded order for training, else in order."""
    examples = [self.template.encode(self.tokenizer, messages)
                for messages in read(self.config, split)]
    if not examples:
      raise ConfigError(f"input.files.{split} holds no conversation.")
    limit = self.config.seq_len + 1
    cut = sum(len(ids) > limit for ids, _ in examples)
    if cut:
      print(f"{split}: {cut} of {len(examples)} conversations are longer than "
            f"seq_len={self.config.seq_len} tokens and are cut.", flush=True)
    examples = [(ids[:limit], trained[:limit]) for ids, trained in examples]
    order = (np.random.default_rng(self.seed).permutation(len(examples))
             if split == self.config.train_split else range(len(examples)))
    return pack(examples, order, self.config.seq_len)

  def model_fields(self) -> dict:
    return {"vocab_size": self.tokenizer.vocab_size}

  def train_batch(self, step: int) -> dict:
    rows = shuffled_indices(len(self.train["inputs"]), self.config.batch_size,
                            self.seed, step)[self._rows]
    return {key: value[rows] for key, value in self.train.items()}

  def num_eval_batches(self, split: str | None = None) -> int:
    return -(-len(self.rows[split or self.config.eval_split]["inputs"]) //
             self.config.batch_size)

  def eval_batches(self, split: str | None = None):
    """Every row of a split once, in order (padding rows weigh 0)."""
    rows = self.rows[split or self.config.eval_split]
    for index, real in eval_positions(len(rows["inputs"]),
                                      self.config.batch_size, self._rows):
      batch = {key: value[index] for key, value in rows.items()}
      batch["weights"] = batch["weights"] * real[:, None]
      yield batch

  def save(self, workdir: str) -> None:
    """The tokenizer and the chat template, for sampling and serving."""
    self.tokenizer.save(os.path.join(workdir, "tokenizer.json"))
    self.template.save(workdir)


load_tokenizer = text_corpus.load_tokenizer
