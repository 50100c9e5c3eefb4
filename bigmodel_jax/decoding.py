"""Autoregressive decoding with a cache (the "decode" capability).

The prompt is processed in one call that fills the cache; each further token
costs one single-position call. The cache holds at most `context` tokens:
when it is full, decoding restarts from the last half of the text (one
prefill call) and continues, as nanoGPT's cropping does.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from bigmodel_jax.errors import ConfigError


def sample(logits, keys, temperature, top_k, top_p):
  """Ids (B,) from logits (B, V), each row under its own settings, arrays
  (B,): `keys` one PRNG key per row; `temperature` 0 decodes greedily;
  `top_k` 0 and `top_p` 1 do not limit. Top-k applies first, then top-p
  (the fewest most likely ids whose probability reaches it)."""
  vocab = logits.shape[-1]
  greedy = jnp.argmax(logits, -1)
  scaled = logits / jnp.where(temperature > 0, temperature, 1.0)[:, None]
  ranked = jnp.sort(scaled, -1)[:, ::-1]
  k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
  ranked = jnp.where(jnp.arange(vocab) < k[:, None], ranked, -jnp.inf)
  probs = jax.nn.softmax(ranked, -1)
  kept = jnp.sum(jnp.cumsum(probs, -1) - probs < top_p[:, None], -1)
  threshold = jnp.take_along_axis(ranked, jnp.maximum(kept, 1)[:, None] - 1,
                                  -1)
  sampled = jax.vmap(jax.random.categorical)(
      keys, jnp.where(scaled >= threshold, scaled, -jnp.inf))
  return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)


def _pick(logits, rng, temperature: float, top_k: int | None):
  """`sample` with one setting for every row."""
  rows = logits.shape[0]
  return sample(logits, jax.random.split(rng, rows),
                jnp.full((rows,), temperature), jnp.full((rows,), top_k or 0),
                jnp.ones((rows,)))


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7))
def _segment(model, params, context, length, rng, num_steps, temperature,
             top_k, inputs):
  """Prefills the cache with context[:, :length] (and the model's other
  prefill `inputs`); then decodes num_steps + 1 ids."""
  cache = jax.tree.map(
      lambda x: jnp.zeros(x.shape, x.dtype),
      nn.unbox(jax.eval_shape(lambda: model.init(
          jax.random.key(0), context, decode=True))["cache"]))
  logits, variables = model.apply(
      {"params": params, "cache": cache}, context, decode=True,
      lengths=jnp.full(context.shape[:1], length, jnp.int32),
      mutable=["cache"], **inputs)
  cache = variables["cache"]
  rngs = jax.random.split(rng, num_steps + 1)
  first = _pick(jnp.take(logits, length - 1, axis=1), rngs[0], temperature,
                top_k)

  def step(carry, rng):
    cache, token = carry
    logits, variables = model.apply({"params": params, "cache": cache},
                                    token[:, None], decode=True,
                                    mutable=["cache"])
    token = _pick(logits[:, 0], rng, temperature, top_k)
    return (variables["cache"], token), token

  _, rest = jax.lax.scan(step, (cache, first), rngs[1:])
  return jnp.concatenate([first[:, None], rest.T], axis=1)


def generate(model, params, prompt: np.ndarray, max_new_tokens: int, rng, *,
             context: int, temperature: float = 1.0,
             top_k: int | None = None, inputs: dict | None = None
             ) -> np.ndarray:
  """Continues each row of `prompt` (B, T) by `max_new_tokens` ids, with a
  cache of `context` positions (the "decode" capability's value); `inputs`:
  the model's other prefill arguments (a captioner's "images")."""
  tokens = np.asarray(prompt, np.int32)
  if tokens.shape[1] == 0:
    raise ConfigError("The prompt must hold at least one token.")
  produced = 0
  keep = context  # The first window may fill the cache; later ones half.
  while produced < max_new_tokens:
    window = tokens[:, -keep:]
    length = window.shape[1]
    num_steps = min(max_new_tokens - produced, context - length + 1) - 1
    padded = np.pad(window, ((0, 0), (0, context - length)))
    rng, key = jax.random.split(rng)
    new = _segment(model, params, padded, jnp.int32(length), key, num_steps,
                   float(temperature), top_k, inputs or {})
    tokens = np.concatenate([tokens, np.asarray(new)], axis=1)
    produced += new.shape[1]
    keep = context // 2
  return tokens[:, prompt.shape[1]:]


def _empty_cache(model, rows):
  """(zeros of the cache of `model` decoding `rows`, each cache variable's
  "batch" axis (from its logical axis names))."""
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), rows,
                                            decode=True))["cache"]
  axes = jax.tree.map(lambda leaf: leaf.names.index("batch"), boxed,
                      is_leaf=lambda x: isinstance(x, nn.Partitioned))
  return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                      nn.unbox(boxed)), axes


def _take(values, index, axis: int = 1):
  """values (B, K, ...) at `index` (B, J) along axis 1."""
  index = index.reshape(index.shape + (1,) * (values.ndim - index.ndim))
  return jnp.take_along_axis(values, index, axis)


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _beams(model, params, prompt, length, num_steps, beams, length_penalty,
           eos_id, inputs):
  """Beam search of `num_steps` ids after each row's prompt[:, :length]:
  (best ids (B, num_steps), their scores (B,)); see `beam_search`."""
  rows = prompt.shape[0]
  flat = jnp.repeat(prompt, beams, 0)
  inputs = jax.tree.map(lambda x: jnp.repeat(x, beams, 0), inputs)
  cache, axes = _empty_cache(model, flat)
  logits, variables = model.apply(
      {"params": params, "cache": cache}, flat, decode=True,
      lengths=jnp.full(flat.shape[:1], length, jnp.int32), mutable=["cache"],
      **inputs)
  logits = jnp.take(logits, length - 1, axis=1)
  vocab = logits.shape[-1]
  first = jnp.arange(2 * beams) < beams  # The candidates that may finish.
  state = dict(
      cache=variables["cache"],
      running=jnp.zeros((rows, beams, num_steps), jnp.int32),
      running_scores=jnp.where(jnp.arange(beams) == 0, 0.0, -1e9)[None]
      .repeat(rows, 0),
      done=jnp.zeros((rows, beams, num_steps), jnp.int32),
      done_scores=jnp.full((rows, beams), -1e9),
      finished=jnp.zeros((rows, beams), bool),
      improvable=jnp.ones((rows, 1), bool))

  def step(state, logits, t):
    scores = (jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(
        rows, beams, vocab) + state["running_scores"][..., None]).reshape(
            rows, -1)
    top, index = jax.lax.top_k(scores, 2 * beams)
    beam, token = index // vocab, index % vocab
    sequences = _take(state["running"], beam).at[:, :, t].set(token)
    ends = (token == eos_id) | (t == num_steps - 1)
    kept = top - 1e9 * ends
    order = jax.lax.top_k(kept, beams)[1]
    running, parents = _take(sequences, order), _take(beam, order)
    running_scores = _take(kept, order)
    ended = ends & first
    new = (top / (t + 1.0) ** length_penalty - 1e9 * ~state["improvable"] -
           1e9 * ~ended)
    merged = jnp.concatenate([state["done_scores"], new], 1)
    best = jax.lax.top_k(merged, beams)[1]
    done_scores = _take(merged, best)
    done = _take(jnp.concatenate([state["done"], sequences], 1), best)
    finished = _take(jnp.concatenate([state["finished"], ended], 1), best)
    worst = jnp.where(finished, done_scores.min(1, keepdims=True), -1e9)
    improvable = state["improvable"] & jnp.any(
        running_scores[:, :1] / (t + 1.0) ** length_penalty > worst, -1,
        keepdims=True)
    rows_of = (parents + jnp.arange(rows)[:, None] * beams).reshape(-1)
    cache = jax.tree.map(lambda x, axis: jnp.take(x, rows_of, axis),
                         state["cache"], axes)
    return dict(cache=cache, running=running, running_scores=running_scores,
                done=done, done_scores=done_scores, finished=finished,
                improvable=improvable)

  def body(carry, t):
    state, logits = carry
    state = step(state, logits, t)
    logits, variables = model.apply(
        {"params": params, "cache": state["cache"]},
        state["running"][:, :, t].reshape(-1, 1), decode=True,
        mutable=["cache"])
    return ({**state, "cache": variables["cache"]}, logits[:, 0]), None

  (state, _), _ = jax.lax.scan(body, (state, logits), jnp.arange(num_steps))
  return state["done"][:, 0], state["done_scores"][:, 0]


def beam_search(model, params, prompt: np.ndarray, max_new_tokens: int, *,
                beams: int, context: int, eos_id: int,
                length_penalty: float = 1.0, inputs: dict | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
  """The most likely continuation of each row of `prompt` (B, T) by beam
  search with `beams` beams, as transformers' `generate(num_beams=...)`
  does by default: each step keeps the best `beams` unfinished sequences
  of the 2 x `beams` best; one ending in `eos_id` (or at `max_new_tokens`)
  among the best `beams` is a hypothesis scored by its summed
  log-probability / its length ** `length_penalty`; a row stops taking
  hypotheses once its best running beam, so normalised, cannot beat its
  worst. Returns (ids (B, max_new_tokens), eos and after it as generated;
  scores (B,)). The cache holds `context` positions: prompt and
  continuation must fit."""
  tokens = np.asarray(prompt, np.int32)
  if tokens.shape[1] == 0:
    raise ConfigError("The prompt must hold at least one token.")
  if tokens.shape[1] + max_new_tokens > context:
    raise ConfigError(f"A {tokens.shape[1]}-token prompt and "
                      f"{max_new_tokens} new tokens exceed the context of "
                      f"{context}.")
  if beams < 1 or max_new_tokens < 1:
    raise ConfigError(f"Beam search needs beams >= 1 and max_new_tokens >= "
                      f"1 (got {beams}, {max_new_tokens}).")
  padded = np.pad(tokens, ((0, 0), (0, context - tokens.shape[1])))
  ids, scores = _beams(model, params, padded, jnp.int32(tokens.shape[1]),
                       max_new_tokens, beams, float(length_penalty),
                       jnp.int32(eos_id), inputs or {})
  return np.asarray(ids), np.asarray(scores)
