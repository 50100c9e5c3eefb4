"""T5 v1.0 and v1.1: equal to transformers' T5ForConditionalGeneration on
tiny random checkpoints (logits, greedy and beam search), exported back,
decoded with its cache, sharded, sized as published, planned; its
span-corruption and text-to-text inputs; a trained run through every
command and the API."""
import json
import os
import re

import httpx
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
import torch
import transformers
from flax import linen as nn
from safetensors.numpy import save_file
from transformers.models.t5 import modeling_t5

from bigmodel_jax import (config_loader, decoding, evaluate, plan, runs,
                          sharding)
from bigmodel_jax.data import span_corruption, text_to_text
from bigmodel_jax.dataio import sentinels
from bigmodel_jax.hf import t5 as t5_hf
from bigmodel_jax.models import t5
from bigmodel_jax.serving import process
from conftest import OK, cached_logits, check_every_command, model_server

EXPERIMENTS = os.path.join(os.path.dirname(__file__), "..", "experiments")
TINY = dict(vocab_size=60, d_model=32, d_kv=8, d_ff=48, num_layers=2,
            num_heads=4, relative_attention_num_buckets=8,
            relative_attention_max_distance=20, dropout_rate=0.0,
            decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
# name -> the T5Config fields beside TINY.
CHECKPOINTS = {
    "v1_0": dict(feed_forward_proj="relu", num_decoder_layers=3),
    "v1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                 num_decoder_layers=3),
}


def _save_random(settings: dict, directory, untie: bool = False,
                 peaked: bool = False) -> str:
  """A random T5 checkpoint (random norms); `untie`: with an lm_head of its
  own; `peaked`: a confident decoder that often ends, so beams differ."""
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(
      transformers.T5Config(**{**TINY, **settings})).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name and not peaked:
        p.add_(0.3 * torch.randn_like(p))
      if peaked and name.startswith("decoder") and name.endswith(
          ("wo.weight", ".o.weight")):
        p.mul_(30.0)
    if peaked:
      model.shared.weight.mul_(3.0)
      model.shared.weight[1] = (0.9 * model.shared.weight[48] +
                                0.5 * model.shared.weight[11])
  model.save_pretrained(str(directory))
  if untie:  # As Google's v1.1 checkpoints are.
    tensors = t5_hf.hf_layout.read_tensors(str(directory))
    tensors["lm_head.weight"] = np.random.default_rng(1).normal(
        size=tensors["shared.weight"].shape).astype(np.float32)
    save_file(tensors, str(directory / "model.safetensors"),
              metadata={"format": "pt"})
  return str(directory)


def _ours(directory: str, source_len: int = 12, target_len: int = 16):
  with open(os.path.join(directory, "config.json")) as f:
    fields = t5_hf.config_fields(json.load(f))
  config = t5.model_config("tiny", **fields, source_len=source_len,
                           target_len=target_len)
  return t5.make(config), t5.load_hf(directory, config)


def _sources(rows: int = 4, length: int = 12) -> np.ndarray:
  ids = np.random.default_rng(0).integers(2, 60, (rows, length))
  ids[0, 8:], ids[2, 5:] = 0, 0
  return ids


def test_relative_buckets_are_transformers():
  relative = torch.arange(-300, 300)[None]
  for bidirectional in (True, False):
    for buckets, most in ((32, 128), (8, 20)):
      theirs = modeling_t5.T5Attention._relative_position_bucket(
          relative, bidirectional, buckets, most).numpy()
      np.testing.assert_array_equal(t5.relative_buckets(
          relative.numpy(), bidirectional, buckets, most), theirs)


@pytest.mark.parametrize("name,untie", [("v1_0", False), ("v1_1", False),
                                        ("v1_1", True)])
def test_tiny_random_checkpoints_equal_transformers_and_export_back(
    name, untie, tmp_path):
  directory = _save_random(CHECKPOINTS[name], tmp_path / "in", untie)
  model, variables = _ours(directory)
  sources = _sources()
  targets = np.random.default_rng(1).integers(2, 60, (4, 9))
  targets[1, 6:] = 0
  decoder = np.concatenate([np.zeros((4, 1), int), targets[:, :-1]], 1)
  reference = transformers.T5ForConditionalGeneration.from_pretrained(
      directory).eval()
  with torch.no_grad():
    theirs = reference(input_ids=torch.tensor(sources),
                       attention_mask=torch.tensor(sources != 0).long(),
                       labels=torch.tensor(targets)).logits.numpy()
  np.testing.assert_allclose(model.apply(variables, decoder, sources), theirs,
                             atol=1e-4)
  out = t5_hf.export(variables["params"], model.config)
  assert out.config["tie_word_embeddings"] == model.config.tie_embeddings
  back = tmp_path / "out"
  back.mkdir()
  (back / "config.json").write_text(json.dumps(out.config))
  save_file(out.tensors, str(back / "model.safetensors"),
            metadata={"format": "pt"})
  batch = {"inputs": sources, "targets": targets}
  np.testing.assert_allclose(out.reference(str(back), batch)["logits"],
                             theirs, atol=1e-5)


def test_greedy_and_beam_search_equal_transformers_generate(tmp_path):
  directory = _save_random({"feed_forward_proj": "relu"}, tmp_path,
                           peaked=True)
  model, variables = _ours(directory)
  reference = transformers.T5ForConditionalGeneration.from_pretrained(
      directory).eval()
  sources = _sources()
  ended = 0
  for beams, penalty in ((1, 1.0), (3, 1.0), (4, 0.6), (3, 2.0)):
    ids, scores = decoding.beam_search(
        model, variables["params"], np.zeros((4, 1), np.int32), 10,
        beams=beams, context=16, eos_id=1, length_penalty=penalty,
        inputs={"sources": sources})
    with torch.no_grad():
      out = reference.generate(
          input_ids=torch.tensor(sources), num_beams=beams, do_sample=False,
          attention_mask=torch.tensor(sources != 0).long(),
          max_new_tokens=10, length_penalty=penalty, output_scores=True,
          return_dict_in_generate=True)
    for ours, theirs in zip(ids, out.sequences.numpy()[:, 1:]):
      ends = np.flatnonzero(theirs == 1)
      n = ends[0] + 1 if len(ends) else len(theirs)
      ended += len(ends) > 0
      np.testing.assert_array_equal(ours[:n], theirs[:n])
    if beams > 1:
      np.testing.assert_allclose(scores, out.sequences_scores.numpy(),
                                 atol=1e-4)
  assert ended >= 4  # End-of-text cases are covered.


def test_decoding_with_the_cache_equals_the_full_forward():
  model = t5.make(t5.model_config("tiny", vocab_size=50, source_len=12,
                                  target_len=10, num_decoder_layers=3))
  sources = _sources() % 50
  tokens = np.random.default_rng(2).integers(2, 50, (4, 10))
  tokens[:, 0] = 0
  params = nn.unbox(model.init(jax.random.key(0), tokens, sources))["params"]
  full = model.apply({"params": params}, tokens, sources)

  class WithSources(nn.Module):  # The prefill call brings the sources.
    @nn.compact
    def __call__(self, x, decode=False):
      return t5.Model(model.config, name="m")(
          x, sources if x.shape[1] > 1 else None, decode=decode)
  wrapped = WithSources()
  np.testing.assert_allclose(cached_logits(wrapped, {"m": params}, tokens, 3),
                             full, atol=2e-5)


def test_sharded_model_equals_single_device():
  model = t5.make(t5.model_config("tiny", vocab_size=64, emb_dim=32,
                                  num_heads=2, mlp_dim=64))
  sources, tokens = _sources() % 64, np.random.default_rng(3).integers(
      0, 64, (4, 8))
  params = nn.unbox(model.init(jax.random.key(0), tokens, sources))["params"]
  layout = sharding.Layout(sharding.make_mesh(
      {"data": 2, "fsdp": 2, "tensor": 2}))
  shardings = layout.tree_shardings(jax.eval_shape(
      model.init, jax.random.key(0), tokens, sources))["params"]
  apply = layout.in_context(jax.jit(
      lambda p, x, s: model.apply({"params": p}, x, s)))
  np.testing.assert_allclose(
      apply(jax.device_put(params, shardings), tokens, sources),
      model.apply({"params": params}, tokens, sources), atol=2e-5)
  assert {s.spec for s in jax.tree.leaves(shardings)} != {
      jax.sharding.PartitionSpec()}


# Published sizes (millions): Raffel et al. 2020 and Google's v1.1 cards.
PUBLISHED = {"small": 60.5, "base": 222.9, "large": 737.7, "3B": 2851.6,
             "11B": 11307.3, "v1_1-small": 77.0, "v1_1-base": 247.6,
             "v1_1-large": 783.2, "v1_1-xl": 2849.8, "v1_1-xxl": 11135.3}


@pytest.mark.parametrize("variant", sorted(PUBLISHED))
def test_variants_have_the_published_parameter_counts(variant):
  cfg = t5.make(t5.model_config(variant, vocab_size=32128)).config
  ours = sum(int(np.prod(s)) for s in jax.tree.leaves(
      t5.param_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple)))
  with torch.device("meta"):  # transformers' count, nothing allocated.
    theirs = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=32128, d_model=cfg.emb_dim, d_kv=cfg.head_dim,
        d_ff=cfg.mlp_dim, num_layers=cfg.num_layers,
        num_heads=cfg.num_heads, tie_word_embeddings=cfg.tie_embeddings,
        feed_forward_proj="relu" if cfg.mlp == "relu" else "gated-gelu"))
    counted = sum(p.numel() for p in theirs.parameters())
  untied = 0 if cfg.tie_embeddings else 32128 * cfg.emb_dim
  assert ours == counted + untied  # transformers ties the head anyway.
  assert abs(ours / 1e6 / PUBLISHED[variant] - 1) < 0.01


