"""Recurrent language models: LSTM and GRU equal PyTorch's with copied
weights, the state restarts at documents and carries through cached
decoding, every mesh equals one device, and a trained run goes through
every command and is served by /v1/completions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn

from bigmodel_jax import config_loader
from bigmodel_jax.models import rnn
from conftest import (OK, SERVABLE, _EXPERIMENTS, cached_logits,
                      check_every_command, check_greedy_completions,
                      run_steps)


def _model(cell, **overrides):
  return rnn.make(rnn.model_config("char-lstm", **{
      "vocab_size": 11, "cell": cell, "hidden_dim": 7, "emb_dim": 5,
      "num_layers": 2, "block_size": 16, **overrides}))


def _random_params(model, tokens):
  """Every parameter random (biases too), so parity cannot pass on
  zeros."""
  params = nn.unbox(model.init(jax.random.key(0), tokens))["params"]
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(tree, [
      jax.random.normal(k, x.shape) * 0.5 for x, k in zip(leaves, keys)])


def _torch_rnn(cell: str, params, num_layers: int):
  """torch.nn.LSTM / GRU (batch first) holding our layers' weights."""
  layer = params["layer_0"]["input"]["kernel"]
  gates, hidden = layer.shape[1:]
  reference = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](
      layer.shape[0], hidden, num_layers=num_layers, batch_first=True)
  weights = {}
  for i in range(num_layers):
    ours = params[f"layer_{i}"]
    for theirs, block in (("ih", ours["input"]),
                          ("hh", ours["recurrent"]["hidden"])):
      kernel = np.asarray(block["kernel"])
      weights[f"weight_{theirs}_l{i}"] = torch.tensor(
          kernel.reshape(kernel.shape[0], gates * hidden).T)
      weights[f"bias_{theirs}_l{i}"] = torch.tensor(
          np.asarray(block["bias"]).reshape(-1))
  reference.load_state_dict(weights)
  return reference


def _torch_logits(reference, params, tokens) -> np.ndarray:
  embedded = np.asarray(params["wte"]["embedding"])[np.asarray(tokens)]
  with torch.no_grad():
    out, _ = reference(torch.tensor(embedded))
  return (out.numpy() @ np.asarray(params["head"]["kernel"]) +
          np.asarray(params["head"]["bias"]))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_layers_equal_torch_with_copied_weights(cell):
  model = _model(cell)
  tokens = jnp.asarray(np.random.RandomState(0).randint(0, 11, (3, 9)))
  params = _random_params(model, tokens)
  reference = _torch_rnn(cell, params, 2)
  np.testing.assert_allclose(model.apply({"params": params}, tokens),
                             _torch_logits(reference, params, tokens),
                             atol=1e-5)
  # Packed documents: the second starts from a zero state, as if alone.
  segments = jnp.asarray([[0] * 4 + [1] * 5] * 3)
  packed = model.apply({"params": params}, tokens, segments)
  np.testing.assert_allclose(packed[:, 4:], _torch_logits(
      reference, params, tokens[:, 4:]), atol=1e-5)


def test_variants_count_torch_parameters():
  for variant, vocab in [("char-lstm", 65), ("char-gru", 65),
                         ("zaremba-medium", 10000), ("zaremba-large", 10000)]:
    cfg = rnn.make(rnn.model_config(variant, vocab_size=vocab)).config
    shapes = jax.eval_shape(rnn.Model(cfg).init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 4), jnp.int32))
    ours = rnn.num_params(nn.unbox(shapes)["params"])
    with torch.device("meta"):
      cell = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cfg.cell]
      modules = [torch.nn.Embedding(vocab, cfg.hidden_dim),
                 cell(cfg.hidden_dim, cfg.hidden_dim, cfg.num_layers),
                 torch.nn.Linear(cfg.hidden_dim, vocab)]
    assert ours == sum(p.numel() for m in modules for p in m.parameters())
  # Equal parameters to GPT "nano" on the characters (795,904): within 1%.
  for variant in ("char-lstm", "char-gru"):
    cfg = rnn.make(rnn.model_config(variant, vocab_size=65)).config
    params = nn.unbox(jax.eval_shape(rnn.Model(cfg).init, jax.random.key(0),
                                     jnp.zeros((1, 4), jnp.int32)))["params"]
    assert abs(rnn.num_params(params) / 795_904 - 1) < 0.01


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_state_carries_through_cached_decoding(cell):
  model = _model(cell)
  tokens = jnp.asarray(np.random.RandomState(1).randint(0, 11, (2, 10)))
  params = _random_params(model, tokens)
  full = model.apply({"params": params}, tokens)
  np.testing.assert_allclose(cached_logits(model, params, tokens, 4), full,
                             atol=1e-5)
  # Right-padded prompts of 3 and 6 tokens: each row's state stops at its
  # length, and the next token continues from there.
  padded = jnp.where(jnp.arange(8) < jnp.asarray([[3], [6]]), tokens[:, :8],
                     0)
  logits, cache = model.apply({"params": params}, padded, decode=True,
                              lengths=jnp.asarray([3, 6]), mutable=["cache"])
  nxt = jnp.asarray([[tokens[0, 3]], [tokens[1, 6]]])
  step, _ = model.apply({"params": params, **cache}, nxt, decode=True,
                        mutable=["cache"])
  np.testing.assert_allclose(step[:, 0], full[[0, 1], [3, 6]], atol=1e-5)
  # The cache is the state: one (B, hidden) variable per layer and part.
  assert {k: sorted(v) for k, v in cache["cache"].items()} == {
      f"layer_{i}": sorted(rnn.STATE[cell]) for i in range(2)}


def _config(**overrides):
  spec, tiny = SERVABLE["lstm"]
  return config_loader.load(str(_EXPERIMENTS / spec), {**tiny, **overrides})


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_short_training_lowers_the_loss(cell):
  losses, _, _ = run_steps(_config(**{"model.cell": cell,
                                      "optimizer.warmup_steps": 1}),
                           jax.devices()[:1], steps=40)
  assert losses[0] > 4.0  # ln 65 = 4.17: uniform over the characters.
  assert np.mean(losses[-5:]) < losses[0] - 0.8, losses


def test_every_mesh_gives_the_single_device_losses():
  """Hidden units split over "tensor", batch rows over "data" and "fsdp"."""
  single, _, _ = run_steps(_config(), jax.devices()[:1])
  sharded, _, _ = run_steps(_config(**{
      "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}))
  np.testing.assert_allclose(sharded, single, rtol=2e-5)


@pytest.mark.slow
def test_a_trained_run_goes_through_every_command(servable, tmp_path, capsys):
  check_every_command(servable("lstm"), tmp_path, capsys,
                      split="validation", prompt="ROMEO:", sample=OK,
                      export_hf="has no Hugging Face export",
                      explain="cannot logit lens")


@pytest.mark.slow
def test_completions_continue_the_state_token_after_token(servable,
                                                          tmp_path):
  check_greedy_completions(servable, tmp_path, "lstm", "ROMEO:", 40)
