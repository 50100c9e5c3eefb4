"""Per-group evaluation (`input.groups`) and label overrides
(`input.label_overrides`) on the labelled inputs."""
import json
import pathlib

import jax
import numpy as np
import optax
import pytest

from bigmodel_jax import config_loader, evaluate, experiment, grouped, train
from bigmodel_jax.data import sklearn_digits, text_classification

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
TINY_VIT = {"model.emb_dim": 16, "model.num_layers": 1, "model.num_heads": 2,
            "model.mlp_dim": 32, "input.batch_size": 64, "total_steps": 40,
            "log_every_steps": 20, "eval_every_steps": 40,
            "checkpoint_every_steps": 40, "optimizer.warmup_steps": 4}


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
  """A group function file: digits below 5 are "low", the rest "high"."""
  path = tmp_path_factory.mktemp("fns") / "groups_fns.py"
  path.write_text("def half(record):\n"
                  "  return 'low' if record['label'] < 5 else 'high'\n")
  return f"{path}:half"


def test_each_groups_metrics_are_those_of_its_examples(halves):
  config = config_loader.load(str(EXPERIMENTS / "vit_digits.py"),
                              {**TINY_VIT, "input.groups": halves})
  exp = experiment.build(config)
  state = exp.factory.init(jax.random.key(0))
  totals = exp.eval_totals(state.variables)
  scalars, _, text = exp.summary(totals)
  logits, labels = [], []
  for batch in exp.data.eval_batches():
    real = batch["weights"] > 0
    out = exp.task.apply(exp.model, state.variables, exp.global_batch(batch),
                         train=False)
    logits.append(np.asarray(out)[real])
    labels.append(batch["targets"][real])
  logits, labels = np.concatenate(logits), np.concatenate(labels)
  for name, members in (("low", labels < 5), ("high", labels >= 5)):
    accuracy = np.mean(logits[members].argmax(-1) == labels[members])
    loss = np.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits[members], labels[members]))
    assert scalars[f"group/{name}/count"] == members.sum()
    np.testing.assert_allclose(scalars[f"group/{name}/accuracy"], accuracy,
                               atol=1e-6)
    np.testing.assert_allclose(scalars[f"group/{name}/loss"], loss,
                               rtol=1e-5)
  assert scalars["group_gap/accuracy"] == pytest.approx(abs(
      scalars["group/low/accuracy"] - scalars["group/high/accuracy"]))
  assert scalars["accuracy"] == pytest.approx(np.mean(
      logits.argmax(-1) == labels))  # The whole split is unchanged.
  assert "Per group:\n| group | count |" in text and "| low | 180 |" in text


def test_groups_reach_metrics_jsonl_and_evaluate(halves, tmp_path, capsys):
  config = config_loader.load(str(EXPERIMENTS / "vit_digits.py"),
                              {**TINY_VIT, "input.groups": halves})
  workdir = str(tmp_path / "run")
  train.train(config, workdir)
  records = [json.loads(line) for line in
             open(f"{workdir}/metrics.jsonl")]
  last = [r for r in records if "val/group_gap/accuracy" in r][-1]
  assert last["step"] == 40 and {
      "val/group/low/macro_f1", "val/group/high/count",
      "val/group_gap/macro_f1"} <= set(last)
  assert "Per group:" in capsys.readouterr().out
  evaluate.main(["--workdir", workdir, "--split", "test", "--json",
                 str(tmp_path / "e.json")])
  figures = json.load(open(tmp_path / "e.json"))
  assert figures["group/low/accuracy"] == pytest.approx(
      last["val/group/low/accuracy"], abs=1e-6)
  assert "| high | 179 |" in capsys.readouterr().out


def _csv(tmp_path) -> str:
  path = tmp_path / "reviews.csv"
  rows = ["text,label,source"] + [
      f"review number {i} {'good' if i % 2 else 'bad'},"
      f"{'pos' if i % 2 else 'neg'},{'web' if i % 3 else 'print'}"
      for i in range(60)]
  path.write_text("\n".join(rows) + "\n")
  return str(path)


def _text_config(path, **overrides):
  return config_loader.load(str(EXPERIMENTS / "bert_finetune.py"), {
      "init_from.hf_dir": None, "input.vocab_file": None,
      "input.vocab_size": 200, "input.path": path, "input.seq_len": 8,
      "input.batch_size": 8, **overrides})


def test_a_csv_column_names_the_groups_of_text(tmp_path):
  config = _text_config(_csv(tmp_path), **{"input.groups": "source"})
  data = text_classification.Input(config.input, seed=0, process_index=0,
                                   process_count=1)
  assert data.group_names("test") == ["print", "web"]
  ids = data.example_ids("test")
  masks = np.concatenate([b["groups"][b["weights"] > 0]
                          for b in data.eval_batches("test")])
  expected = [[int(i) % 3 == 0, int(i) % 3 != 0] for i in ids]
  np.testing.assert_array_equal(masks, np.array(expected, np.float32))
  with pytest.raises(ValueError, match="no column.*'gender'"):
    text_classification.splits(_text_config(
        _csv(tmp_path), **{"input.groups": "gender"}).input)


def test_label_overrides_change_exactly_the_named_examples(tmp_path):
  overrides = tmp_path / "fix.json"
  fixes = {str(i): "neg" if i % 2 else "pos" for i in range(0, 40, 3)}
  overrides.write_text(json.dumps(fixes))
  path = _csv(tmp_path)
  before = text_classification.splits(_text_config(path).input)
  after = text_classification.splits(_text_config(
      path, **{"input.label_overrides": str(overrides)}).input)
  for name in before:  # The splits are those of the labels as read.
    np.testing.assert_array_equal(after[name].ids, before[name].ids)
    changed = {str(i): int(a) for i, a, b in zip(
        before[name].ids, after[name].labels, before[name].labels) if a != b}
    assert changed == {k: int(v == "pos") for k, v in fixes.items()
                       if int(k) in before[name].ids}
  overrides.write_text(json.dumps({"train:5": "3", "test:0": "9"}))
  digits = sklearn_digits.Input(config_loader.load(
      str(EXPERIMENTS / "vit_digits.py"),
      {"input.label_overrides": str(overrides)}).input, seed=0,
      process_index=0, process_count=1)
  assert digits.sources["train"][5][1] == 3
  assert digits.sources["test"][0][1] == 9
  assert digits.sources["train"][6][1] == sklearn_digits.split("train")[1][6]
  for bad, message in (({"train:99999": "1"}, "no example 'train:99999'"),
                       ({"train:1": "ten"}, "'ten' is not a class")):
    overrides.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=message):
      sklearn_digits.Input(config_loader.load(
          str(EXPERIMENTS / "vit_digits.py"),
          {"input.label_overrides": str(overrides)}).input, seed=0,
          process_index=0, process_count=1)


def test_groups_table_and_gap_of_known_sums():
  class Task:
    def summarize(self, sums):
      return {"accuracy": float(sums["correct"] / sums["count"])}
  totals = {"groups": {"correct": np.array([3.0, 1.0]),
                       "count": np.array([4.0, 4.0])}}
  groups = grouped.per_group(Task(), totals, ["a b", "c/d"])
  assert grouped.summarize(groups) == {
      "group/a_b/accuracy": 0.75, "group/a_b/count": 4.0,
      "group/c_d/accuracy": 0.25, "group/c_d/count": 4.0,
      "group_gap/accuracy": 0.5}
  assert "| c/d | 4 | 0.2500 |" in grouped.table(groups)
