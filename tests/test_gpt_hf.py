"""GPT-2 and LLaMA checkpoints <-> our GPT: parity with transformers on tiny
random models, both directions."""
import jax
import numpy as np
import pytest
import torch
import transformers
from flax import linen as nn

from bigmodel_jax import decoding
from bigmodel_jax.models import gpt

# (transformers model, our config fields) of tiny random checkpoints.
CASES = {
    "gpt2": (lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=101)),
             dict(num_layers=2, num_heads=2, emb_dim=32, block_size=64,
                  vocab_size=101, use_bias=True)),
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
                          jax.random.key(0), temperature=0)
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
