"""A corpus tokenized once into an on-disk, memory-mapped token array.

  tokens = token_store.build(directory, pieces, tokenizer, total_bytes)
  tokens = token_store.load(directory)      # np.memmap, read-only

`pieces` yields (text, ends_document) in a fixed order; documents are
separated by the tokenizer's end-of-document id. The build appends each
chunk of pieces to `tokens.bin` and then records its progress
(`progress.json`: pieces and tokens done), so an interrupted build resumes
after its last whole chunk (a partial chunk is cut off) and gives the same
array as an uninterrupted one; `done.json`, written last, marks a store
complete. Nothing holds more than a chunk of text in memory. Progress lines
show MB/s and an ETA. uint16 ids when the vocabulary fits, else uint32.
"""
import json
import os
import sys
import time

import numpy as np

from bigmodel_jax import perf

CHUNK_BYTES = 4 << 20  # Text tokenized per chunk.


def _dtype(vocab_size: int):
  return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def _write_json(path: str, value) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(value, f)
  os.replace(path + ".tmp", path)


def load(directory: str) -> np.ndarray | None:
  """The store's tokens (memory-mapped), or None if it is not complete."""
  done = os.path.join(directory, "done.json")
  if not os.path.exists(done):
    return None
  with open(done) as f:
    meta = json.load(f)
  return np.memmap(os.path.join(directory, "tokens.bin"),
                   dtype=np.dtype(meta["dtype"]), mode="r",
                   shape=(meta["tokens"],))


def build(directory: str, pieces, tokenizer, total_bytes: int | None = None,
          label: str = "tokenizing") -> np.ndarray:
  """Builds (or resumes, or just opens) the store of `pieces`."""
  tokens = load(directory)
  if tokens is not None:
    return tokens
  os.makedirs(directory, exist_ok=True)
  dtype = _dtype(tokenizer.vocab_size)
  path, progress_path = (os.path.join(directory, name)
                         for name in ("tokens.bin", "progress.json"))
  done = {"pieces": 0, "tokens": 0, "bytes": 0}
  if os.path.exists(progress_path):
    with open(progress_path) as f:
      done = json.load(f)
    print(f"{label}: resuming after {done['pieces']:,} pieces "
          f"({done['tokens']:,} tokens)", flush=True)
  with open(path, "ab") as out:
    out.truncate(done["tokens"] * np.dtype(dtype).itemsize)
    out.seek(0, os.SEEK_END)
    report = _Progress(label, total_bytes, done["bytes"])
    chunk, size = [], 0
    for i, (text, ends) in enumerate(pieces):
      if i < done["pieces"]:
        continue
      chunk.append((text, ends))
      size += len(text)
      if size >= CHUNK_BYTES:
        done = _append(out, chunk, tokenizer, dtype, done, progress_path)
        report(done["bytes"])
        chunk, size = [], 0
    if chunk:
      done = _append(out, chunk, tokenizer, dtype, done, progress_path)
  _write_json(os.path.join(directory, "done.json"),
              {"tokens": done["tokens"], "dtype": np.dtype(dtype).name,
               "bytes": done["bytes"]})
  report(done["bytes"], final=True)
  return load(directory)


def _parts(text: str, size: int = 1 << 16) -> list[str]:
  """`text` cut after newlines into parts of about `size` characters, so one
  long document is tokenized in parallel (byte-level BPE never merges
  across a newline and the following line)."""
  parts, start = [], 0
  while len(text) - start > size:
    cut = text.find("\n", start + size) + 1
    if not cut:
      break
    parts.append(text[start:cut])
    start = cut
  return parts + [text[start:]]


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
  """The token ids of each text; long texts are cut into parts and all
  parts encoded in parallel."""
  parts = [_parts(text) for text in texts]
  encoded = iter(tokenizer.encode_batch([p for ps in parts for p in ps]))
  return [[i for _ in ps for i in next(encoded)] for ps in parts]


def _append(out, chunk, tokenizer, dtype, done, progress_path) -> dict:
  """Tokenizes and appends a chunk, then records the progress."""
  ids = []
  for encoded, (_, ends) in zip(encode(tokenizer, [t for t, _ in chunk]),
                                chunk):
    ids.extend(encoded)
    if ends:
      ids.append(tokenizer.eos_id)
  out.write(np.asarray(ids, dtype).tobytes())
  out.flush()
  os.fsync(out.fileno())
  done = {"pieces": done["pieces"] + len(chunk),
          "tokens": done["tokens"] + len(ids),
          "bytes": done["bytes"] + sum(len(t.encode("utf-8"))
                                       for t, _ in chunk)}
  _write_json(progress_path, done)
  return done


class _Progress:
  """Prints "label: X MB (Y MB/s) | ETA" at most every 10 s."""

  def __init__(self, label: str, total: int | None, start: int):
    self.label, self.total, self.start = label, total, start
    self.t0 = self.last = time.perf_counter()

  def __call__(self, done: int, final: bool = False) -> None:
    now = time.perf_counter()
    if not final and now - self.last < 10:
      return
    self.last = now
    rate = (done - self.start) / max(now - self.t0, 1e-9)
    eta = (f" | ETA {perf.hms((self.total - done) / rate)}"
           if self.total and rate and not final else "")
    print(f"{self.label}: {done / 1e6:,.1f} MB ({rate / 1e6:.2f} MB/s){eta}",
          file=sys.stdout, flush=True)
