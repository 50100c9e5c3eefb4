"""Transformer-XL: a window read at once equals the paper's recurrence
segment after segment (outputs and gradients), the memory reaches exactly as
far as the definition says, cached decoding equals the window, every mesh
equals one device, the planner plans the largest variant, and a trained run
goes through every command and is served token after token."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from bigmodel_jax import config_loader, plan
from bigmodel_jax.models import transformer_xl
from conftest import (OK, cached_logits, check_every_command,
                      check_greedy_completions, run_steps,
                      sharded_and_single)

EXPERIMENT = os.path.join(os.path.dirname(__file__), "..", "experiments",
                          "transformer_xl_char.py:cpu")


def _model(**overrides):
  return transformer_xl.make(transformer_xl.model_config("char-nano", **{
      "vocab_size": 11, "num_layers": 2, "num_heads": 2, "emb_dim": 16,
      "mlp_dim": 24, "segment_len": 4, "mem_len": 3, "block_size": 32,
      **overrides}))


def _random_params(model, tokens):
  """Every parameter random (biases, u and v too)."""
  params = nn.unbox(model.init(jax.random.key(0), tokens))["params"]
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(tree, [
      x + jax.random.normal(k, x.shape) * 0.3 for x, k in zip(leaves, keys)])


def _layer_norm(x, p):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / jnp.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def _recurrence(params, cfg, tokens):
  """The paper's model (Dai et al. 2019, section 3 and appendix B), one
  segment after another: at layer n, h~ = [SG(m) o h] (m: the previous
  segments' last mem_len inputs of the layer), q = h W_q, k = h~ W_k,
  v = h~ W_v, A_ij = (q_i + u) k_j + (q_i + v) W_r R_(i-j) over j <= i,
  then post-LN residuals; R_d = [sin(d w), cos(d w)], w_i = 10000^(-2i/D)."""
  dim, segment, heads = cfg.emb_dim, cfg.segment_len, cfg.head_size
  emb = params["wte"]["embedding"]
  w = 1.0 / 10000 ** (np.arange(0, dim, 2) / dim)
  memory = [jnp.zeros((tokens.shape[0], 0, dim))] * cfg.num_layers
  logits = []
  for s in range(0, tokens.shape[1], segment):
    h = emb[tokens[:, s:s + segment]] * np.sqrt(dim)
    for n in range(cfg.num_layers):
      p = params[f"block_{n}"]
      a = p["attn"]
      context = jnp.concatenate([jax.lax.stop_gradient(memory[n]), h], 1)
      memory[n] = context[:, max(0, context.shape[1] - cfg.mem_len):]
      i = np.arange(h.shape[1])[:, None] + context.shape[1] - h.shape[1]
      d = i - np.arange(context.shape[1])[None]  # i - j
      r = np.concatenate([np.sin(np.maximum(d, 0)[..., None] * w),
                          np.cos(np.maximum(d, 0)[..., None] * w)], -1)
      wr = jnp.einsum("ije,ehk->ijhk", r, a["r"]["kernel"])
      q = jnp.einsum("bte,ehk->bthk", h, a["query"]["kernel"])
      u = a["query"]["bias"]
      v = a["r_bias"] + u
      k = jnp.einsum("bse,ehk->bshk", context, a["key"]["kernel"])
      val = jnp.einsum("bse,ehk->bshk", context, a["value"]["kernel"])
      score = (jnp.einsum("bihk,bjhk->bhij", q + u, k) +
               jnp.einsum("bihk,ijhk->bhij", q + v, wr)) / np.sqrt(heads)
      probs = jax.nn.softmax(jnp.where(d >= 0, score, -jnp.inf), -1)
      o = jnp.einsum("bhij,bjhk,hke->bie", probs, val, a["out"]["kernel"])
      h = _layer_norm(h + o, p["attn_ln"])
      f = jax.nn.relu(h @ p["fc"]["kernel"] + p["fc"]["bias"])
      h = _layer_norm(h + f @ p["proj"]["kernel"] + p["proj"]["bias"],
                      p["mlp_ln"])
    logits.append(h @ emb.T + params["head_bias"])
  return jnp.concatenate(logits, 1)


@pytest.mark.parametrize("mem_len", [3, 6])  # Shorter, longer than S.
def test_a_window_is_the_papers_recurrence_outputs_and_gradients(mem_len):
  model = _model(mem_len=mem_len)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 11, (2, 14)))
  params = _random_params(model, tokens)
  weights = jax.random.normal(jax.random.key(2), (2, 14, 11))
  window = jax.jit(lambda p: model.apply({"params": p}, tokens))
  recurrence = jax.jit(lambda p: _recurrence(p, model.config, tokens))
  np.testing.assert_allclose(window(params), recurrence(params), atol=2e-5)
  ours, theirs = (jax.jit(jax.grad(lambda p, f=f: jnp.sum(f(p) * weights)))(
      params) for f in (window, recurrence))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-4),
               ours, theirs)


def test_the_memory_reaches_as_far_as_the_definition_says():
  """One layer: a token changes exactly the predictions whose span
  [floor(p / S) S - M, p] holds it. Two layers reach one memory further:
  the effective context exceeds the span. Packed documents never reach
  into each other."""
  tokens = np.random.default_rng(0).integers(0, 11, (1, 24))
  changed = tokens.copy()
  changed[0, 5] = (tokens[0, 5] + 1) % 11
  for layers in (1, 2):
    model = _model(num_layers=layers)
    params = _random_params(model, tokens)
    out = [model.apply({"params": params}, t) for t in (tokens, changed)]
    moved = np.abs(out[0] - out[1]).max(-1)[0] > 1e-6
    span = [p // 4 * 4 - 3 <= 5 <= p for p in range(24)]
    if layers == 1:
      assert list(moved) == span
    else:
      assert moved[span].all() and moved[~np.array(span)].any()
      assert not moved[5 + 2 * (3 + 4):].any()  # Two spans at most.
  documents = np.array([[1] * 8 + [2] * 16])  # Packed: no reach across.
  out = [model.apply({"params": params}, t, documents)
         for t in (tokens, changed)]
  assert not np.abs(out[0] - out[1])[0, 8:].any()


def test_cached_decoding_equals_the_window():
  """A prefill across a segment boundary, then steps across two more."""
  model = _model()
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 11, (2, 15)))
  params = _random_params(model, tokens)
  np.testing.assert_allclose(cached_logits(model, params, tokens, 6),
                             model.apply({"params": params}, tokens),
                             atol=1e-5)


def test_every_mesh_gives_the_single_device_outputs_and_losses():
  ids = np.random.default_rng(0).integers(0, 11, (8, 12))
  sharded, single = sharded_and_single(_model(), ids)
  np.testing.assert_allclose(sharded, single, atol=2e-5)
  config = config_loader.load(EXPERIMENT, {
      "model.num_layers": 1, "model.emb_dim": 32, "model.num_heads": 2,
      "model.mlp_dim": 64, "model.segment_len": 8, "model.mem_len": 8,
      "input.seq_len": 24, "input.batch_size": 8})
  single, _, _ = run_steps(config, jax.devices()[:1])
  config.mesh.update(data=2, fsdp=2, tensor=2)
  sharded, _, _ = run_steps(config)
  np.testing.assert_allclose(sharded, single, rtol=2e-5)


@pytest.mark.parametrize("variant, symbols, published", [
    ("char-nano", 65, 0.80e6), ("enwik8-12L", 204, 41e6),
    ("enwik8-24L", 204, 277e6)])
def test_variants_have_the_published_parameter_counts(variant, symbols,
                                                      published):
  model = transformer_xl.make(transformer_xl.model_config(
      variant, vocab_size=symbols))
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 8), jnp.int32))
  count = sum(x.size for x in jax.tree.leaves(nn.unbox(shapes)["params"]))
  assert abs(count - published) < 0.01 * published, count


@pytest.mark.slow
def test_the_planner_plans_the_largest_variant():
  config = config_loader.load(EXPERIMENT, {"input.batch_size": 8})
  config.model = transformer_xl.model_config(
      "enwik8-24L", vocab_size=204, scan_layers=True, remat="full")
  config.input.seq_len = 2 * config.model.segment_len
  result = plan.plan(config)
  assert abs(result["parameters"] - 277e6) < 0.01 * 277e6


@pytest.mark.slow
def test_a_trained_run_goes_through_every_command(servable, tmp_path, capsys):
  check_every_command(servable("transformer_xl"), tmp_path, capsys,
                      split="validation", prompt="ROMEO:", sample=OK,
                      export_hf="has no Hugging Face export",
                      explain="cannot logit lens")


@pytest.mark.slow
def test_completions_keep_the_memory_token_after_token(servable, tmp_path):
  """40 tokens past a 6-token prompt cross five 8-token segments."""
  check_greedy_completions(servable, tmp_path, "transformer_xl", "ROMEO:", 40)
