"""GPT-2 and LLaMA checkpoints <-> our GPT: parity with transformers on tiny
random models, both directions, and training steps equal to nanoGPT's."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import transformers
from flax import linen as nn

from bigmodel_jax import config_blocks, decoding, optim, steps
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.models import gpt
from bigmodel_jax.state import TrainState
from bigmodel_jax.tasks import lm

# (transformers model, our config fields) of tiny random checkpoints.
CASES = {
    "gpt2": (lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=101)),
             dict(num_layers=2, num_heads=2, emb_dim=32, block_size=64,
                  vocab_size=101, use_bias=True)),
    "gpt2_exact_gelu": (  # nanoGPT's erf GELU is HF's "gelu".
        lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_layer=1, n_head=2, n_embd=32, n_positions=64, vocab_size=101,
            activation_function="gelu")),
        dict(num_layers=1, num_heads=2, emb_dim=32, block_size=64,
             vocab_size=101, use_bias=True, mlp="gelu_exact")),
    "llama_gqa_untied": (
        lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            hidden_size=32, intermediate_size=48, max_position_embeddings=64,
            vocab_size=101, rms_norm_eps=1e-5, rope_theta=500000.0)),
        dict(num_layers=2, num_heads=4, num_kv_heads=2, emb_dim=32, mlp_dim=48,
             block_size=64, vocab_size=101, position="rope", norm="rmsnorm",
             mlp="swiglu", tie_embeddings=False, rope_theta=500000.0)),
    "llama_tied_biases": (
        lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
            num_hidden_layers=1, num_attention_heads=2, hidden_size=32,
            intermediate_size=64, max_position_embeddings=64, vocab_size=101,
            rms_norm_eps=1e-5, tie_word_embeddings=True, attention_bias=True,
            mlp_bias=True)),
        dict(num_layers=1, num_heads=2, emb_dim=32, mlp_dim=64, block_size=64,
             vocab_size=101, position="rope", norm="rmsnorm", mlp="swiglu",
             tie_embeddings=True, use_bias=True)),
}


def _random(module: torch.nn.Module) -> torch.nn.Module:
  """`module` with every tensor random (biases too: none stays zero)."""
  torch.manual_seed(0)
  with torch.no_grad():
    for p in module.parameters():
      p.normal_(0, 0.1)
  return module.eval()


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("name", sorted(CASES))
def test_hugging_face_checkpoint_runs_identically_and_exports_back(
    name, scan, tmp_path):
  make_reference, fields = CASES[name]
  reference = _random(make_reference())
  reference.save_pretrained(tmp_path)
  config = gpt.model_config("nano", **fields, scan_layers=scan,
                            vocab_multiple=8)  # 101 -> 104 rows.
  variables = gpt.load_hf(str(tmp_path), config)
  model = gpt.make(config)
  ids = np.random.default_rng(0).integers(0, 101, (2, 12))
  ours = np.asarray(model.apply(variables, ids))[..., :101]
  with torch.no_grad():
    theirs = reference(input_ids=torch.tensor(ids)).logits.numpy()
  assert np.abs(ours - theirs).max() <= 1e-4
  # Greedy continuations: our KV-cache decoder and transformers' generate.
  new = decoding.generate(model, variables["params"], ids[:, :5], 10,
                          jax.random.key(0), context=model.config.block_size,
                          temperature=0)
  with torch.no_grad():
    expected = reference.generate(
        torch.tensor(ids[:, :5]), max_new_tokens=10, do_sample=False,
        attention_mask=torch.ones(2, 5, dtype=torch.long), pad_token_id=0)
  np.testing.assert_array_equal(new, expected[:, 5:].numpy())
  # Back: our export is the checkpoint, tensor for tensor.
  exported = gpt.export_hf(variables, config, None)
  state = reference.state_dict()
  assert set(exported.tensors) <= set(state)
  for key, value in exported.tensors.items():
    np.testing.assert_array_equal(value, state[key].numpy(), err_msg=key)


def test_gpt2_without_biases_is_gpt2_with_zero_biases(tmp_path):
  config = gpt.model_config("nano", num_layers=1, num_heads=2, emb_dim=32,
                            block_size=64, vocab_size=65, use_bias=False)
  model = gpt.make(config)
  ids = np.arange(24).reshape(2, 12)
  variables = nn.unbox(model.init(jax.random.key(0), ids))
  exported = gpt.export_hf(variables, config, None)
  assert not exported.tensors["transformer.h.0.attn.c_attn.bias"].any()
  reference = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      **{k: v for k, v in exported.config.items()
         if k not in ("architectures", "model_type", "dtype")})).eval()
  reference.load_state_dict({k: torch.from_numpy(v) for k, v in
                             exported.tensors.items()}, strict=False)
  with torch.no_grad():
    theirs = reference(input_ids=torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(model.apply(variables, ids), theirs, atol=1e-4)
  # A checkpoint with real biases needs use_bias=True.
  _random(reference).save_pretrained(tmp_path)
  with pytest.raises(ValueError, match="nonzero biases .*use_bias=True"):
    gpt.load_hf(str(tmp_path), config)


def test_a_gpt2_activation_that_differs_from_ours_is_refused_by_name(
    tmp_path):
  config = gpt.model_config("nano", num_layers=1, num_heads=2, emb_dim=32,
                            block_size=64, vocab_size=101, use_bias=True)
  for activation, message in [("gelu", r"'mlp': \('gelu', 'gelu_exact'\)"),
                              ("relu", "activation_function='relu'")]:
    transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=32, n_positions=64, vocab_size=101,
        activation_function=activation)).save_pretrained(tmp_path / activation)
    with pytest.raises(ConfigError, match=message):
      gpt.load_hf(str(tmp_path / activation), config)


def _nanogpt_lr(it: int, peak: float, floor: float, warmup: int, decay: int):
  """nanoGPT's train.py `get_lr`."""
  if it < warmup:
    return peak * (it + 1) / (warmup + 1)
  ratio = (it - warmup) / (decay - warmup)
  return floor + 0.5 * (1 + math.cos(math.pi * ratio)) * (peak - floor)


