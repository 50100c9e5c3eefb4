"""The runs a server serves and what each can do.

What a run serves follows from its capabilities (capabilities.py), never
from its family's or task's name: "generate" serves completions, and chat
completions when it was fine-tuned on conversations (it has a chat
template) or captions images ("caption": the conversation's image, sent as
an OpenAI image_url part, is its prefill input); "text_to_text" serves
both with the prompt (in chat, the last user message) as the encoder's
input and the decoder starting from its start token; "embed" serves embeddings
(unit length), of images too with "embed_image"; "classify" serves
classification of texts (a run with a tokenizer) or of images;
"generate_images" serves image generation (PNGs from latents drawn per
request; a "class_conditional" run draws the class its prompt names).
Encoder and image-generation calls are batched: inputs that arrive within
`encoder_window_ms` of each other share one call, padded to a power-of-two
batch so a handful of programs serve every mix.
"""
import concurrent.futures
import dataclasses
import io
import json
import os
import queue
import re
import threading
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from PIL import Image

from bigmodel_jax import runs
from bigmodel_jax.dataio import image_ops, images
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
class Prompt:
  """One prompt as the generator takes it: the decoder's prompt ids, its
  further prefill inputs (an image, encoded ids) and the text tokens billed
  for it."""
  ids: np.ndarray
  inputs: dict
  units: int


