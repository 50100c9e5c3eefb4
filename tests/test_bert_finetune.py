"""BERT fine-tuning: labelled-text splits, trainable subsets, LoRA, HF init."""
import json
import os
import pathlib
import re

import jax
import numpy as np
import pytest
from flax import traverse_util

from bigmodel_jax import config_loader, experiment, families, train
from bigmodel_jax.data import text_classification
from bigmodel_jax.hf import bert as bert_hf
from bigmodel_jax.models import bert

EXPERIMENT = str(pathlib.Path(__file__).resolve().parents[1] / "experiments" /
                 "bert_finetune.py")
RT_POLARITY = (pathlib.Path(os.environ["TFDS_DATA_DIR"]).parent / "data" /
               "rt-polarity")
# A small encoder of MiniLM's vocabulary, trained from scratch.
SMALL = {"init_from.hf_dir": None, "model.num_layers": 2, "model.emb_dim": 32,
         "model.num_heads": 2, "model.mlp_dim": 64, "model.max_positions": 16,
         "model.dropout": 0.0, "input.seq_len": 16, "input.batch_size": 8,
         "optimizer.warmup_steps": 1}


def _config(variant: str, **overrides):
  return config_loader.load(f"{EXPERIMENT}:{variant}", overrides)


def _flat(tree) -> dict:
  return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def test_class_folder_and_csv_tables_read_the_same_examples(tmp_path):
  folder = tmp_path / "reviews"
  folder.mkdir()
  (folder / "reviews.pos").write_text("great film\n\nloved it\n")
  (folder / "reviews.neg").write_text("dull, slow\n")
  from_folder = text_classification.read(str(folder))
  assert from_folder.class_names == ["neg", "pos"]  # The differing suffix.
  assert from_folder.texts == ["dull, slow", "great film", "loved it"]
  assert from_folder.labels.tolist() == [0, 1, 1]
  assert from_folder[1] == {"text": "great film", "label": 1}
  (tmp_path / "reviews.csv").write_text(
      'review,sentiment\n"dull, slow",neg\ngreat film,pos\nloved it,pos\n')
  (tmp_path / "reviews.tsv").write_text(
      "review\tsentiment\ndull, slow\tneg\ngreat film\tpos\nloved it\tpos\n")
  for table in ("reviews.csv", "reviews.tsv"):
    got = text_classification.read(str(tmp_path / table), text_column="review",
                                   label_column="sentiment")
    assert (got.texts, got.labels.tolist(), got.class_names) == (
        from_folder.texts, [0, 1, 1], ["neg", "pos"])
  with pytest.raises(ValueError, match=r"no column\(s\) \['label'\]"):
    text_classification.read(str(tmp_path / "reviews.csv"),
                             text_column="review")
  (tmp_path / "latin.csv").write_bytes(b"text,label\ncaf\xe9,1\nbad,0\n")
  with pytest.raises(ValueError, match="input.encoding"):
    text_classification.read(str(tmp_path / "latin.csv"))
  assert text_classification.read(str(tmp_path / "latin.csv"),
                                  encoding="latin-1").texts[0] == "café"
  with pytest.raises(FileNotFoundError, match="input.path"):
    text_classification.read(str(tmp_path / "missing"))


@pytest.fixture(scope="module")
def rt_labels():
  data = text_classification.read(str(RT_POLARITY))
  assert len(data) == 10662 and data.class_names == ["neg", "pos"]
  return data.labels


def test_splits_are_reproducible_stratified_and_disjoint(rt_labels):
  args = dict(test_fraction=0.1, validation_fraction=0.1)
  parts = text_classification.split_indices(rt_labels, seed=0, **args)
  again = text_classification.split_indices(rt_labels, seed=0, **args)
  other = text_classification.split_indices(rt_labels, seed=1, **args)
  for name in parts:
    np.testing.assert_array_equal(parts[name], again[name])
  assert not np.array_equal(parts["test"], other["test"])
  assert {k: len(v) for k, v in parts.items()} == {
      "train": 8530, "validation": 1066, "test": 1066}
  np.testing.assert_array_equal(np.sort(np.concatenate(list(parts.values()))),
                                np.arange(len(rt_labels)))
  for name in parts:  # Half of each split is positive.
    assert rt_labels[parts[name]].mean() == pytest.approx(0.5, abs=1e-3)


