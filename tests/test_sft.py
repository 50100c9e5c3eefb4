"""Supervised fine-tuning: conversations packed with response-only loss, a
chat template stored with the run, LoRA adapters for GPT."""
import json
import os

import jax
import numpy as np
import pytest
from flax import linen as nn

from bigmodel_jax import config_loader, families, runs, sample, train
from bigmodel_jax.data import sft
from bigmodel_jax.dataio import chat
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.models import gpt

EXPERIMENT = os.path.join(os.path.dirname(__file__), "..", "experiments",
                          "gpt_text.py")
TINY = {"model.num_layers": 1, "model.emb_dim": 32, "model.num_heads": 2,
        "input.vocab_size": 400, "input.batch_size": 8}


def _config(variant="sft", **overrides):
  return config_loader.load(f"{EXPERIMENT}:{variant}", {**TINY, **overrides})


def _replies(split: str) -> list[str]:
  path = os.path.join(os.path.dirname(__file__), "data",
                      f"support_{split}.jsonl")
  with open(path) as f:
    return [chat.messages_of(json.loads(line), path)[-1]["content"]
            for line in f]


def test_packed_rows_train_on_whole_replies_only():
  data = sft.Input(_config().input, seed=0, process_index=0, process_count=1)
  eos = data.tokenizer.eos_id
  batch = data.train_batch(0)
  replies = set(_replies("train"))
  for r in range(len(batch["inputs"])):
    segments = batch["segments"][r]
    for s in set(segments[segments > 0].tolist()):
      at = segments == s
      # Each conversation starts at position 0 with the end token ...
      assert batch["inputs"][r][at][0] == eos
      np.testing.assert_array_equal(batch["positions"][r][at],
                                    np.arange(at.sum()))
      # ... and its weighted targets are exactly one reply and the end token.
      trained = batch["targets"][r][at & (batch["weights"][r] > 0)]
      assert trained[-1] == eos
      assert data.tokenizer.decode(trained[:-1]) in replies
    assert not batch["weights"][r][segments == 0].any()  # Padding.
  # Evaluation covers every validation conversation once.
  seen = sum(len(set(b["segments"][r][b["weights"][r] > 0].tolist()))
             for b in data.eval_batches() for r in range(len(b["inputs"])))
  assert seen == len(_replies("validation")) == 20
  np.testing.assert_array_equal(data.train_batch(3)["inputs"],
                                sft.Input(_config().input, seed=0,
                                          process_index=0, process_count=1
                                          ).train_batch(3)["inputs"])


def test_chat_template_renders_prompts_as_training_did():
  data = sft.Input(_config().input, seed=0, process_index=0, process_count=1)
  template, tokenizer = data.template, data.tokenizer
  messages = [{"role": "user", "content": "Where is my order #1?"},
              {"role": "assistant", "content": "On its way."}]
  ids, trained = template.encode(tokenizer, messages)
  prompt = template.prompt_ids(tokenizer, messages[:1])
  np.testing.assert_array_equal(ids[:len(prompt)], prompt)  # A prefix.
  assert not trained[:len(prompt)].any() and trained[len(prompt):].all()
  assert tokenizer.decode(ids[len(prompt):-1]) == "On its way."
  for bad in ({"prompt": "only a prompt"},
              {"messages": [{"role": "user", "content": "no reply"}]}):
    with pytest.raises(ConfigError, match="x.jsonl:3"):
      chat.messages_of(bad, "x.jsonl:3")
  with pytest.raises(ConfigError, match="Role 'tool'"):
    template.pieces([{"role": "tool", "content": "x"}])


def test_lora_gpt_starts_equal_to_its_base_and_merges_exactly():
  config = gpt.model_config("nano", num_layers=2, emb_dim=32, num_heads=2,
                            vocab_size=50, block_size=16)
  base = gpt.make(config)
  config.lora_rank, config.lora_targets = 4, "query,value,fc,proj"
  adapted = gpt.make(config)
  tokens = np.arange(24).reshape(2, 12) % 50
  base_params = nn.unbox(base.init(jax.random.key(0), tokens))["params"]
  full = _with_adapters(  # Base weights, fresh adapters ...
      base_params, nn.unbox(adapted.init(jax.random.key(1), tokens))["params"])
  np.testing.assert_allclose(  # ... start out as the base model.
      adapted.apply({"params": full}, tokens),
      base.apply({"params": base_params}, tokens), atol=1e-6)
  trained = jax.tree_util.tree_map_with_path(  # Adapters after training.
      lambda path, x: x + 0.1 if "lora_b" in jax.tree_util.keystr(path)
      else x, full)
  merged = families.merged(trained, adapted.config)
  np.testing.assert_allclose(base.apply({"params": merged}, tokens),
                             adapted.apply({"params": trained}, tokens),
                             atol=1e-5)
  with pytest.raises(ConfigError, match="lora_targets"):
    gpt.make(gpt.model_config("nano", vocab_size=50, lora_targets="qkv"))


def _with_adapters(params: dict, adapted: dict) -> dict:
  """`adapted` (with LoRA pairs) taking every non-adapter weight from
  `params`."""
  if not isinstance(adapted, dict):
    return params
  return {k: v if k.startswith("lora_") else _with_adapters(params[k], v)
          for k, v in adapted.items()}


@pytest.mark.slow
def test_sft_and_lora_fine_tune_a_base_run_and_chat(tmp_path, capsys):
  steps = {"total_steps": 4, "eval_every_steps": 4,
           "checkpoint_every_steps": 4, "optimizer.warmup_steps": 1}
  base = str(tmp_path / "base")
  train.train(_config(**steps), base)
  lora = str(tmp_path / "lora")
  train.train(_config(f"sft-lora:{base}", **steps), lora)
  before, after = runs.load(base), runs.load(lora)
  flat = dict(jax.tree_util.tree_leaves_with_path(after.params))
  for path, value in jax.tree_util.tree_leaves_with_path(before.params):
    np.testing.assert_array_equal(flat[path], value)  # The base is frozen.
  assert any("lora_b" in jax.tree_util.keystr(p) and np.any(v)
             for p, v in flat.items())  # The adapters learned.
  assert after.chat_template.roles == chat.DEFAULT
  sample.main(["--workdir", lora, "--prompt", "Can I cancel order #1?",
               "--max_new_tokens", "20", "--temperature", "0"])
  reply = capsys.readouterr().out
  assert "<|endoftext|>" not in reply and "### User" not in reply
