"""The shared attention layer against attention written out by hand: self
and cross, causal, masks, a score bias, grouped heads, and its KV cache."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from bigmodel_jax.layers import attention
from bigmodel_jax.layers.linear import Dense

HEADS = attention.Heads(num_heads=4, head_dim=8, kv_heads=2)


class Attend(nn.Module):
  """`attention.attention` as a module; kwargs go to every call."""

  @nn.compact
  def __call__(self, x, **kwargs):
    return attention.attention(self, x, Dense(use_bias=True), HEADS,
                               out_dim=16, **kwargs)


def _by_hand(params, x, context=None, mask=None, bias=None, causal=False):
  """Softmax(q k / sqrt(d) + bias) v over grouped heads, then "out", with
  `attention.probabilities` (what explaining sows) for the weights."""
  source = x if context is None else context
  proj = {n: jnp.einsum("btd,dhk->bthk", t, params[n]["kernel"]) +
          params[n]["bias"] for n, t in
          (("query", x), ("key", source), ("value", source))}
  weights = attention.probabilities(proj["query"], proj["key"], mask, bias,
                                    causal)
  out = jnp.einsum("bhts,bshk->bthk", weights,
                   jnp.repeat(proj["value"], 2, axis=2))
  return (jnp.einsum("bthk,hkd->btd", out, params["out"]["kernel"]) +
          params["out"]["bias"])


def _params(x, **kwargs):
  return nn.unbox(Attend().init(jax.random.key(0), x, **kwargs))


def test_self_and_cross_attention_with_masks_and_a_score_bias():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32)
  context = jnp.asarray(rng.normal(size=(2, 7, 16)), jnp.float32)
  valid = jnp.asarray([[True] * 7, [True] * 4 + [False] * 3])
  bias = jnp.asarray(rng.normal(size=(1, 4, 5, 7)), jnp.float32)
  cases = [dict(), dict(causal=True),
           dict(mask=attention.segment_mask(jnp.asarray(
               [[0, 0, 1, 1, 1], [0, 1, 1, 2, 2]]))),
           dict(context=context, mask=attention.padding_mask(valid),
                bias=bias)]
  for kwargs in cases:
    variables = _params(x, **kwargs)
    got = Attend().apply(variables, x, **kwargs)
    want = _by_hand(variables["params"], x, **kwargs)
    np.testing.assert_allclose(got, want, atol=2e-5, err_msg=str(kwargs))


def test_the_cache_gives_the_causal_outputs_a_step_at_a_time():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 6, 16)),
                  jnp.float32)
  variables = _params(x)
  whole = Attend().apply(variables, x, causal=True)
  cache, steps = {}, []
  for t in range(6):
    out, state = Attend().apply(
        {**variables, **cache}, x[:, t:t + 1],
        cache_start=jnp.full((2,), t), cache_size=6, mutable=["cache"])
    if not cache:  # Made by the first step: logically named, slots first.
      assert state["cache"]["cached_key"].names == attention.CACHE
    cache = nn.unbox(state)
    steps.append(out)
  np.testing.assert_allclose(jnp.concatenate(steps, 1), whole, atol=2e-5)