@dataclasses.dataclass
class Served:
  """One served run: its name, what it can do, and its compiled calls."""
  name: str
  run: runs.Run
  generator: Generator | None = None
  embedder: Batcher | None = None
  image_embedder: Batcher | None = None
  classifier: Batcher | None = None
  class_names: list | None = None
  image_input: Any = None  # Image bytes -> model input, for images.
  image_generator: Batcher | None = None  # (latent, class) -> PNG bytes.

  @property
  def endpoints(self) -> list[str]:
    out = []
    if self.generator and not self.captions:  # A caption needs an image:
      out.append("completions")                 # chat, with an image part.
    if self.generator and (self.run.chat_template or self.captions or
                           self.encodes):
      out.append("chat")
    if self.embedder or self.image_embedder:
      out.append("embeddings")
    if self.classifier:
      out.append("classify")
    if self.image_generator:
      out.append("images")
    return out

  def image_requests(self, prompt: str, n: int, size: str | None,
                     seed: int | None) -> list:
    """`n` (latent, class, scale) items of an image generation: latents
    from N(0, I) (`seed`: the same images again), the class a
    class-conditional model's prompt names, images `scale` times the
    model's size ("WxH": square, a multiple of it)."""
    native = self.run.config.input.image_size
    width, _, height = (size or f"{native}x{native}").partition("x")
    if width != height or int(width) % native or not int(width):
      raise BadInput(f"Model {self.name!r} draws {native}x{native} images: "
                     f"ask for a square multiple of that (got {size!r}).")
    label = (self._named_class(prompt)
             if "class_conditional" in self.run.parts else 0)
    latents = np.random.default_rng(seed).standard_normal(
        (n, self.run.parts["image_generation"])).astype(np.float32)
    return [(z, label, int(width) // native) for z in latents]

  def _named_class(self, prompt: str) -> int:
    """The one class whose name the prompt has as a word; BadInput."""
    words = set(re.findall(r"[\w'-]+", prompt.lower()))
    named = [i for i, name in enumerate(self.class_names)
             if name.lower() in words]
    if len(named) != 1:
      raise BadInput(f"Model {self.name!r} draws one class: name exactly "
                     f"one of {self.class_names} in the prompt (it names "
                     f"{[self.class_names[i] for i in named]}).")
    return named[0]

  @property
  def captions(self) -> bool:
    """Whether it answers a conversation's image with a caption."""
    return "caption" in self.run.capabilities

  @property
  def encodes(self) -> bool:
    """Whether an encoder reads the prompt (text to text)."""
    return "text_to_text" in self.run.capabilities

  def prompt(self, text: str) -> Prompt:
    """A completion prompt; an encoder's input when it `encodes`."""
    if self.encodes:
      return self._source(text)
    ids = self.prompt_ids(text)
    return Prompt(ids, {}, len(ids))

  def chat_prompt(self, messages: list[dict], images: list) -> Prompt:
    """A conversation (text parts) and its images' bytes. A captioner
    captions the one image (its prompt is the tokenizer's start token: text
    parts do not steer it); a text-to-text model turns the last user
    message into its answer; other models read the conversation through
    their chat template and take no images."""
    if not self.captions:
      if images:
        raise BadInput(f"Model {self.name!r} does not read images.")
      if self.encodes:
        said = [m["content"] for m in messages if m["role"] == "user"]
        if not said:
          raise BadInput(f"Model {self.name!r} answers a user message; "
                         "the conversation has none.")
        return self._source(said[-1])
      ids = self.prompt_ids(messages=messages)
      return Prompt(ids, {}, len(ids))
    if len(images) != 1:
      raise BadInput(f"Model {self.name!r} captions one image: send one "
                     f"image_url content part (got {len(images)}).")
    ids = self.run.tokenizer.encode("")
    return Prompt(ids, {"images": self.image_input(images[0])}, len(ids))

  def _source(self, text: str) -> Prompt:
    """The encoder reads `text`; the decoder starts from the pad id."""
    tokenizer, most = self.run.tokenizer, self.run.parts["source_prompt"]
    ids = np.asarray(tokenizer.encode(text), np.int32)
    if len(ids) > most:
      raise BadInput(f"The input has {len(ids)} tokens; model {self.name!r} "
                     f"reads at most {most}.")
    return Prompt(np.asarray([tokenizer.pad_id], np.int32), {
        "sources": np.pad(ids, (0, most - len(ids)),
                          constant_values=tokenizer.pad_id)}, len(ids))

  @property
  def inputs(self) -> str:
    """What requests send it: "text", "image" or "text+image"."""
    return "+".join([kind for kind, has in (
        ("text", self.text), ("image", self.image_input is not None)) if has])

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
  if "caption" in can:
    served.image_input = _image_reader(run)
  if {"generate", "caption", "text_to_text"} & set(can):
    served.generator = Generator(run.model, run.variables, run.layout,
                                 length=run.parts["decode"],
                                 slots=config.slots,
                                 steps=config.decode_steps,
                                 prompt_inputs=_prompt_spec(run))
    if config.warm_up:
      served.generator.warm_up()
  if "embed" in can:
    served.embedder = _on_texts(run, _embeddings(run.model),
                                config.encoder_batch, window)
  if "embed_image" in can:  # Two towers: images into the texts' space.
    served.image_embedder = _on_images(served, _embeddings(run.model),
                                       config.encoder_batch, window)
  if "classify" in can:  # Texts, or images.
    if "text" in run.parts:
      served.classifier = _on_texts(run, _probabilities(run.model),
                                    config.encoder_batch, window)
    else:
      served.classifier = _on_images(served, _probabilities(run.model),
                                     config.encoder_batch, window)
    served.class_names = _class_names(run.workdir)
  if "generate_images" in can:
    served.image_generator = _image_generator(run, config.encoder_batch,
                                              window)
    if "class_conditional" in run.parts:
      served.class_names = _class_names(run.workdir)
  if not served.endpoints:
    raise ConfigError(f"{workdir}: nothing to serve: it has none of the "
                      "capabilities generate, text_to_text, embed, "
                      "classify, generate_images (model "
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


def _on_images(served: Served, fn, max_batch: int, window: float
               ) -> Batcher:
  """Batches images into `fn(variables, images)`; (output, 1) each. Sets
  `served.image_input`: image bytes decoded and preprocessed as the run
  evaluates them."""
  call = _padded_call(served.run, fn, max_batch)
  served.image_input = _image_reader(served.run)
  return Batcher(lambda images: [(out, 1) for out in call(np.stack(images))],
                 max_batch=max_batch, window=window)


def _image_generator(run, max_batch: int, window: float) -> Batcher:
  """Batches (latent, class) pairs into PNG bytes, pixels mapped from the
  run's preprocessing back to 0..255."""
  def generate(variables, packed):  # Latents, then the class, per row.
    return run.model.apply(variables, packed[:, :-1],
                           packed[:, -1].astype(np.int32), method="generate")

  call = _padded_call(run, generate, max_batch)
  spec = run.config.input
  to_bytes = image_ops.rescaled(image_ops.value_bounds(
      spec.eval_pp, spec.image_size, spec.channels), (0.0, 255.0))

  def batch(items):  # (latent, class, how many times larger) each.
    pixels = to_bytes(call(np.stack([np.append(z, c) for z, c, _ in items])))
    pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return [(_png(p.repeat(scale, 0).repeat(scale, 1)), 1)
            for p, (_, _, scale) in zip(pixels, items)]
  return Batcher(batch, max_batch=max_batch, window=window)


def _png(pixels: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(
      buffer, "PNG")
  return buffer.getvalue()


def _prompt_spec(run) -> dict:
  """One request's further prefill inputs: a captioner's image, an
  encoder's source ids."""
  spec = {}
  if "caption" in run.capabilities:
    size, channels = run.config.input.image_size, run.config.input.channels
    spec["images"] = jax.ShapeDtypeStruct((size, size, channels), np.float32)
  if "text_to_text" in run.capabilities:
    spec["sources"] = jax.ShapeDtypeStruct((run.parts["source_prompt"],),
                                           np.int32)
  return spec


def _image_reader(run):
  """Image bytes -> the model's input, as the run evaluates; BadInput."""
  read = images.reader(run.config.input)

  def image(data: bytes) -> np.ndarray:
    try:
      return read(data)
    except ValueError as e:
      raise BadInput(str(e)) from None
  return image
