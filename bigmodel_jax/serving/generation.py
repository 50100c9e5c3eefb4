"""Continuous batching: concurrent generation requests share one decode step.

The KV cache has a fixed number of slots (rows). A request waits in a queue
until a slot is free, takes the lowest free one and is prefilled into it
with the others admitted at the same time (up to 16 prompts per call, padded
to the smallest length bucket that holds them: one program per bucket and
row count), then advances one token per decode step together with
every other active slot (`steps` tokens per call, to pay the host round
trip once for several tokens), and leaves the slot when done. A decode step runs
over the first 1, 2, 4, ... slots, enough to cover the active ones, so a
lightly loaded server does not pay for idle rows; these programs are all
compiled at warm-up, and no request mix compiles another. Every slot keeps
its own position in the cache and its own sampling settings and seed (a
request's tokens do not depend on what else is running). With one slot it
serves one request at a time.

  generator = Generator(run.model, run.variables, run.layout,
                        length=run.parts["decode"], slots=32)
  generator.submit(Request(prompt_ids, max_tokens=64, deliver=callback))

`deliver(tokens, finish)` is called from the generator's thread with the new
ids and, at the end, the finish reason: "length", "stop" (end of document),
"cancelled" or "error".

A fault fails only the requests it concerns and the generator keeps
serving: requests prefilled together whose call fails are tried again one
by one, so only the one that fails alone gets "error"; a failed decode step
fails the requests it was advancing. Should a failed call have consumed the
cache, a new one is made and every request that had state in it fails.

Nothing here knows what the cache holds: the model decodes as the
"decode" capability says (capabilities.py), prefilling right-padded
prompts with their true `lengths`, and each cache variable's logical axis
names give its sharding and its slot ("batch") axis. An attention KV cache
and a recurrent state fit alike. A model that takes more at prefill (a
captioner's image: the "image_prompt" part) names those `prompt_inputs`;
each request brings its own (`Request.inputs`), zeros where it has none.
"""
import collections
import dataclasses
import logging
import threading
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from bigmodel_jax import decoding


@dataclasses.dataclass(eq=False)
class Request:
  prompt: np.ndarray  # Token ids (T,).
  max_tokens: int
  deliver: Callable[[list, str | None], None]
  temperature: float = 1.0
  top_k: int = 0  # 0: no limit.
  top_p: float = 1.0
  seed: int = 0
  eos_id: int | None = None  # Generation stops after it ("stop").
  inputs: dict = dataclasses.field(default_factory=dict)  # Prefill's others.
  generated: int = 0
  cancelled: bool = False


def buckets(block_size: int, smallest: int = 16) -> tuple:
  """Prefill lengths: powers of two from `smallest`, then the block size."""
  sizes = [smallest]
  while sizes[-1] * 2 < block_size:
    sizes.append(sizes[-1] * 2)
  return tuple(s for s in sizes if s < block_size) + (block_size,)


