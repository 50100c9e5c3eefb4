"""Explaining runs: integrated gradients are complete, planted features
light up, attention and the logit lens read the model's own computation,
and runs that cannot be explained are refused by name."""
import json
import os
import pathlib

import numpy as np
import pytest

from bigmodel_jax import (attribution, config_loader, explain, runs,
                          train)
from conftest import PLANTED_BERT, planted_csv

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


def _completeness(found, tolerance):
  difference = found["logit"] - found["baseline_logit"]
  total = found["integrated_gradients"].reshape(len(difference), -1).sum(-1)
  np.testing.assert_allclose(total, difference, rtol=tolerance,
                             atol=tolerance * np.abs(difference).max())


@pytest.mark.parametrize("name", ["bert", "vit"])
def test_integrated_gradients_are_complete(servable, name):
  run = runs.load(servable(name))
  batch = explain.split_batch(run, run.config.input.eval_split, 4)
  found = attribution.integrated_gradients(
      run, batch, np.arange(4) % 2, run.parts.get("token_embeddings"),
      steps=128)
  _completeness(found, 0.02)
  assert np.abs(found["logit"] - found["baseline_logit"]).max() > 1e-3


def test_sown_attention_is_what_the_model_computes(servable):
  """Each layer's sown weights, applied to its values, give the output the
  fused attention gives: the explained model is the served one."""
  run = runs.load(servable("bert"))
  batch = explain.split_batch(run, "validation", 3)
  maps = attribution.sown(run, batch, "attention")
  assert len(maps) == run.config.model.num_layers
  assert maps[0].shape == (3, run.config.model.num_heads, 16, 16)
  np.testing.assert_allclose(maps[0].sum(-1), 1, rtol=1e-5)
  padded = batch["inputs"] == 0
  assert np.all(maps[0][np.broadcast_to(padded[:, None, None, :],
                                        maps[0].shape)] < 1e-6)
  plain = run.task.apply(run.model, run.variables, batch, train=False)
  sown_out, _ = run.task.apply(run.model, run.variables, batch, train=False,
                               mutable=["intermediates"])
  np.testing.assert_allclose(sown_out, plain, atol=1e-5)
  roll = attribution.rollout(maps, ~padded)
  np.testing.assert_allclose(roll.sum(-1), 1, rtol=1e-5)


def test_the_logit_lens_ends_at_the_models_logits(servable, tmp_path):
  run = runs.load(servable("char"))
  batch = explain.given_batch(run, ["ROMEO: But soft", "JULIET:"])
  lens = attribution.logit_lens(run, batch, run.parts["lens"])
  assert lens.shape[:3] == (run.config.model.num_layers, 2, 15)
  logits = run.task.apply(run.model, run.variables, batch, train=False)
  np.testing.assert_allclose(lens[-1], logits, atol=1e-4)
  assert not np.allclose(lens[0], lens[-1], atol=1e-3)
  explain.main(["--workdir", servable("char"), "--out", str(tmp_path / "o"),
                "--input", "ROMEO: But soft"])
  record = json.load(open(tmp_path / "o" / "attributions.json"))[
      "examples"][0]
  assert len(record["lens_top"]) == 2 and len(record["tokens"]) == 15
  assert (tmp_path / "o" / "lens_0.png").stat().st_size > 1000


def test_refusals_name_what_is_missing(servable, tmp_path, capsys):
  with pytest.raises(SystemExit):
    explain.main(["--workdir", servable("char"), "--out",
                  str(tmp_path / "a"), "--split", "validation"])
  assert "--split explains classifiers" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    explain.main(["--workdir", servable("vit"), "--out", str(tmp_path / "b"),
                  "--input", str(tmp_path / "missing.png")])
  assert "missing.png" in capsys.readouterr().err
  assert not (tmp_path / "b").exists()


# --- Planted features: the model must use them, and the maps must show it ---
@pytest.fixture(scope="module")
def planted_text(tmp_path_factory):
  """A tiny BERT trained where only the token "zzgood" or "zzbad"
  (anywhere in random filler; neither: "none") decides the label."""
  root = tmp_path_factory.mktemp("planted_text")
  planted_csv(root / "data.csv")
  config = config_loader.load(str(EXPERIMENTS / "bert_finetune.py"), {
      **PLANTED_BERT, "input.path": str(root / "data.csv")})
  workdir = str(root / "run")
  train.train(config, workdir)
  return workdir


