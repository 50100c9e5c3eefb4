"""Export: every family to a transformers directory with equal outputs, the
refusals, jax.export artifacts, and export -> import -> export."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import transformers
from flax import traverse_util
from safetensors.numpy import load_file

from bigmodel_jax import config_loader, experiment, export, runs, train, workdirs
from bigmodel_jax.errors import NotExportable
from bigmodel_jax.hf import layout as hf_layout
from bigmodel_jax.models import gpt, resnet, vit

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
SHORT = {"total_steps": 2, "log_every_steps": 1, "eval_every_steps": 2,
         "checkpoint_every_steps": 2, "optimizer.warmup_steps": 1}
BERT = {"model.num_layers": 2, "model.emb_dim": 32, "model.num_heads": 2,
        "model.mlp_dim": 64, "model.dropout": 0.0, "input.batch_size": 8}
SMALL_TEXT = {**BERT, "init_from.hf_dir": None, "model.max_positions": 16,
              "input.seq_len": 16}
# Tiny random models of each family with a transformers equivalent:
# (experiment, overrides, what transformers loads).
RUNS = {
    "bert_classifier": ("bert_finetune.py:full", {**SMALL_TEXT,
                                                  "model.pool": "cls"},
                        "BertForSequenceClassification"),
    "bert_mean_lora": ("bert_finetune.py:lora", {**SMALL_TEXT,
                                                 "model.pool": "mean"},
                       "sentence-transformers"),
    "bert_mlm_nsp": ("bert_mlm.py:cpu-bert", {**BERT, "input.vocab_size": 300},
                     "BertForPreTraining"),
    # ALBERT: tests/test_roberta_albert.py (AlbertForPreTraining's tensors
    # both ways, a Unigram-tokenized classifier exported and verified).
    "roberta_mlm": ("bert_mlm.py:cpu-roberta", {
        **BERT, "input.vocab_size": 300, "model.max_positions": 66},
                    "RobertaForMaskedLM"),
    "vit": ("vit_digits.py:cpu", {
        "model.emb_dim": 32, "model.num_layers": 2, "model.num_heads": 2,
        "model.mlp_dim": 64, "model.pool": "token", "input.batch_size": 32},
            "ViTForImageClassification"),
    "gpt_char": ("gpt_shakespeare_char.py:cpu", {
        "model.num_layers": 1, "model.emb_dim": 32, "model.num_heads": 2,
        "input.batch_size": 8, "input.seq_len": 32}, "GPT2LMHeadModel"),
    "resnet": ("resnet_digits.py:cpu", {
        "model.width": 8, "model.stage_sizes": (1, 1, 1, 1),
        "model.stem": "imagenet", "input.batch_size": 32},
               "ResNetForImageClassification"),
}


def _train(workdir, experiment_arg, overrides) -> str:
  train.train(config_loader.load(str(EXPERIMENTS / experiment_arg),
                                 {**SHORT, **overrides}), str(workdir))
  return str(workdir)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """name -> workdir of a 2-step run, trained on first use."""
  cache = {}

  def get(name):
    if name not in cache:
      arg, overrides, _ = RUNS[name]
      cache[name] = _train(tmp_path_factory.mktemp(name), arg, overrides)
    return cache[name]
  return get


def _export(workdir, out, *args):
  export.main(["--workdir", workdir, "--out", str(out), *args])


def _flat(tree) -> dict:
  return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


@pytest.mark.parametrize("name", sorted(RUNS))
def test_export_loads_in_transformers_with_the_runs_outputs_and_imports_back(
    name, trained, tmp_path, capsys):
  workdir, out = trained(name), tmp_path / "hf"
  _export(workdir, out)
  printed = capsys.readouterr().out
  assert "Reloaded and run on 8 evaluation examples" in printed
  config = json.loads((out / "config.json").read_text())
  architecture = RUNS[name][2]
  if architecture == "sentence-transformers":
    modules = json.loads((out / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Dense",
                                            "3_Dense"]
  else:
    assert config["architectures"] == [architecture]
  run = runs.load(workdir)
  names_file = pathlib.Path(workdir) / "class_names.json"
  if names_file.exists():
    assert list(config["id2label"].values()) == json.loads(
        names_file.read_text())
  card = (out / "README.md").read_text()
  assert f"at step {run.step}" in card and "max |difference|" in card
  if run.tokenizer is not None:  # The run's ids, from transformers.
    text = "First Citizen:\nBefore we proceed any further, hear me speak."
    if run.config.model.name == "gpt":
      ours = run.tokenizer.encode(text).tolist()
    else:  # WordPiece: [CLS] ... [SEP], padded.
      row = run.tokenizer.encode_batch([text], 128)[0]
      ours = row[row != run.tokenizer.pad_id].tolist()
    assert transformers.AutoTokenizer.from_pretrained(out)(
        text)["input_ids"] == ours
  # Import symmetry: what export wrote loads back, and exports identically.
  variables = run.family.load_hf(str(out), run.config.model)
  again = run.family.export_hf(variables, run.config.model, None)
  written = load_file(str(out / "model.safetensors"))
  assert again.tensors.keys() == written.keys()
  for key, value in again.tensors.items():
    np.testing.assert_array_equal(value, written[key], err_msg=key)


def test_an_exported_resnet_initialises_a_run_with_its_batch_statistics(
    trained, tmp_path):
  workdir = trained("resnet")
  _export(workdir, tmp_path / "hf")
  arg, overrides, _ = RUNS["resnet"]
  config = config_loader.load(str(EXPERIMENTS / arg), {
      **SHORT, **overrides, "init_from.hf_dir": str(tmp_path / "hf")})
  exp = experiment.build(config)
  state, report = exp.load_pretrained(exp.factory.init(jax.random.key(1)),
                                      exp.config.init_from)
  assert report.startswith("initialised ")
  run = runs.load(workdir)
  ours, source = _flat(state.variables), _flat(run.variables)
  assert ours.keys() == source.keys()
  for key in source:  # Parameters and BatchNorm statistics.
    np.testing.assert_array_equal(ours[key], source[key], err_msg=key)


def test_jax_artifact_runs_without_this_package(trained, tmp_path):
  workdir, out = trained("bert_classifier"), tmp_path / "jax"
  _export(workdir, out, "--format", "jax")
  batch = export.example_batch(runs.load(workdir), 5)
  np.save(tmp_path / "inputs.npy", batch["inputs"])
  # A fresh interpreter in the artifact runs load.py, which never imports
  # this package.
  script = ("import runpy, sys; sys.argv = ['load.py', *sys.argv[1:]]; "
            "runpy.run_path('load.py', run_name='__main__'); "
            "assert 'bigmodel_jax' not in sys.modules")
  subprocess.run([sys.executable, "-I", "-c", script,
                  str(tmp_path / "inputs.npy"), str(tmp_path / "outputs.npz")],
                 cwd=out, check=True)
  expected = export.run_outputs(runs.load(workdir), batch)
  np.testing.assert_allclose(np.load(tmp_path / "outputs.npz")["outputs"],
                             expected, atol=1e-5)
  signature = json.loads((out / "signature.json").read_text())
  assert signature["inputs"] == [{"shape": [None, 16], "dtype": "int32"}]
  assert set(signature["platforms"]) == {"cpu", "cuda"}


@pytest.mark.parametrize("family, config, setting", [
    (vit, vit.model_config("Ti/4", num_classes=10, pool="gap"), "model.pool"),
    (resnet, resnet.model_config("18", num_classes=10, stem="small"),
     "model.stem"),
    (resnet, resnet.model_config("18", num_classes=10, norm="group"),
     "model.norm"),
    (gpt, gpt.model_config("nano", vocab_size=65, position="rope"),
     "match neither GPT-2"),
])
def test_settings_without_an_equivalent_are_refused_by_name(family, config,
                                                            setting):
  with pytest.raises(NotExportable, match=setting):
    family.export_hf({"params": {}}, config, None)


def test_a_refused_or_mismatched_export_keeps_nothing(trained, tmp_path,
                                                      capsys, monkeypatch):
  workdir = trained("vit")
  with pytest.raises(SystemExit) as exit_:
    _export(workdir, tmp_path / "out", "--examples", "0")
  assert exit_.value.code == 2
  # transformers' outputs differ (a broken layout): refused, nothing kept.
  reference = hf_layout.image_classifier_reference

  def off_by_one(arch):
    return lambda d, batch: {k: v + 1.0 for k, v in
                             reference(arch)(d, batch).items()}
  monkeypatch.setattr(hf_layout, "image_classifier_reference", off_by_one)
  with pytest.raises(SystemExit) as exit_:
    _export(workdir, tmp_path / "out")
  assert exit_.value.code == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("error: The exported model's logits differ")
  assert os.listdir(tmp_path) == []  # No --out, no staging directory.
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "keep.txt").write_text("mine")
  with pytest.raises(SystemExit):
    _export(workdir, tmp_path / "out")
  assert os.listdir(tmp_path / "out") == ["keep.txt"]


def test_out_is_claimed_first_and_left_clean(trained, tmp_path, capsys):
  workdir, out = trained("vit"), tmp_path / "out"
  stale = tmp_path / ".staging-out.k1ll3d_x"  # Of a killed export.
  (stale / "sub").mkdir(parents=True)
  with workdirs.new_directory(str(out)):  # Another command writing --out.
    with pytest.raises(SystemExit) as exit_:
      _export(workdir, out)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        f"error: --out {out} is being written by another command; wait for "
        "it or choose another --out.\n")
  _export(workdir, out)
  assert sorted(os.listdir(tmp_path)) == ["out"]  # No staging, no claim.
  umask = os.umask(0)
  os.umask(umask)
  assert {oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {
      oct(0o666 & ~umask)}  # model.safetensors was 0600.


@pytest.mark.slow
def test_the_real_minilm_sentiment_classifier_exports_faithfully(tmp_path,
                                                                 capsys):
  """The recipe's mean-pooled MiniLM: sentence-transformers reproduces it."""
  workdir = _train(tmp_path / "run", "bert_finetune.py:full",
                   {"input.batch_size": 8, "total_steps": 1,
                    "eval_every_steps": 1, "checkpoint_every_steps": 1,
                    "input.test_split": None,
                    "input.validation_fraction": 0.02})
  _export(workdir, tmp_path / "hf", "--examples", "16")
  printed = capsys.readouterr().out
  assert "max |difference| logits" in printed
  import sentence_transformers
  model = sentence_transformers.SentenceTransformer(str(tmp_path / "hf"),
                                                    device="cpu")
  run = runs.load(workdir)
  texts = ["A gripping, beautifully acted film.", "Dull and far too long."]
  ids = run.tokenizer.encode_batch(texts, 64)
  ours = np.asarray(run.model.apply(run.variables, ids))
  theirs = model.encode(texts)  # The user's path: their own tokenizer.
  np.testing.assert_allclose(theirs, ours, atol=1e-4)