def test_k_fold_validation_folds_partition_the_non_test_examples(rt_labels):
  folds = [text_classification.split_indices(
      rt_labels, seed=0, test_fraction=0.1, validation_fraction=0.0,
      num_folds=5, fold=k) for k in range(5)]
  test = folds[0]["test"]
  non_test = np.setdiff1d(np.arange(len(rt_labels)), test)
  validation = np.concatenate([f["validation"] for f in folds])
  np.testing.assert_array_equal(np.sort(validation), non_test)  # Once each.
  for f in folds:
    np.testing.assert_array_equal(f["test"], test)
    np.testing.assert_array_equal(
        np.sort(np.concatenate([f["train"], f["validation"]])), non_test)
    assert 1918 <= len(f["validation"]) <= 1920
  with pytest.raises(ValueError, match="input.fold=5"):
    text_classification.split_indices(rt_labels, seed=0, test_fraction=0.1,
                                      validation_fraction=0, num_folds=5,
                                      fold=5)


def test_input_batches_cover_eval_splits_once_and_split_over_processes():
  config = _config("full", **{"input.seq_len": 16, "input.batch_size": 64})
  whole = text_classification.Input(config.input, seed=0, process_index=0,
                                    process_count=1)
  assert whole.model_fields() == {"num_classes": 2, "vocab_size": 30522}
  batch = whole.train_batch(3)
  assert batch["inputs"].shape == (64, 16) and batch["targets"].shape == (64,)
  assert (batch["inputs"][:, 0] == 101).all()  # [CLS]
  halves = [text_classification.Input(config.input, seed=0, process_index=i,
                                      process_count=2) for i in (0, 1)]
  np.testing.assert_array_equal(
      np.concatenate([h.train_batch(3)["inputs"] for h in halves]),
      batch["inputs"])
  for split in ("validation", "test"):
    weights = sum(b["weights"].sum() for h in halves
                  for b in h.eval_batches(split))
    assert weights == 1066 and whole.num_eval_batches(split) == 17


@pytest.mark.parametrize("trainable,trained", [
    ("head", r"^(pooler|classifier)/"),
    ("top1", r"^(layer_1|pooler|classifier)/"),
    ("lora", r"lora_|^(pooler|classifier)/")])
def test_frozen_parameters_stay_put_and_have_no_optimizer_state(trainable,
                                                                trained):
  config = _config("full", **SMALL, **{"optimizer.trainable": trainable,
                                       "model.lora_rank": 4})
  exp = experiment.build(config)
  state = exp.factory.init(jax.random.key(0))
  before = _flat(state.params)
  for step in range(3):
    state, _ = exp.train_step(
        state, exp.global_batch(exp.data.train_batch(step)), jax.random.key(1))
  after = _flat(state.params)
  for name in before:
    moves = bool(re.search(trained, name))
    assert moves != np.array_equal(before[name], after[name]), name
  trainable_size = sum(v.size for k, v in before.items()
                       if re.search(trained, k))
  opt_size = sum(x.size for x in jax.tree.leaves(state.opt_state)
                 if x.ndim)
  assert opt_size == 2 * trainable_size  # Adam's mu and nu, trainable only.


def test_an_unknown_trainable_pattern_fails_clearly():
  config = _config("full", **SMALL, **{"optimizer.trainable": "decoder"})
  with pytest.raises(ValueError, match="matches no parameter; presets"):
    experiment.build(config)