def test_planted_tokens_light_up(planted_text, tmp_path):
  out = tmp_path / "expl"
  explain.main(["--workdir", planted_text, "--out", str(out), "--split",
                "test", "--examples", "30"])
  records = json.load(open(out / "attributions.json"))["examples"]
  assert np.mean([r["predicted"] == r["target"] for r in records]) == 1
  records = [r for r in records if r["target"] != "none"]
  # Integrated gradients explain logit - baseline logit. Where the blank
  # baseline already scores the class (a tiny model may read blank text as
  # "pos"), there is nothing to attribute; everywhere else the planted
  # token must take the largest attribution.
  moved = [r for r in records if r["logit"] - r["baseline_logit"] > 1]
  assert len(moved) >= 8, [r["logit"] - r["baseline_logit"] for r in records]
  top = [r["tokens"][int(np.argmax(r["integrated_gradients"]))]
         for r in moved]
  assert np.mean([t in ("zzgood", "zzbad") for t in top]) >= 0.9, top
  assert all(r["integrated_gradients"][0] == 0 == r[
      "integrated_gradients"][-1] for r in records)  # [CLS] and [SEP].
  assert all(len(r["gradient_x_input"]) == len(r["tokens"]) for r in records)
  page = (out / "index.html").read_text()
  assert page.count("<h2>Example") == 30 and "zzgood</span>" in page
  assert (out / "attention_0.png").stat().st_size > 1000
  for r in records:  # Completeness on a trained model.
    assert abs(r["ig_sum"] - (r["logit"] - r["baseline_logit"])) < 0.05 * (
        abs(r["logit"] - r["baseline_logit"]) + 1e-3)


@pytest.fixture(scope="module")
def planted_pixels(tmp_path_factory):
  """A tiny ViT on the digits relabelled by one planted feature: "1" when
  the two leftmost columns hold ink (69% of the images), else "0"."""
  from bigmodel_jax.data import sklearn_digits
  root = tmp_path_factory.mktemp("planted_pixels")
  overrides = {}
  for split in ("train", "test"):
    images, _ = sklearn_digits.split(split)
    for i, image in enumerate(images):
      overrides[f"{split}:{i}"] = "1" if image[:, :2].max() > 60 else "0"
  (root / "labels.json").write_text(json.dumps(overrides))
  config = config_loader.load(str(EXPERIMENTS / "vit_digits.py"), {
      "input.label_overrides": str(root / "labels.json"),
      "input.train_pp": "resize(16)|value_range(-1, 1)",
      "input.mixup_alpha": 0.0, "model.emb_dim": 32, "model.num_layers": 2,
      "model.num_heads": 2, "model.mlp_dim": 64, "model.dropout": 0.0,
      "input.batch_size": 64, "total_steps": 200, "log_every_steps": 100,
      "eval_every_steps": 200, "checkpoint_every_steps": 200,
      "optimizer.warmup_steps": 10, "optimizer.learning_rate": 5e-3,
      "model.pool": "token"})
  workdir = str(root / "run")
  train.train(config, workdir)
  return workdir


def test_planted_pixels_light_up(planted_pixels, tmp_path):
  run = runs.load(planted_pixels)
  batch = explain.split_batch(run, "test", 64)
  corner = batch["targets"] == 1
  assert 10 <= corner.sum() <= 54
  found = attribution.integrated_gradients(run, batch, batch["targets"])
  share = np.abs(found["integrated_gradients"])
  share = share[:, :, :4].sum((1, 2)) / share.sum((1, 2))
  assert np.median(share[corner]) > 0.5  # The columns are 25% of it.
  out = tmp_path / "expl"
  explain.main(["--workdir", planted_pixels, "--out", str(out), "--split",
                "test", "--examples", "3"])
  assert {f"example_{i}.png" for i in range(3)} <= set(os.listdir(out))
