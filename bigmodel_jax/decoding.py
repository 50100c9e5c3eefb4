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
