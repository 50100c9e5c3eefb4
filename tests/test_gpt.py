"""GPT model: causality, KV-cache decoding, sizes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from bigmodel_jax import decoding
from bigmodel_jax.models import gpt
from conftest import cached_logits


def _model_and_params(block_size=16, **kw):
  cfg = gpt.model_config("nano", vocab_size=11, block_size=block_size,
                         num_layers=2, emb_dim=32, num_heads=4, **kw)
  model = gpt.make(cfg)
  tokens = jnp.zeros((2, block_size), jnp.int32)
  params = nn.unbox(model.init(jax.random.key(0), tokens))["params"]
  return model, params


def test_changing_a_future_token_never_changes_earlier_logits():
  model, params = _model_and_params(use_bias=True)
  tokens = np.random.default_rng(0).integers(0, 11, (2, 16))
  base = model.apply({"params": params}, tokens)
  for t in (0, 7, 15):
    changed = tokens.copy()
    changed[:, t] = (changed[:, t] + 1) % 11
    out = model.apply({"params": params}, changed)
    np.testing.assert_allclose(out[:, :t], base[:, :t], atol=1e-6)
    assert not np.allclose(out[:, t:], base[:, t:])


def test_kv_cache_logits_equal_full_prefix_logits():
  model, params = _model_and_params()
  tokens = np.random.default_rng(1).integers(0, 11, (2, 16))
  full = model.apply({"params": params}, tokens)
  np.testing.assert_allclose(cached_logits(model, params, tokens, 5), full,
                             atol=1e-5)


@pytest.mark.parametrize("new_tokens", [6, 40])  # Within / beyond block_size.
def test_greedy_cached_generation_equals_rerunning_the_prefix(new_tokens):
  model, params = _model_and_params()
  prompt = np.array([[1, 2, 3], [4, 5, 6]])
  got = decoding.generate(model, params, prompt, new_tokens,
                          jax.random.key(0), context=model.config.block_size,
                          temperature=0)
  # Reference: the whole context re-run for every token (right-padded to the
  # block size, which causality makes harmless); when the window is full it
  # restarts from the last half, as the cache does.
  forward = jax.jit(lambda x: model.apply({"params": params}, x))
  tokens, start = prompt, 0
  for _ in range(new_tokens):
    if tokens.shape[1] - start > 16:
      start = tokens.shape[1] - 8
    context = tokens[:, start:]
    logits = forward(np.pad(context, ((0, 0), (0, 16 - context.shape[1]))))
    next_token = np.argmax(logits[:, context.shape[1] - 1], -1)
    tokens = np.concatenate([tokens, next_token[:, None]], 1)
  np.testing.assert_array_equal(got, tokens[:, 3:])


def test_sampling_respects_top_k():
  model, params = _model_and_params()
  logits = model.apply({"params": params}, np.array([[1, 2, 3]]))[:, -1]
  allowed = set(np.argsort(-np.asarray(logits[0]))[:2].tolist())
  got = decoding.generate(model, params, np.array([[1, 2, 3]] * 64), 1,
                          jax.random.key(3), context=model.config.block_size,
                          temperature=5.0, top_k=2)
  assert set(got[:, 0].tolist()) <= allowed


def test_nano_variant_matches_nanogpt_parameter_count():
  model = gpt.make(gpt.model_config("nano", vocab_size=65, block_size=64))
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(
      jax.random.key(0), jnp.zeros((1, 64), jnp.int32)))["params"])
  # nanoGPT prints "number of parameters: 0.80M" for this model.
  assert gpt.num_params(shapes) == 795_904


def test_unknown_variant_is_a_clear_error():
  with pytest.raises(ValueError, match="Unknown GPT variant 'huge'"):
    gpt.model_config("huge")