@pytest.mark.slow
def test_the_planner_plans_the_largest_variants():
  config = config_loader.load(os.path.join(EXPERIMENTS, "t5.py:rt"))
  for variant, published in (("11B", 11307.3), ("v1_1-xxl", 11135.3)):
    config.model = t5.model_config(variant, vocab_size=32128, source_len=512,
                                   target_len=128, scan_layers=True)
    result = plan.plan(config)
    assert abs(result["parameters"] / 1e6 / published - 1) < 0.01


def _vocab(texts, **kw):
  return sentinels.Sentinels.train(texts, vocab_size=kw.pop("size", 300),
                                   **kw)


def test_span_corruption_drops_spans_a_sentinel_each_and_loses_nothing():
  lengths, densities = [], []
  for seed in range(200):
    tokens = np.arange(100, 200)
    inputs, targets = span_corruption.corrupt(
        tokens, np.random.default_rng(seed), density=0.15, mean_span=3.0,
        sentinel=lambda k: 1000 + k, eos_id=1)
    assert inputs.pop() == targets.pop() == 1
    # Filling each sentinel's span back in gives the text again.
    spans, k, rebuilt = {}, None, []
    for t in targets:
      k = t - 1000 if t >= 1000 else k
      if t < 1000:
        spans.setdefault(k, []).append(t)
    for t in inputs:
      rebuilt += spans.get(t - 1000, []) if t >= 1000 else [t]
    np.testing.assert_array_equal(rebuilt, tokens)
    assert [t - 1000 for t in inputs if t >= 1000] == list(range(len(spans)))
    lengths += [len(s) for s in spans.values()]
    densities.append(sum(map(len, spans.values())) / len(tokens))
  assert abs(np.mean(densities) - 0.15) < 0.01
  assert abs(np.mean(lengths) - 3.0) < 0.3


