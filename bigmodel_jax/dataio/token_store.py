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

One builder per store, across processes and runs: the build holds an
`flock` on DIRECTORY.lock (beside it); another run that wants the store
waits for it and then reads the finished store. A finished store is
verified on open: tokens.bin must have the size done.json records and the
same sampled digest (`digest`), else it is refused as damaged. Stores are
keyed by content (`file_key`), never by size alone.
"""
import contextlib
import fcntl
import hashlib
import json
import os
import sys
import time

import numpy as np

from bigmodel_jax import perf
from bigmodel_jax.errors import NotFound

CHUNK_BYTES = 4 << 20  # Text tokenized per chunk.
WHOLE_HASH_BYTES = 1 << 30  # Larger files are hashed by samples.
SAMPLES, SAMPLE_BYTES = 1024, 64 << 10


def digest(path: str, whole_up_to: int = 0) -> str:
  """A blake2b hex digest of a file's size and bytes: all of them when the
  file has at most `whole_up_to` bytes, else SAMPLES evenly spaced blocks
  of SAMPLE_BYTES (the first and last included)."""
  size = os.path.getsize(path)
  h = hashlib.blake2b(str(size).encode(), digest_size=16)
  with open(path, "rb") as f:
    if size <= max(whole_up_to, SAMPLES * SAMPLE_BYTES):
      while block := f.read(8 << 20):
        h.update(block)
    else:
      for i in range(SAMPLES):
        f.seek((size - SAMPLE_BYTES) * i // (SAMPLES - 1))
        h.update(f.read(SAMPLE_BYTES))
  return h.hexdigest()


def file_key(path: str) -> list:
  """What names a corpus file's store: its path, size and content digest
  (of every byte up to 1 GiB; beyond, of samples and the modification
  time, as an edit between samples changes only that)."""
  stat = os.stat(path)
  return [path, stat.st_size, digest(path, WHOLE_HASH_BYTES)] + (
      [stat.st_mtime_ns] if stat.st_size > WHOLE_HASH_BYTES else [])


def _dtype(vocab_size: int):
  return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def _write_json(path: str, value) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(value, f)
  os.replace(path + ".tmp", path)


def load(directory: str) -> np.ndarray | None:
  """The store's tokens (memory-mapped, verified), or None if it is not
  complete. A damaged store is a NotFound naming it."""
  done = os.path.join(directory, "done.json")
  if not os.path.exists(done):
    return None
  path = os.path.join(directory, "tokens.bin")
  try:
    with open(done) as f:
      meta = json.load(f)
    dtype = np.dtype(meta["dtype"])
    size = os.path.getsize(path)
    problem = (f"tokens.bin has {size:,} bytes, done.json says "
               f"{meta['tokens'] * dtype.itemsize:,}"
               if size != meta["tokens"] * dtype.itemsize else
               "tokens.bin differs from the digest in done.json"
               if meta.get("digest") not in (None, digest(path)) else None)
  except (OSError, ValueError, KeyError, TypeError) as e:
    problem = f"unreadable ({e})"
  if problem:
    raise NotFound(f"The token store {directory} is damaged: {problem}. "
                   "Remove it to tokenize the corpus again.")
  return np.memmap(path, dtype=dtype, mode="r", shape=(meta["tokens"],))


@contextlib.contextmanager
def _building(directory: str, label: str):
  """Holds DIRECTORY.lock exclusively, waiting (and saying so) for another
  process that builds the same store."""
  parent = os.path.dirname(os.path.abspath(directory))
  os.makedirs(parent, exist_ok=True)
  fd = os.open(os.path.abspath(directory) + ".lock", os.O_RDWR | os.O_CREAT,
               0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      print(f"{label}: waiting for another process building {directory}",
            flush=True)
      fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)  # Releases the lock.


def build(directory: str, pieces, tokenizer, total_bytes: int | None = None,
          label: str = "tokenizing") -> np.ndarray:
  """Builds (or resumes, or just opens) the store of `pieces`."""
  tokens = load(directory)
  if tokens is not None:
    return tokens
  with _building(directory, label):
    tokens = load(directory)  # Another process may have just finished it.
    return tokens if tokens is not None else _build(
        directory, pieces, tokenizer, total_bytes, label)


def _build(directory, pieces, tokenizer, total_bytes, label) -> np.ndarray:
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
               "bytes": done["bytes"], "digest": digest(path)})
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
