"""DeBERTa v2/v3: disentangled attention equal to transformers' DebertaV2*
on tiny random checkpoints, the enhanced mask decoder, sharding, planning,
and a trained classifier through every command and the API."""
import json
import os

import httpx
import jax
import numpy as np
import pytest
import torch
import transformers
from flax import linen as nn
from transformers.models.deberta_v2 import modeling_deberta_v2

from bigmodel_jax import config_loader, plan, runs
from bigmodel_jax.hf import deberta as deberta_hf
from bigmodel_jax.models import deberta
from bigmodel_jax.serving import process
from conftest import (OK, check_every_command, model_server,
                      sharded_and_single)

EXPERIMENTS = os.path.join(os.path.dirname(__file__), "..", "experiments")
TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=37, hidden_act="gelu",
            max_position_embeddings=40, relative_attention=True,
            pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm",
            share_att_key=True, position_buckets=8,
            max_relative_positions=32, position_biased_input=False,
            type_vocab_size=0)
# name -> (transformers class, its config, our head).
CHECKPOINTS = {
    "v3": ("DebertaV2Model", {}, "none"),
    "unshared_c2p_no_buckets": ("DebertaV2Model", dict(
        share_att_key=False, pos_att_type=["c2p"], position_buckets=-1,
        max_relative_positions=-1, norm_rel_ebd="none"), "none"),
    "v2_xlarge_settings": ("DebertaV2Model", dict(
        conv_kernel_size=3, conv_act="gelu", embedding_size=16,
        position_biased_input=True, type_vocab_size=2), "none"),
    "mlm": ("DebertaV2ForMaskedLM", {}, "mlm"),
    "mlm_original_names": ("DebertaV2ForMaskedLM", dict(legacy=False),
                           "mlm"),
    "classifier": ("DebertaV2ForSequenceClassification", dict(num_labels=3),
                   "classifier"),
}


def _save_random(name: str, directory) -> str:
  arch, settings, _ = CHECKPOINTS[name]
  torch.manual_seed(0)
  model = getattr(transformers, arch)(
      transformers.DebertaV2Config(**{**TINY, **settings})).eval()
  with torch.no_grad():  # Random LayerNorms and biases too.
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(str(directory))
  return str(directory)


def test_log_buckets_are_transformers():
  relative = np.arange(-700, 700)[None]
  for buckets, most in ((256, 512), (8, 32), (32, 64)):
    theirs = modeling_deberta_v2.make_log_bucket_position(
        torch.tensor(relative), buckets, most).numpy()
    np.testing.assert_array_equal(deberta.log_buckets(relative, buckets, most),
                                  theirs)


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_tiny_random_checkpoints_equal_transformers_and_export_back(
    name, tmp_path):
  directory = _save_random(name, tmp_path)
  arch, _, head = CHECKPOINTS[name]
  config, params = deberta.from_hf(
      directory, "v3-xsmall", head=head, dropout=0.0,
      num_classes=3 if head == "classifier" else None)
  model = deberta.make(config)
  ids = np.random.default_rng(0).integers(3, 99, (3, 21))
  ids[1, 14:], ids[2, 5:] = 0, 0  # Padding: beyond the exact buckets.
  reference = getattr(transformers, arch).from_pretrained(directory).eval()
  with torch.no_grad():
    out = reference(input_ids=torch.tensor(ids),
                    attention_mask=torch.tensor(ids != 0).long())
  theirs = out.last_hidden_state if head == "none" else out.logits
  np.testing.assert_allclose(model.apply({"params": params}, ids),
                             theirs.numpy(), atol=1e-4)  # Padding too.
  written = deberta_hf.read_tensors(directory)
  for key, value in deberta_hf.to_tensors(params, model.config).items():
    np.testing.assert_allclose(value, written[key], atol=1e-6, err_msg=key)


def _tiny(**overrides):
  return deberta.make(deberta.model_config(
      "v3-xsmall", **{"vocab_size": 64, "num_layers": 2, "emb_dim": 32,
                      "num_heads": 2, "mlp_dim": 64, "max_positions": 16,
                      "position_buckets": 8, "dropout": 0.0, "head": "mlm",
                      **overrides}))


def test_the_enhanced_mask_decoder_reads_absolute_positions():
  """Without it the model sees only relative positions (a shifted text is
  predicted the same); the decoder adds absolute ones, and its passes
  reuse the last layer (no new parameters besides the position table)."""
  ids = np.array([[5, 9, 7, 3, 11, 2, 0, 0], [0, 0, 5, 9, 7, 3, 11, 2]])
  valid = ids != 0
  for steps in (0, 2):
    model = _tiny(emd_steps=steps)
    params = nn.unbox(model.init(jax.random.key(0), ids))["params"]
    logits = np.asarray(model.apply({"params": params}, ids))
    same = np.abs(logits[0][valid[0]] - logits[1][valid[1]]).max()
    assert (same < 1e-4) == (steps == 0), (steps, same)
  assert set(params) - set(nn.unbox(_tiny().init(jax.random.key(0), ids))[
      "params"]) == {"position_embeddings"}


def test_sharded_encoder_equals_single_device():
  ids = np.random.default_rng(0).integers(1, 64, (4, 12))
  ids[1, 9:] = 0
  sharded, single = sharded_and_single(_tiny(emd_steps=1), ids)
  np.testing.assert_allclose(sharded, single, atol=2e-5)


@pytest.mark.slow
def test_the_planner_plans_the_largest_variant():
  config = config_loader.load(os.path.join(EXPERIMENTS, "deberta_rt.py:cpu"),
                              {"input.batch_size": 8})
  config.model = deberta.model_config("v2-xxlarge", vocab_size=128100,
                                      head="classifier", num_classes=2)
  result = plan.plan(config)
  with torch.device("meta"):  # transformers' count, nothing allocated.
    theirs = transformers.DebertaV2ForSequenceClassification(
        transformers.DebertaV2Config(
            vocab_size=128100, hidden_size=1536, num_hidden_layers=48,
            num_attention_heads=24, intermediate_size=6144,
            relative_attention=True, position_buckets=256,
            pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm",
            share_att_key=True, position_biased_input=False,
            type_vocab_size=0, conv_kernel_size=3, conv_act="gelu",
            num_labels=2))
  assert result["parameters"] == sum(p.numel() for p in theirs.parameters())
  assert 1.5e9 < result["parameters"] < 1.6e9  # Published: 1.5B.


@pytest.mark.slow
def test_a_trained_classifier_goes_through_every_command_and_the_api(
    servable, tmp_path, capsys):
  workdir = servable("deberta")
  check_every_command(workdir, tmp_path, capsys, split="test",
                      prompt="a gripping film", sample="cannot generate",
                      export_hf=OK, explain=OK)
  run = runs.load(workdir)
  texts = ["a gripping, funny film", "dull and far too long"]
  ids = run.tokenizer.encode_batch(texts, run.config.input.seq_len)
  probabilities = jax.nn.softmax(run.model.apply(run.variables, ids))
  with model_server(servable, tmp_path, ["deberta"], []) as server:
    key = process.create_key(server.db, "tests")
    answer = httpx.post(server.url + "/v1/classify", json={
        "model": "deberta", "input": texts}, timeout=60,
                        headers={"Authorization": f"Bearer {key}"}).json()
  with open(os.path.join(workdir, "class_names.json")) as f:
    names = json.load(f)
  got = [[d["probabilities"][name] for name in names]
         for d in answer["data"]]
  np.testing.assert_allclose(got, probabilities, atol=1e-5)