class Generator:
  """Slots, compiled steps and the thread that runs them (see module doc)."""

  def __init__(self, model, variables, layout, *, length: int, slots: int,
               steps: int = 1, prompt_inputs: dict | None = None):
    """`prompt_inputs`: name -> jax.ShapeDtypeStruct of one request's value
    of each further prefill argument (e.g. "images": (H, W, C) float32)."""
    self.model, self.variables, self.slots = model, variables, slots
    self.prompt_inputs = dict(prompt_inputs or {})
    self.steps = steps  # Decode steps per call (fewer host round trips).
    self.block_size = length  # The longest context the cache holds.
    self.buckets = buckets(self.block_size)
    boxed = self._abstract_cache(slots)
    cache = nn.unbox(boxed)
    self._batch_axis = jax.tree.map(  # Each variable's slot axis.
        lambda leaf: leaf.names.index("batch"), boxed,
        is_leaf=lambda x: isinstance(x, nn.Partitioned))
    cache_sharding = layout.tree_shardings(boxed)
    var_sharding = jax.tree.map(lambda x: x.sharding, variables)
    replicated = NamedSharding(layout.mesh, P())
    self._empty_cache = jax.jit(
        lambda: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), cache),
        out_shardings=cache_sharding)
    self.cache = self._empty_cache()
    self._decode = layout.in_context(jax.jit(
        self._decode_step, donate_argnums=1, static_argnums=8,
        in_shardings=(var_sharding, cache_sharding) + (replicated,) * 6,
        out_shardings=(cache_sharding, replicated)))
    self.row_buckets = tuple(sorted({min(b, slots) for b in buckets(
        slots, smallest=1)}))
    self.prefill_rows = tuple(sorted({min(r, slots) for r in (1, 4, 16)}))
    self._prefill = layout.in_context(jax.jit(
        self._prefill_step, donate_argnums=1,
        in_shardings=(var_sharding, cache_sharding) + (replicated,) * 8,
        out_shardings=(cache_sharding, replicated)))
    self._active = [None] * slots
    self._tokens = np.zeros(slots, np.int32)
    self._settings = {"temperature": np.zeros(slots, np.float32),
                      "top_k": np.zeros(slots, np.int32),
                      "top_p": np.ones(slots, np.float32),
                      "seed": np.zeros(slots, np.uint32)}
    self._counts = np.zeros(slots, np.int32)
    self._pending = collections.deque()
    self._cond = threading.Condition()
    self._closed = False
    self._thread = threading.Thread(target=self._loop, daemon=True,
                                    name="generator")
    self._thread.start()

  # Compiled steps.

  def _abstract_cache(self, rows: int):
    tokens = jax.ShapeDtypeStruct((rows, 1), jnp.int32)
    return jax.eval_shape(lambda v, t: self.model.apply(
        v, t, decode=True, mutable=["cache"])[1]["cache"],
        self.variables, tokens)

  def _keys(self, seed, count):
    return jax.vmap(lambda s, c: jax.random.fold_in(jax.random.key(s), c))(
        seed, count)

  def _decode_step(self, variables, cache, tokens, temperature, top_k, top_p,
                   seed, count, rows: int):
    """The first `rows` slots advance `steps` tokens (idle ones among them
    compute unused values); the rest of the cache is left as it is. Token
    j of a request is drawn with the key (seed, j) whatever the grouping."""
    head = cache if rows == self.slots else jax.tree.map(
        lambda x, axis: jax.lax.slice_in_dim(x, 0, rows, axis=axis), cache,
        self._batch_axis)

    def step(carry, offset):
      head, tokens = carry
      logits, new = self.model.apply({**variables, "cache": head},
                                     tokens[:, None], decode=True,
                                     mutable=["cache"])
      tokens = decoding.sample(logits[:, 0], self._keys(seed, count + offset),
                               temperature, top_k, top_p)
      return (new["cache"], tokens), tokens

    (head, _), out = jax.lax.scan(step, (head, tokens),
                                  jnp.arange(self.steps))
    cache = head if rows == self.slots else jax.tree.map(
        lambda big, part, axis: jax.lax.dynamic_update_slice_in_dim(
            big, part, 0, axis), cache, head, self._batch_axis)
    return cache, out.T  # (rows, steps)

  def _prefill_step(self, variables, cache, tokens, lengths, slots,
                    temperature, top_k, top_p, seed, inputs):
    """Runs prompts (rows, bucket) and their `inputs` into their `slots` (a
    slot past the last one: a padding row, dropped); returns their first
    ids."""
    logits, new = self.model.apply(variables, tokens, decode=True,
                                   lengths=lengths, mutable=["cache"],
                                   **inputs)
    rows = nn.unbox(new["cache"])
    cache = jax.tree.map(
        lambda big, part, axis: big.at[(slice(None),) * axis + (slots,)].set(
            part.astype(big.dtype), mode="drop"),
        cache, rows, self._batch_axis)
    last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], 1)[:, 0]
    first = decoding.sample(last, self._keys(seed, jnp.zeros_like(lengths)),
                            temperature, top_k, top_p)
    return cache, first

  def warm_up(self) -> None:
    """Compiles every decode and prefill program now."""
    for rows in self.prefill_rows:
      for bucket in self.buckets:
        self._run_prefill([(self.slots, Request(np.zeros(1, np.int32), 1,
                                                None))] * rows, bucket)
    for rows in self.row_buckets:
      self._run_decode(rows)

  def _run_prefill(self, started: list, bucket: int) -> list:
    """Prefills (slot, request) pairs in one call; their first ids."""
    rows = next(r for r in self.prefill_rows if r >= len(started))
    tokens = np.zeros((rows, bucket), np.int32)
    lengths = np.ones(rows, np.int32)
    slots = np.full(rows, self.slots, np.int32)  # Padding rows: dropped.
    settings = np.zeros((rows, 4), np.float64)
    settings[:, 2] = 1.0
    inputs = {name: np.zeros((rows, *spec.shape), spec.dtype)
              for name, spec in self.prompt_inputs.items()}
    for row, (slot, request) in enumerate(started):
      for name, value in request.inputs.items():
        inputs[name][row] = value
      tokens[row, :len(request.prompt)] = request.prompt
      lengths[row], slots[row] = len(request.prompt), slot
      settings[row] = (request.temperature, request.top_k, request.top_p,
                       request.seed)
    self.cache, first = self._prefill(
        self.variables, self.cache, tokens, lengths, slots,
        settings[:, 0].astype(np.float32), settings[:, 1].astype(np.int32),
        settings[:, 2].astype(np.float32), settings[:, 3].astype(np.uint32),
        inputs)
    return np.asarray(first)[:len(started)].tolist()

  def _run_decode(self, rows: int):
    s = {k: v[:rows] for k, v in self._settings.items()}
    self.cache, tokens = self._decode(
        self.variables, self.cache, self._tokens[:rows], s["temperature"],
        s["top_k"], s["top_p"], s["seed"], self._counts[:rows], rows)
    return np.asarray(tokens)

  # Requests.

  def submit(self, request: Request) -> None:
    if len(request.prompt) + request.max_tokens > self.block_size:
      raise ValueError(f"{len(request.prompt)} prompt tokens + max_tokens "
                       f"{request.max_tokens} exceed the context of "
                       f"{self.block_size}.")
    with self._cond:
      if self._closed:
        raise RuntimeError("The generator is closed.")
      self._pending.append(request)
      self._cond.notify()

  def cancel(self, request: Request) -> None:
    """Stops a request; its slot is freed before the next step."""
    request.cancelled = True

  @property
  def queued(self) -> int:
    return len(self._pending)

  @property
  def active(self) -> int:
    return sum(r is not None for r in self._active)

  def close(self) -> None:
    with self._cond:
      self._closed = True
      self._cond.notify()
    self._thread.join()

  # The loop.

  def _loop(self) -> None:
    while True:
      with self._cond:
        while not (self._closed or self._pending or self.active):
          self._cond.wait()
        if self._closed:
          break
        admitted = []
        free = [i for i, r in enumerate(self._active) if r is None]
        while self._pending and free:
          request = self._pending.popleft()
          if not request.cancelled:
            admitted.append((free.pop(0), request))
      for first in range(0, len(admitted), self.prefill_rows[-1]):
        self._admit(admitted[first:first + self.prefill_rows[-1]])
      for slot, request in enumerate(self._active):
        if request is not None and request.cancelled:
          self._finish(slot, [], "cancelled")
      if self.active:
        running = [i for i, r in enumerate(self._active) if r is not None]
        try:
          self._advance(self._run_decode(
              next(b for b in self.row_buckets if b > running[-1])))
        except Exception:  # noqa: BLE001 — fail these, keep serving.
          logging.exception("A decode step failed; failing its requests")
          self._fail(running)
    for request in list(self._pending) + [r for r in self._active if r]:
      _deliver(request, [], "cancelled")

  def _admit(self, started: list) -> None:
    """Starts (slot, request) pairs together; if that fails, one by one."""
    try:
      self._start(started)
    except Exception:  # noqa: BLE001 — find the request that fails alone.
      logging.exception("Prefilling %d requests failed", len(started))
      for slot, _ in started:
        self._active[slot] = None
      self._recover()
      if len(started) == 1:
        return _deliver(started[0][1], [], "error")
      for pair in started:
        self._admit([pair])

  def _fail(self, slots: list) -> None:
    for slot in slots:
      if self._active[slot] is not None:
        self._finish(slot, [], "error")
    self._recover()

  def _recover(self) -> None:
    """A new cache if a failed call consumed it; its requests fail."""
    if any(leaf.is_deleted() for leaf in jax.tree.leaves(self.cache)):
      self.cache = self._empty_cache()
      self._fail([i for i, r in enumerate(self._active) if r is not None])

  def _start(self, started: list) -> None:
    """Prefills newly admitted (slot, request) pairs together."""
    bucket = next(b for b in self.buckets
                  if b >= max(len(r.prompt) for _, r in started))
    for slot, request in started:
      for array, value in zip(self._settings.values(), (
          request.temperature, request.top_k, request.top_p, request.seed)):
        array[slot] = value
      self._counts[slot] = 1
      self._active[slot] = request
    for (slot, _), first in zip(started, self._run_prefill(started, bucket)):
      self._emit(slot, [first])

  def _advance(self, tokens: np.ndarray) -> None:
    """Hands each active slot its new tokens (rows, steps), up to its end."""
    for slot, request in enumerate(self._active[:len(tokens)]):
      if request is not None:
        self._counts[slot] += self.steps
        self._emit(slot, tokens[slot].tolist())

  def _emit(self, slot: int, tokens: list) -> None:
    request = self._active[slot]
    self._tokens[slot] = tokens[-1]
    for n, token in enumerate(tokens, 1):
      request.generated += 1
      if token == request.eos_id or request.generated >= request.max_tokens:
        return self._finish(slot, tokens[:n], "stop" if token ==
                            request.eos_id else "length")
    _deliver(request, tokens, None)

  def _finish(self, slot: int, tokens: list, reason: str) -> None:
    request, self._active[slot] = self._active[slot], None
    _deliver(request, tokens, reason)


def _deliver(request: Request, tokens: list, finish: str | None) -> None:
  """Hands tokens over; a failing receiver cancels its request only."""
  try:
    request.deliver(tokens, finish)
  except Exception:  # noqa: BLE001
    logging.exception("A request's receiver failed; cancelling it")
    request.cancelled = True