@pytest.fixture(scope="module")
def minilm_classifiers():
  """MiniLM fine-tuning experiments, full and LoRA, initialised from HF."""
  out = {}
  for variant in ("full", "lora"):
    exp = experiment.build(_config(variant, **{"input.seq_len": 24,
                                               "input.batch_size": 8}))
    state, report = exp.load_pretrained(exp.factory.init(jax.random.key(0)),
                                        exp.config.init_from)
    out[variant] = exp, state, report
  return out


def test_hugging_face_weights_initialise_the_classifier(minilm_classifiers):
  exp, state, report = minilm_classifiers["full"]
  assert report.startswith("initialised 103 of 105 parameter tensors")
  assert report.endswith("new: classifier/bias, classifier/kernel")
  _, reference = bert.from_hf(exp.config.init_from.hf_dir)
  ours = _flat(state.params)
  for name, value in traverse_util.flatten_dict(reference, sep="/").items():
    np.testing.assert_array_equal(ours[name], value)
  wrong = exp.config.model.copy_and_resolve_references()
  wrong.emb_dim = 240  # 12 heads of 20.
  with pytest.raises(ValueError, match=r"emb_dim': \(240, 384\)"):
    bert.load_hf(exp.config.init_from.hf_dir, wrong)


def test_lora_starts_equal_to_the_base_model(minilm_classifiers):
  full_exp, full, _ = minilm_classifiers["full"]
  lora_exp, lora, report = minilm_classifiers["lora"]
  assert "layer_0/query/lora_a" in report  # New, the rest from HF.
  batch = full_exp.data.train_batch(0)["inputs"]
  np.testing.assert_allclose(
      lora_exp.model.apply(lora.variables, batch),
      full_exp.model.apply(full.variables, batch), atol=1e-6)


def test_fine_tuning_run_reports_test_metrics_and_resumes(tmp_path, capsys):
  """A head-only MiniLM run on 8 devices: val during training, test at the
  end; the checkpoint with partial optimizer state restores."""
  overrides = {"input.seq_len": 32, "input.batch_size": 16,
               "input.test_fraction": 0.03, "input.validation_fraction": 0.03,
               "optimizer.warmup_steps": 2, "total_steps": 30,
               "eval_every_steps": 30, "checkpoint_every_steps": 15,
               "log_every_steps": 15}
  workdir = str(tmp_path / "head")
  last = train.train(_config("head", **overrides), workdir)
  assert last["test/accuracy"] > 0.6  # Chance is 0.5; 0.69 seen.
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert any("test/confusion_matrix" in r for r in records)
  assert json.load(open(os.path.join(workdir, "class_names.json"))) == [
      "neg", "pos"]
  capsys.readouterr()
  train.train(_config("head", **{**overrides, "total_steps": 32}), workdir)
  assert "resumed at step 30" in capsys.readouterr().out


def test_lora_merged_into_the_kernels_computes_the_same(minilm_classifiers):
  full_exp, _, _ = minilm_classifiers["full"]
  lora_exp, lora, _ = minilm_classifiers["lora"]
  params = jax.device_get(lora.params)
  rng = np.random.default_rng(0)
  for name in ("query", "value"):  # As if trained: B away from zero.
    b = params["layer_3"][name]["lora_b"]
    params["layer_3"][name]["lora_b"] = rng.normal(0, 0.05, b.shape)
  cfg = lora_exp.model.config
  merged = families.merge_lora(params, cfg.lora_alpha / cfg.lora_rank)
  assert "lora_a" not in merged["layer_3"]["query"]
  batch = full_exp.data.train_batch(0)["inputs"]
  adapted = lora_exp.model.apply({"params": params}, batch)
  np.testing.assert_allclose(full_exp.model.apply({"params": merged}, batch),
                             adapted, atol=1e-5)
  assert np.abs(adapted - lora_exp.model.apply(lora.variables, batch)).max(
  ) > 1e-3  # The perturbation matters.
  exported = bert_hf.to_tensors(params, cfg)
  np.testing.assert_array_equal(
      exported["encoder.layer.3.attention.self.query.weight"],
      merged["layer_3"]["query"]["kernel"].reshape(384, 384).T)
