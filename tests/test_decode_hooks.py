"""The "decode" capability is a contract, not GPT's cache: a recurrent model
whose cache is its hidden state (logically named) is served by the same
continuous-batching generator, prompts prefilled with their true lengths."""
import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from bigmodel_jax import sharding
from bigmodel_jax.layers.linear import normal_init
from bigmodel_jax.serving.generation import Generator
from conftest import generate_all

VOCAB, WIDTH = 11, 8


class Recurrent(nn.Module):
  """tokens (B, T) -> next-token logits (B, T, V) of a tanh RNN; with
  `decode`, the hidden state is the cache, and a row's state stops at its
  `lengths` (right-padded prompts)."""

  @nn.compact
  def __call__(self, tokens, *, decode: bool = False, lengths=None):
    embed = self.param("embed", normal_init(1.0, ("vocab", "embed")),
                       (VOCAB, WIDTH))
    recur = self.param("recur", normal_init(0.5, ("embed", "mlp")),
                       (WIDTH, WIDTH))
    head = self.param("head", normal_init(1.0, ("embed", "vocab")),
                      (WIDTH, VOCAB))
    batch, length = tokens.shape
    state = (self.variable("cache", "state", nn.with_logical_partitioning(
        jnp.zeros, ("batch", "act_embed")), (batch, WIDTH)) if decode
             else None)
    h = state.value if decode else jnp.zeros((batch, WIDTH))
    stop = jnp.full((batch,), length) if lengths is None else lengths

    def step(h, inputs):
      t, token = inputs
      new = jnp.tanh(embed[token] + h @ recur)
      return jnp.where((t < stop)[:, None], new, h), new

    h, outs = jax.lax.scan(step, h, (jnp.arange(length), tokens.T))
    if decode:
      state.value = h
    return jnp.einsum("tbd,dv->btv", outs, head)


def test_a_recurrent_state_fits_the_decode_hook():
  model = Recurrent()
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  layout = sharding.Layout(mesh, sharding.rules_from_config(sharding.RULES))
  variables = jax.device_put(
      nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))),
      NamedSharding(mesh, P()))
  generator = Generator(model, variables, layout, length=32, slots=2)
  prompts = [[1, 2, 3, 4, 5], [6], [7, 8]]  # Three prompts, two slots.
  got = generate_all(generator, prompts, [5] * 3, temperature=0.0)
  generator.close()
  for i, prompt in enumerate(prompts):  # Greedy by whole forward passes.
    text = list(prompt)
    for _ in range(5):
      logits = model.apply(variables, jnp.asarray([text]))
      text.append(int(jnp.argmax(logits[0, -1])))
    assert got[i] == text[len(prompt):], i
