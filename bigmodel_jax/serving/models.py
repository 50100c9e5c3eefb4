"""The runs a server serves and what each can do.

What a run serves follows from its capabilities (capabilities.py), never
from its family's or task's name: "generate" serves completions, and chat
completions when it was fine-tuned on conversations (it has a chat
template); "embed" serves embeddings (unit length); "classify" serves
classification of texts (a run with a tokenizer) or of images. Encoder
calls are batched: inputs that arrive within `encoder_window_ms` of each
other share one call, padded to a power-of-two batch so a handful of
programs serve every mix.
"""
import concurrent.futures
import dataclasses
import json
import os
import queue
import threading
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from bigmodel_jax import runs
from bigmodel_jax.dataio import image_ops
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.serving.generation import Generator


class BadInput(ConfigError):
  """A request the model cannot take (HTTP 400)."""


class Batcher:
  """Calls `fn(items) -> results` on the items submitted within `window`
  seconds of the first (at most `max_batch`), in one thread."""

  def __init__(self, fn, *, max_batch: int, window: float):
    self.fn, self.max_batch, self.window = fn, max_batch, window
    self.on_batch = lambda size: None  # E.g. a metric of batch sizes.
    self._queue = queue.SimpleQueue()
    threading.Thread(target=self._loop, daemon=True, name="batcher").start()

  def submit(self, item) -> concurrent.futures.Future:
    future = concurrent.futures.Future()
    self._queue.put((item, future))
    return future

  def _loop(self) -> None:
    while True:
      batch = [self._queue.get()]
      deadline = time.monotonic() + self.window
      while len(batch) < self.max_batch:
        try:
          batch.append(self._queue.get(timeout=max(
              0.0, deadline - time.monotonic())))
        except queue.Empty:
          break
      self.on_batch(len(batch))
      try:
        results = self.fn([item for item, _ in batch])
        for (_, future), result in zip(batch, results):
          future.set_result(result)
      except Exception as e:  # noqa: BLE001 — each caller gets the error.
        for _, future in batch:
          future.set_exception(e)


def _padded_call(run, fn, max_batch: int):
  """`fn(variables, inputs)` jitted on the run's sharded variables, called
  on inputs padded to a power-of-two batch (few programs for every mix)."""
  replicated = NamedSharding(run.layout.mesh, P())
  jitted = run.layout.in_context(jax.jit(
      fn, in_shardings=(jax.tree.map(lambda x: x.sharding, run.variables),
                        replicated), out_shardings=replicated))

  def call(inputs: np.ndarray) -> np.ndarray:
    rows = len(inputs)
    size = min(1 << (rows - 1).bit_length(), max(max_batch, rows))
    padded = np.concatenate([inputs, np.repeat(inputs[:1], size - rows, 0)])
    return np.asarray(jitted(run.variables, padded))[:rows]
  return call


@dataclasses.dataclass
class Served:
  """One served run: its name, what it can do, and its compiled calls."""
  name: str
  run: runs.Run
  generator: Generator | None = None
  embedder: Batcher | None = None
  classifier: Batcher | None = None
  class_names: list | None = None
  image_input: Any = None  # Image bytes -> model input, for images.

  @property
  def endpoints(self) -> list[str]:
    out = []
    if self.generator:
      out.append("completions")
      if self.run.chat_template:
        out.append("chat")
    if self.embedder:
      out.append("embeddings")
    if self.classifier:
      out.append("classify")
    return out

  @property
  def text(self) -> bool:
    return self.run.tokenizer is not None

  @property
  def context(self) -> int:
    return self.run.parts["decode"]

  def prompt_ids(self, prompt: str | None = None, messages=None) -> np.ndarray:
    """A completion prompt or a conversation as token ids."""
    try:
      if messages is not None:
        return self.run.chat_template.prompt_ids(self.run.tokenizer, messages)
      return np.asarray(self.run.tokenizer.encode(prompt), np.int32)
    except ConfigError as e:
      raise BadInput(str(e)) from None

  def decode(self, ids) -> str:
    eos = getattr(self.run.tokenizer, "eos_id", None)
    return self.run.tokenizer.decode(
        np.asarray([i for i in ids if i != eos], np.int32))


def load(name: str, workdir: str, config, step=None) -> Served:
  """Loads a run (newest, given or "best" step) on `config.mesh` and builds
  what its capabilities serve."""
  run = runs.load(workdir, step, mesh=dict(config.mesh))
  served = Served(name, run)
  can, window = run.capabilities, config.encoder_window_ms / 1000
  if "generate" in can:
    served.generator = Generator(run.model, run.variables, run.layout,
                                 length=run.parts["decode"],
                                 slots=config.slots,
                                 steps=config.decode_steps)
    if config.warm_up:
      served.generator.warm_up()
  if "embed" in can:
    served.embedder = _on_texts(run, _embeddings(run.model),
                                config.encoder_batch, window)
  if "classify" in can:  # Texts, or images.
    if "text" in run.parts:
      served.classifier = _on_texts(run, _probabilities(run.model),
                                    config.encoder_batch, window)
    else:
      _image_classifier(served, config.encoder_batch, window)
    served.class_names = _class_names(run.workdir)
  if not served.endpoints:
    raise ConfigError(f"{workdir}: nothing to serve: it has none of the "
                      "capabilities generate, embed, classify (model "
                      f"{run.config.model.name!r}, task "
                      f"{run.config.task.name!r}).")
  return served


def _class_names(workdir: str) -> list[str]:
  with open(os.path.join(workdir, "class_names.json")) as f:
    return json.load(f)


def _embeddings(model):
  return lambda variables, tokens: model.apply(variables, tokens, embed=True)


def _on_texts(run, fn, max_batch: int, window: float) -> Batcher:
  """Batches texts into `fn(variables, tokens)`; (output, tokens) each."""
  call = _padded_call(run, fn, max_batch)
  seq_len, pad_id = run.config.input.seq_len, run.tokenizer.pad_id

  def batch(texts):
    tokens = run.tokenizer.encode_batch(texts, seq_len)
    return list(zip(call(tokens), (tokens != pad_id).sum(1).tolist()))
  return Batcher(batch, max_batch=max_batch, window=window)


def _probabilities(model):
  return lambda variables, inputs: jax.nn.softmax(model.apply(variables,
                                                              inputs))


def _image_classifier(served: Served, max_batch: int, window: float) -> None:
  """Images decoded, preprocessed as the run evaluates them, classified."""
  run = served.run
  size, channels = run.config.input.image_size, run.config.input.channels
  pp = image_ops.parse(run.config.input.eval_pp)
  call = _padded_call(run, _probabilities(run.model), max_batch)
  served.classifier = Batcher(
      lambda images: [(p, 1) for p in call(np.stack(images))],
      max_batch=max_batch, window=window)
  served.image_input = lambda data: _image(data, size, channels, pp)


def _image(data: bytes, size: int, channels: int, pp) -> np.ndarray:
  """Encoded image bytes (PNG, JPEG, ...) -> the model's input, made by the
  run's own evaluation preprocessing."""
  try:
    image = image_ops.decoded(data, channels)
  except ValueError as e:
    raise BadInput(str(e)) from None
  pixels = pp(image, np.random.default_rng(0))
  if pixels.shape != (size, size, channels):
    raise BadInput(f"An image of {image.shape[1]}x{image.shape[0]} becomes "
                   f"{pixels.shape} after the model's preprocessing; it "
                   f"needs {(size, size, channels)}.")
  return pixels.astype(np.float32)
