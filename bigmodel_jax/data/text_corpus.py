"""Language-model windows of a text corpus, tokenized once into token stores.

Text comes from a TFDS dataset (`input.dataset`, records' `input.feature`)
or local files (`input.files.SPLIT`: comma-separated globs of .txt — one
document per file —, .jsonl — one per line, field `input.feature` — or
.parquet — one per row, column `input.feature`). Each split is tokenized
once into an on-disk token store (`token_store`: resumable, progress,
memory-mapped, documents ending in the end-of-document token) under
`input.store_dir`, keyed by the text and the tokenizer; training never
holds the corpus in RAM.

The tokenizer: `input.tokenizer_file` (a Hugging Face tokenizer.json, or
GPT-2's vocab.json + merges.txt), else a byte-level BPE of
`input.vocab_size` trained on the first `input.tokenizer_train_mb` MB of the
training split. It is saved in the workdir, so sampling, evaluation and
export decode the same way. Batches are random windows of `seq_len + 1`
tokens across document boundaries: a pure function of (seed, step), this
process's rows of the global batch. With `input.segment_ids` they also hold
segment ids and positions, so attention never crosses a document.
"""
import glob
import hashlib
import json
import os
import time

import numpy as np

from bigmodel_jax.dataio import bpe, downloads, tfds_source, token_store
from bigmodel_jax.dataio.common import (SplitCache, TextWindows, WindowInput,
                                      lm_batch_spec, token_units)
from bigmodel_jax.errors import ConfigError, NotFound

batch_spec = lm_batch_spec
units = token_units
TXT_BLOCK = 1 << 20  # A .txt document is read in blocks of whole lines.


# --- Text: (piece, ends_document) in a fixed order ----------------------------
def paths(config, split: str) -> list[str]:
  """The files of `input.files.SPLIT` (comma-separated globs), sorted."""
  patterns = (config.files.get(split) or "").split(",")
  found = sorted({p for pattern in patterns if pattern
                  for p in glob.glob(os.path.expanduser(pattern))})
  if not found:
    raise NotFound(f"input.files.{split}={config.files.get(split)!r} matches "
                   "no file.")
  return found


def _file_pieces(path: str, field: str):
  if path.endswith(".txt"):
    with open(path, encoding="utf-8") as f:
      block = []
      for line in f:
        block.append(line)
        if sum(map(len, block)) >= TXT_BLOCK:
          yield "".join(block), False
          block = []
      yield "".join(block), True
  elif path.endswith(".jsonl"):
    with open(path, encoding="utf-8") as f:
      for number, line in enumerate(f, 1):
        if line.strip():
          record = json.loads(line)
          if field not in record:
            raise ConfigError(f"{path}:{number} has no field {field!r} "
                              "(input.feature).")
          yield record[field], True
  elif path.endswith(".parquet"):
    import pyarrow.parquet as pq  # Only parquet corpora need it.
    for batch in pq.ParquetFile(path).iter_batches(columns=[field]):
      for text in batch.column(0).to_pylist():
        yield text or "", True
  else:
    raise ConfigError(f"{path}: not .txt, .jsonl or .parquet.")


def pieces(config, split: str) -> tuple:
  """(iterator of (text, ends_document), total bytes or None, identity)."""
  if any(config.files.values()):
    files = paths(config, split)
    return ((piece for path in files
             for piece in _file_pieces(path, config.feature)),
            sum(map(os.path.getsize, files)),
            [token_store.file_key(p) for p in files])
  data = tfds_source.source(config.dataset, split, config.data_dir)
  feature = config.feature

  def records():
    for i in range(len(data)):
      value = data[i][feature]
      yield (value.decode("utf-8") if isinstance(value, bytes) else value,
             True)
  return records(), None, [config.dataset, split, feature, len(data)]


def limited(stream, limit: int):
  """The texts of `stream` up to about `limit` characters."""
  seen = 0
  for text, _ in stream:
    yield text
    seen += len(text)
    if seen >= limit:
      return


# --- The input ------------------------------------------------------------------
def _wait_for(directory: str):
  """The store another process is building (process 0 builds)."""
  while (tokens := token_store.load(directory)) is None:
    time.sleep(1)
  return tokens


class Input(WindowInput):
  """Train and eval batches for one process (its share of the global batch)."""

  def __init__(self, config, *, seed: int, process_index: int,
               process_count: int):
    super().__init__(config, seed=seed, process_index=process_index,
                     process_count=process_count)
    self.process_index = process_index
    self.tokenizer = bpe.for_input(config, process_count, lambda: limited(
        pieces(config, config.train_split)[0],
        config.tokenizer_train_mb << 20))
    eos = self.tokenizer.eos_id if config.get("segment_ids") else None
    self.windows = SplitCache(lambda split: TextWindows(
        self.tokens(split), config.seq_len, eos))
    self.train = self.windows[config.train_split]
    self.windows[config.eval_split]  # Missing data fails now, not mid-run.

  def tokens(self, split: str) -> np.ndarray:
    """The split's token store (built on first use by process 0)."""
    stream, total, identity = pieces(self.config, split)
    key = hashlib.sha256(json.dumps(
        [identity, self.tokenizer.tokenizer.to_str()]).encode()).hexdigest()
    directory = os.path.join(
        os.path.expanduser(self.config.store_dir or os.path.join(
            downloads.data_home(), "token_stores")), f"{split}-{key[:16]}")
    if self.process_index:
      return _wait_for(directory)
    return token_store.build(directory, stream, self.tokenizer, total,
                             label=f"tokenizing {split}")


def load_tokenizer(workdir: str) -> bpe.BPE:
  return bpe.BPE.from_file(os.path.join(workdir, "tokenizer.json"))