def _pairs_files(tmp_path, rows=10) -> dict:
  files = {}
  for split in ("train", "validation"):
    path = tmp_path / f"{split}.jsonl"
    path.write_text("\n".join(json.dumps({
        "input": f"translate: the {i} cats", "target": f"les {i} chats"})
        for i in range(rows)))
    files[split] = str(path)
  return files


def _text_to_text(**fields):
  config = config_loader.load(os.path.join(EXPERIMENTS, "t5.py:rt")).input
  config.labelled = None
  config.update(dict(vocab_size=120, sentinels=0, batch_size=4, source_len=24,
                     target_len=12, prefix=None))
  for key, value in fields.items():
    config[key] = value
  return text_to_text.Input(config, seed=0, process_index=0, process_count=1)


def test_text_to_text_pairs_from_jsonl_files(tmp_path):
  data = _text_to_text(files=_pairs_files(tmp_path))
  batch = next(data.eval_batches("validation"))
  assert [data.tokenizer.decode(r) for r in batch["inputs"][:2]] == [
      "translate: the 0 cats", "translate: the 1 cats"]
  assert data.tokenizer.decode(batch["targets"][1]) == "les 1 chats"
  assert (batch["targets"] == data.tokenizer.eos_id).sum(1).tolist() == [1] * 4
  np.testing.assert_array_equal(data.train_batch(3)["inputs"],
                                data.train_batch(3)["inputs"])
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"input": "a"}\n')
  with pytest.raises(Exception, match=r"bad.jsonl:1 needs string fields"):
    _text_to_text(files={"train": str(bad), "validation": str(bad)})


