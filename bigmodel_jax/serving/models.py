"""The runs a server serves and what each can do.

A language model (task "lm" with a tokenizer) generates: completions, and
chat completions when it was fine-tuned on conversations (it has a chat
template). A BERT-family text model embeds (its pooled hidden states, unit
length) and, with a classifier head, classifies text; an image classifier
(ViT, ResNet) classifies images. Encoder calls are batched: inputs that
arrive within `encoder_window_ms` of each other share one call, padded to a
power-of-two batch so a handful of programs serve every mix.
"""
import concurrent.futures
import dataclasses
import io
import json
import os
import queue
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from PIL import Image

from bigmodel_jax import quantization, runs
from bigmodel_jax.data import image_ops
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.models import bert
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
    return self.run.model.config.block_size

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


def load(name: str, workdir: str, config) -> Served:
  """Loads a run on `config.mesh` and builds what its task serves."""
  run = runs.load(workdir, mesh=dict(config.mesh))
  served = Served(name, run)
  task, window = run.config.task.name, config.encoder_window_ms / 1000
  if task == "lm" and run.tokenizer is not None:
    served.generator = Generator(run.model, run.variables, run.layout,
                                 slots=config.slots,
                                 steps=config.decode_steps)
    if config.warm_up:
      served.generator.warm_up()
  elif run.config.model.name == "bert":
    _encoders(served, config.encoder_batch, window)
  elif task == "classification":
    _image_classifier(served, config.encoder_batch, window)
  else:
    raise ConfigError(f"{workdir}: nothing to serve for task {task!r} of "
                      f"model {run.config.model.name!r}.")
  return served


def _class_names(workdir: str) -> list[str]:
  with open(os.path.join(workdir, "class_names.json")) as f:
    return json.load(f)


def _encoders(served: Served, max_batch: int, window: float) -> None:
  """Text embeddings (and classification for a classifier head)."""
  run = served.run
  seq_len = run.config.input.seq_len
  model_config = run.config.model.copy_and_resolve_references()
  model_config.head = "none"
  example = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
  body = quantization.configured(run.family.make(model_config), run.config,
                                 example)
  pool = run.config.model.get("pool", "mean")
  pad_id = run.tokenizer.pad_id

  def embed(variables, tokens):
    hidden = body.apply(variables, tokens)
    vectors = (hidden[:, 0] if pool == "cls" else
               bert.mean_pool(hidden, tokens, pad_id))
    return vectors / jnp.linalg.norm(vectors, axis=-1, keepdims=True)

  def on_texts(fn) -> Batcher:
    """Batches texts into `fn(variables, tokens)`; (output, tokens) each."""
    call = _padded_call(run, fn, max_batch)

    def batch(texts):
      tokens = run.tokenizer.encode_batch(texts, seq_len)
      return list(zip(call(tokens), (tokens != pad_id).sum(1).tolist()))
    return Batcher(batch, max_batch=max_batch, window=window)

  served.embedder = on_texts(embed)
  if run.config.task.name == "classification":
    served.classifier = on_texts(_probabilities(run.model))
    served.class_names = _class_names(run.workdir)


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
  served.class_names = _class_names(run.workdir)
  served.image_input = lambda data: _image(data, size, channels, pp)


def _image(data: bytes, size: int, channels: int, pp) -> np.ndarray:
  """Encoded image bytes (PNG, JPEG, ...) -> the model's input, made by the
  run's own evaluation preprocessing."""
  try:
    image = Image.open(io.BytesIO(data))
    image = image.convert("L" if channels == 1 else "RGB")
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise BadInput(f"Not a readable image: {e}") from None
  pixels = np.asarray(image, np.float32).reshape(
      image.height, image.width, channels)
  pixels = pp(pixels, np.random.default_rng(0))
  if pixels.shape != (size, size, channels):
    raise BadInput(f"An image of {image.width}x{image.height} becomes "
                   f"{pixels.shape} after the model's preprocessing; it "
                   f"needs {(size, size, channels)}.")
  return pixels.astype(np.float32)