def test_training_steps_are_nanogpts_adamw_steps(tmp_path):
  """Same weights, same batches: our train step (GPT, lm task, optim.make)
  and torch's AdamW as nanoGPT configures it (decay on >= 2-D tensors only,
  clipping at 1.0, its warmup + cosine) keep equal losses and weights."""
  reference = _random(transformers.GPT2LMHeadModel(transformers.GPT2Config(
      n_layer=2, n_head=2, n_embd=32, n_positions=16, vocab_size=61,
      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)))
  reference.save_pretrained(tmp_path)
  total, warmup, peak, floor = 12, 3, 1e-2, 1e-3
  config = ml_collections.ConfigDict({
      "total_steps": total,
      "model": gpt.model_config("nano", num_layers=2, num_heads=2,
                                emb_dim=32, block_size=16, vocab_size=61,
                                use_bias=True),
      "optimizer": config_blocks.adamw(learning_rate=peak, warmup_steps=warmup,
                                       min_learning_rate=floor, b2=0.99)})
  params = jax.tree.map(jnp.asarray,
                        gpt.load_hf(str(tmp_path), config.model)["params"])
  tx = optim.make(config.optimizer, total)
  step = jax.jit(steps.make_train_step(
      lm.Task(config), gpt.make(config.model), tx,
      optim.schedule(config.optimizer, total)))
  state = TrainState(step=jnp.int32(0), params=params, model_state={},
                     opt_state=tx.init(params))
  torch_tx = torch.optim.AdamW(
      [{"params": [p for p in reference.parameters() if p.dim() >= 2]},
       {"params": [p for p in reference.parameters() if p.dim() < 2],
        "weight_decay": 0.0}], lr=peak, betas=(0.9, 0.99), weight_decay=0.1)
  rng = np.random.default_rng(0)
  for it in range(total):
    tokens = rng.integers(0, 61, (4, 17))
    for group in torch_tx.param_groups:
      group["lr"] = _nanogpt_lr(it, peak, floor, warmup, total)
    logits = reference(input_ids=torch.tensor(tokens[:, :-1])).logits
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, 61), torch.tensor(tokens[:, 1:]).reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
    torch_tx.step()
    torch_tx.zero_grad()
    state, metrics = step(state, {"inputs": tokens[:, :-1],
                                  "targets": tokens[:, 1:]}, jax.random.key(0))
    assert abs(float(metrics["train/loss"]) - loss.item()) < 1e-5, it
  # Adam turns float32 rounding in tiny gradients into ~1e-5 differences;
  # one step of another learning rate or decay moves weights by >= 1e-4.
  theirs = reference.state_dict()
  for key, value in gpt.export_hf({"params": state.params}, config.model,
                                  None).tensors.items():
    np.testing.assert_allclose(value, theirs[key].numpy(), atol=1e-4,
                               err_msg=key)
