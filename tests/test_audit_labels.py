"""Label audits: flipped labels are found by cross-validated confident
learning, exported as Label Studio tasks and read back as overrides."""
import csv
import json
import pathlib

import numpy as np
import pytest

from bigmodel_jax import audit_labels, config_loader
from bigmodel_jax.data import sklearn_digits
from bigmodel_jax.dataio import label_studio
from conftest import PLANTED_BERT, planted_csv

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


@pytest.mark.slow
def test_flipped_digits_are_found_and_exported(tmp_path, capsys):
  _, labels = sklearn_digits.split("train")
  rng = np.random.default_rng(0)
  chosen = rng.choice(len(labels), 144, replace=False)  # 10%.
  flipped = {f"train:{i}": str((labels[i] + 1 + rng.integers(9)) % 10)
             for i in chosen}
  (tmp_path / "flipped.json").write_text(json.dumps(flipped))
  workdir = tmp_path / "audit"
  audit_labels.main([
      "--config", str(EXPERIMENTS / "vit_digits.py"), "--workdir",
      str(workdir), "--folds", "3", "--least_certain", "5", "--flipped",
      str(tmp_path / "flipped.json"),
      f"--config.input.label_overrides={tmp_path / 'flipped.json'}",
      "--config.model.emb_dim=48", "--config.model.num_layers=2",
      "--config.model.num_heads=2", "--config.model.mlp_dim=96",
      "--config.total_steps=900", "--config.eval_every_steps=900",
      "--config.checkpoint_every_steps=900", "--config.log_every_steps=900",
      "--config.input.mixup_alpha=0.0"])
  summary = json.load(open(workdir / "audit.json"))
  assert summary["examples"] == len(labels) and summary["flipped"] == 144
  assert summary["recall"] >= 0.6 and summary["precision"] >= 0.6, summary
  out = capsys.readouterr().out
  assert f"of the 144 flipped labels {summary['found_flipped']} found" in out
  rows = list(csv.DictReader(open(workdir / "label_issues.csv")))
  assert len(rows) == summary["suspected"] and rows[0]["rank"] == "1"
  assert all(r["given"] != r["predicted"] for r in rows[:20])
  probs = [float(r["p_given"]) for r in rows]
  assert probs[:10] == sorted(probs[:10])  # Least self-confident first.
  tasks = json.load(open(workdir / "label_studio" / "tasks.json"))
  assert len(tasks) == summary["suspected"] + 5
  assert tasks[0]["data"]["image"].startswith("data:image/png;base64,")
  assert tasks[0]["data"]["example_id"] == rows[0]["id"]
  assert tasks[-1]["meta"]["reason"] == "least certain"
  given = {**{f"train:{i}": str(v) for i, v in enumerate(labels)}, **flipped}
  assert tasks[0]["meta"]["given_label"] == given[rows[0]["id"]]
  oof = np.load(workdir / "out_of_fold.npz")
  assert oof["probs"].shape == (len(labels), 10)
  np.testing.assert_allclose(oof["probs"].sum(-1), 1, rtol=1e-5)


@pytest.mark.slow
def test_flipped_texts_are_found(tmp_path):
  """Texts whose class one planted token decides, 10% of the labels flipped:
  a tiny BERT's out-of-fold audit finds them, and its tasks carry the
  text."""
  labels = planted_csv(tmp_path / "data.csv")
  rng = np.random.default_rng(1)
  flipped = {str(i): str(rng.choice([c for c in ("neg", "none", "pos")
                                     if c != labels[i]]))
             for i in rng.choice(len(labels), 90, replace=False)}
  (tmp_path / "flipped.json").write_text(json.dumps(flipped))
  config_loader.save_json(config_loader.load(
      str(EXPERIMENTS / "bert_finetune.py"), {
          **PLANTED_BERT, "input.path": str(tmp_path / "data.csv"),
          "input.label_overrides": str(tmp_path / "flipped.json")}),
      tmp_path / "config.json")
  workdir = tmp_path / "audit"
  audit_labels.main([
      "--config", str(tmp_path / "config.json"), "--workdir", str(workdir),
      "--folds", "3", "--flipped", str(tmp_path / "flipped.json")])
  summary = json.load(open(workdir / "audit.json"))
  assert 50 <= summary["flipped"] <= 90  # Those in the training split.
  # Predicted with the vocabulary each fold trained (a retrained one differs).
  assert summary["out_of_fold_accuracy"] > 0.85, summary
  assert summary["recall"] >= 0.8 and summary["precision"] >= 0.8, summary
  task = json.load(open(workdir / "label_studio" / "tasks.json"))[0]
  row = task["data"]["example_id"]
  assert task["data"]["text"].split()[0].startswith(("w", "zz"))
  assert task["meta"]["given_label"] == flipped.get(row, labels[int(row)])


def test_label_studio_export_reads_back_as_overrides(tmp_path, capsys):
  examples = [{"id": "7", "content": "a fine film", "given": "neg",
               "predicted": "pos", "score": 0.93, "reason": "suspected"}]
  task, = label_studio.tasks(examples, "text")
  assert task["data"] == {"example_id": "7", "text": "a fine film"}
  assert task["predictions"][0]["result"][0]["value"] == {"choices": ["pos"]}
  config = label_studio.labeling_config(["neg", "pos"], "text")
  assert '<Choices name="label" toName="text"' in config
  assert '<Choice value="pos"/>' in config

  def annotated(example, *answers):
    return {"id": 1, "data": {"example_id": example, "text": "t"},
            "annotations": [{"was_cancelled": cancelled, "result": [
                {"type": "choices", "from_name": "label", "to_name": "text",
                 "value": {"choices": [label]}}]}
                            for label, cancelled in answers]}
  export = [annotated("7", ("pos", False)),
            annotated("9", ("neg", False), ("pos", True)),  # Cancelled.
            annotated("11")]  # Skipped: no annotation.
  (tmp_path / "export.json").write_text(json.dumps(export))
  (tmp_path / "base.json").write_text(json.dumps({"3": "neg", "7": "neg"}))
  audit_labels.main(["import", "--export", str(tmp_path / "export.json"),
                     "--out", str(tmp_path / "fixed.json"), "--base",
                     str(tmp_path / "base.json")])
  assert json.load(open(tmp_path / "fixed.json")) == {
      "3": "neg", "7": "pos", "9": "neg"}
  assert "2 labels from" in capsys.readouterr().out
  (tmp_path / "bad.json").write_text(json.dumps([{"data": {"text": "x"}}]))
  with pytest.raises(SystemExit):
    audit_labels.main(["import", "--export", str(tmp_path / "bad.json"),
                       "--out", str(tmp_path / "x.json")])
  assert "has no data.example_id" in capsys.readouterr().err