class ToyTranslations(tfds.core.GeneratorBasedBuilder):
  """A translation set for `tfds.testing.mock_data` (its features only)."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.
                                 FeaturesDict({"en": tfds.features.Text(),
                                               "fr": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(),
            "validation": self._generate_examples()}

  def _generate_examples(self):
    yield from ()


def test_text_to_text_pairs_from_tfds_by_name():
  with tfds.testing.mock_data(num_examples=6):
    data = _text_to_text(dataset="toy_translations", input_key="en",
                         target_key="fr", prefix="translate: ")
    assert data.train_batch(0)["inputs"].shape == (4, 24)
    assert sum(1 for _ in data.eval_batches("validation")) == 2
    assert data.tokenizer.decode(next(data.eval_batches())["inputs"][0]
                                 ).startswith("translate:")
    with pytest.raises(Exception, match="has no feature"):
      _text_to_text(dataset="toy_translations", input_key="de",
                    target_key="fr")


@pytest.mark.slow
def test_a_trained_run_goes_through_every_command_and_the_api(
    servable, tmp_path, capsys):
  workdir = servable("t5")
  check_every_command(workdir, tmp_path, capsys, split="validation",
                      prompt="sentiment: a gripping film", sample=OK,
                      export_hf=OK, explain="cannot logit lens")
  evaluate.main(["--workdir", workdir, "--split", "validation", "--eval",
                 "generated"])
  printed = capsys.readouterr().out
  assert re.search(r"generated/bleu [0-9.]+ \| generated/rouge1 [0-9.]+",
                   printed), printed
  run = runs.load(workdir)
  text = "sentiment: dull and far too long"
  ids, _ = decoding.beam_search(
      run.model, run.params, [[run.tokenizer.pad_id]], 3, beams=1,
      context=run.parts["decode"], eos_id=run.tokenizer.eos_id,
      inputs={"sources": run.tokenizer.encode_batch(
          [text], run.parts["source_prompt"])})
  greedy = run.tokenizer.decode(ids[0])
  with model_server(servable, tmp_path, ["t5"], []) as server:
    key = {"Authorization": f"Bearer {process.create_key(server.db, 't')}"}
    done = httpx.post(server.url + "/v1/completions", headers=key, json={
        "model": "t5", "prompt": text, "max_tokens": 3, "temperature": 0},
                      timeout=60).json()
    chat = httpx.post(server.url + "/v1/chat/completions", headers=key, json={
        "model": "t5", "temperature": 0, "max_tokens": 3, "messages": [
            {"role": "user", "content": text}]}, timeout=60).json()
    long = httpx.post(server.url + "/v1/completions", headers=key, json={
        "model": "t5", "prompt": "word " * 200}, timeout=60)
  assert done["choices"][0]["text"] == greedy
  assert chat["choices"][0]["message"]["content"] == greedy
  count = len(run.tokenizer.encode(text))
  assert done["usage"]["prompt_tokens"] == count
  assert long.status_code == 400 and "reads at most" in long.text
