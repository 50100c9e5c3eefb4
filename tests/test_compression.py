"""Compression: qwix quantization of every family, int4 packed on disk,
pruning (one-shot, gradual with masks that resume, 2:4, whole heads),
distillation, and compressed runs that load like any run."""
import hashlib
import json
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from bigmodel_jax import (compress, config_loader, distill, evaluate,
                          metric_writer, pruning, quantization, runs, sample,
                          train)
from bigmodel_jax.models import (bert, deberta, gpt, resnet, t5,
                                 transformer_xl, vit)
from bigmodel_jax.serving import models, settings

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
CHAR = str(EXPERIMENTS / "gpt_shakespeare_char.py") + ":cpu"
SMALL = {"model.num_layers": 1, "model.emb_dim": 64, "model.num_heads": 2,
         "input.batch_size": 8, "input.seq_len": 16, "total_steps": 40,
         "log_every_steps": 10, "eval_every_steps": 40,
         "checkpoint_every_steps": 40, "optimizer.warmup_steps": 2,
         "optimizer.learning_rate": 3e-3}


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("char"))
  train.train(config_loader.load(CHAR, SMALL), workdir)
  return workdir


def _files(workdir) -> dict:
  return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(pathlib.Path(workdir).rglob("*")) if p.is_file()}


# --- Quantization of each family ------------------------------------------------
FAMILIES = {
    "gpt": (gpt, gpt.model_config("nano", vocab_size=65, num_layers=1,
                                  emb_dim=64, num_heads=2),
            jnp.arange(32, dtype=jnp.int32).reshape(2, 16) % 65),
    "bert": (bert, bert.model_config("tiny", vocab_size=100, num_layers=1,
                                     head="classifier", num_classes=3),
             jnp.arange(1, 33, dtype=jnp.int32).reshape(2, 16)),
    "roberta": (bert, bert.model_config(
        "tiny", vocab_size=100, num_layers=1, head="mlm",
        **{**bert.ROBERTA, "max_positions": 18}),
                jnp.arange(2, 34, dtype=jnp.int32).reshape(2, 16)),
    "albert": (bert, bert.model_config(
        "tiny", vocab_size=100, head="classifier", num_classes=3,
        **{**bert.ALBERT, "embed_dim": 32}),
               jnp.arange(1, 33, dtype=jnp.int32).reshape(2, 16)),
    "deberta": (deberta, deberta.model_config(
        "v3-xsmall", vocab_size=100, num_layers=1, emb_dim=64, num_heads=2,
        mlp_dim=128, position_buckets=8, head="classifier", num_classes=3),
                jnp.arange(1, 33, dtype=jnp.int32).reshape(2, 16)),
    "transformer_xl": (transformer_xl, transformer_xl.model_config(
        "char-nano", vocab_size=65, num_layers=1, emb_dim=64, num_heads=2,
        segment_len=8, mem_len=8),
                       jnp.arange(32, dtype=jnp.int32).reshape(2, 16) % 65),
    "t5": (t5, t5.model_config("tiny", vocab_size=65, num_layers=1,
                               num_decoder_layers=1, emb_dim=64, num_heads=2,
                               head_dim=32, mlp_dim=128),
           (jnp.arange(32, dtype=jnp.int32).reshape(2, 16) % 65,  # Decoder
            jnp.arange(40, dtype=jnp.int32).reshape(2, 20) % 63 + 2)),
    "vit": (vit, vit.model_config("Ti/4", emb_dim=64, num_layers=1,
                                  num_heads=2, mlp_dim=128, num_classes=10),
            jax.random.normal(jax.random.key(1), (2, 16, 16, 1))),
    "resnet": (resnet, resnet.model_config("18", width=16, stem="small",
                                           num_classes=10),
               jax.random.normal(jax.random.key(1), (2, 8, 8, 1))),
}
# The noise added to a family's initial parameters (default 0.05): T5's
# attention has no 1/sqrt(d) (its query initialisation carries it), so
# noise several times that initialisation would make its softmax far
# sharper than a trained T5's.
NOISE = {"t5": 0.01}


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("method, tolerance", [("int8", 0.03), ("int4", 0.3),
                                               ("w8a8", 0.05)])
def test_quantized_outputs_are_close_to_float(name, method, tolerance):
  family, model_config, inputs = FAMILIES[name]
  args = inputs if isinstance(inputs, tuple) else (inputs,)  # Or T5's two.
  model = family.make(model_config)
  variables = nn.unbox(model.init(jax.random.key(0), *args))
  noise = iter(jax.random.split(jax.random.key(2), 1000))
  variables["params"] = jax.tree.map(  # Zero-initialised heads too.
      lambda x: x + NOISE.get(name, 0.05) * jax.random.normal(next(noise),
                                                             x.shape),
      variables["params"])
  float_out = model.apply(variables, *args)
  block = {"method": method, "group_size": 16 if method == "int4" else 0}
  qmodel = quantization.ptq_model(model, block, variables["params"], args)
  abstract = jax.eval_shape(qmodel.init, jax.random.key(0), *args)
  qparams = quantization.quantize(variables["params"],
                                  nn.unbox(abstract)["params"])
  quantized = [x for x in jax.tree.leaves(qparams)
               if x.dtype in (jnp.int8, jnp.int4)]
  assert quantized, "nothing was quantized"
  out = qmodel.apply({**variables, "params": qparams}, *args)
  error = float(jnp.max(jnp.abs(out - float_out)))
  scale = float(jnp.max(jnp.abs(float_out)))
  assert 0 < error <= tolerance * scale, (error, scale)


def test_int4_default_groups_fit_small_widths():
  family, model_config, inputs = FAMILIES["vit"]  # A 16-wide patch kernel.
  model = family.make(model_config)
  params = nn.unbox(model.init(jax.random.key(0), inputs))["params"]
  assert quantization.fitting_group(model, {"method": "int4"}, params,
                                    (inputs,)) == 16


def test_pure_trees_round_trip():
  family, model_config, inputs = FAMILIES["gpt"]
  model = family.make(model_config)
  params = nn.unbox(model.init(jax.random.key(0), inputs))["params"]
  qmodel = quantization.ptq_model(model, {"method": "int4"}, params,
                                  (inputs,))
  qparams = quantization.quantize(params, nn.unbox(jax.eval_shape(
      qmodel.init, jax.random.key(0), inputs))["params"])
  pure = quantization.to_pure(qparams)
  assert pure["block_0"]["fc"]["kernel"]["array"]["qvalue"].dtype == jnp.int4
  back = quantization.from_pure(pure, qparams)
  assert jax.tree.structure(back) == jax.tree.structure(qparams)


# --- compress: runs that load like any run ---------------------------------------
@pytest.fixture(scope="module")
def compressed(char_run, tmp_path_factory):
  """{method: compressed run} of the char run."""
  root = tmp_path_factory.mktemp("compressed")
  before = _files(char_run)
  out = {}
  for method, extra in [("float32", []), ("int8", []),
                        ("int4", ["--group_size", "16"]),
                        ("sparse", ["--sparsity", "0.5"]),
                        ("heads", ["--keep_heads", "0.5", "--keep_mlp",
                                   "0.5"])]:
    out[method] = str(root / method)
    compress.main(["--workdir", char_run, "--out", out[method], "--method",
                   method, *extra])
  assert _files(char_run) == before  # The source is only read.
  return out


def _checkpoint_bytes(workdir):
  return compress.disk_bytes(os.path.join(workdir, "checkpoints"))


def test_int4_is_packed_on_disk_and_restores_exactly(char_run, compressed):
  run = runs.load(compressed["int4"])
  kernel = run.params["block_0"]["fc"]["kernel"].array
  assert kernel.qvalue.dtype == jnp.int4
  # The same quantization computed afresh from the float run.
  source = runs.load(char_run)
  example = jnp.zeros((1, 16), jnp.int32)
  params = jax.tree.map(jnp.asarray, jax.device_get(source.params))
  qmodel = quantization.ptq_model(
      source.model, {"method": "int4", "group_size": 16}, params, (example,))
  fresh = quantization.quantize(params, nn.unbox(
      jax.eval_shape(qmodel.init, jax.random.key(0), example))["params"])
  for a, b in zip(jax.tree.leaves(run.params), jax.tree.leaves(fresh)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_int4_takes_half_a_byte_per_weight(tmp_path):
  """Packed on disk, not int8 in disguise: on a model wide enough for the
  arrays to dominate, int4 (groups of 64) saves over 0.25 bytes per
  quantized weight over int8 (0.5 minus one float32 scale per 64, less
  what zstd finds to squeeze in either)."""
  source = str(tmp_path / "wide")
  train.train(config_loader.load(CHAR, {
      **SMALL, "model.emb_dim": 256, "total_steps": 1,
      "checkpoint_every_steps": 1, "eval_every_steps": 1}), source)
  sizes = {}
  for method in ("int8", "int4"):
    compress.main(["--workdir", source, "--out", str(tmp_path / method),
                   "--method", method, "--group_size",
                   "64" if method == "int4" else "0"])
    sizes[method] = _checkpoint_bytes(str(tmp_path / method))
  weights = 4 * 256 * 256 + 2 * 256 * 1024  # q, k, v, out; fc, proj.
  assert sizes["int8"] - sizes["int4"] > 0.25 * weights, sizes


def test_compressed_runs_sample_and_evaluate(char_run, compressed, tmp_path,
                                             capsys):
  scores = {}
  for method in ("float32", "int8", "int4", "sparse", "heads"):
    path = tmp_path / f"{method}.json"
    evaluate.main(["--workdir", compressed[method], "--split", "validation",
                   "--json", str(path)])
    scores[method] = json.loads(path.read_text())["loss"]
  logged = [r["val/loss"] for r in metric_writer.read_jsonl(char_run)
            if "val/loss" in r][-1]
  assert scores["float32"] == pytest.approx(logged, rel=1e-5)
  assert abs(scores["int8"] - logged) < 0.01
  assert abs(scores["int4"] - logged) < 0.1
  assert scores["sparse"] > logged - 0.01
  sample.main(["--workdir", compressed["int8"], "--max_new_tokens", "20",
               "--prompt", "ROMEO:"])
  assert "ROMEO:" in capsys.readouterr().out


def test_head_pruning_makes_the_model_smaller(char_run, compressed):
  source, pruned = runs.load(char_run), runs.load(compressed["heads"])
  assert pruned.config.model.num_heads == 1
  assert pruned.config.model.head_dim == 32
  assert pruned.config.model.mlp_dim == 128
  assert pruned.params["block_0"]["attn"]["query"]["kernel"].shape == (
      64, 1, 32)
  count = sum(x.size for x in jax.tree.leaves(pruned.params))
  assert count == sum(x.size for x in jax.tree.leaves(source.params)) - (
      4 * 64 * 32 + 2 * 64 * 128)  # q, k, v, out of a head; half the MLP.


def test_one_shot_sparsity_and_two_of_four():
  params = {"a": {"kernel": jax.random.normal(jax.random.key(0), (16, 8))},
            "b": {"kernel": jax.random.normal(jax.random.key(1), (8, 4)),
                  "bias": jnp.ones(4)}}
  pruned = pruning.apply_masks(params, pruning.masks(params, 0.75))
  kernels = jnp.concatenate([pruned["a"]["kernel"].ravel(),
                             pruned["b"]["kernel"].ravel()])
  assert float(jnp.mean(kernels == 0)) == pytest.approx(0.75, abs=0.01)
  assert (pruned["b"]["bias"] == 1).all()  # Biases stay dense.
  layer = pruning.apply_masks(params, pruning.masks(params, 0.5, "layer"))
  for name in ("a", "b"):
    assert float(jnp.mean(layer[name]["kernel"] == 0)) == 0.5
  two = pruning.apply_masks(params, pruning.masks(params, 0, pattern="2:4"))
  groups = np.asarray(two["a"]["kernel"]).reshape(4, 4, 8)  # 4 inputs each.
  assert ((groups != 0).sum(1) == 2).all()


@pytest.mark.parametrize("args, message", [
    (["--method", "int3"], "Unknown --method 'int3'"),
    (["--method", "int4", "--group_size", "48"], "cannot be tiled"),
    (["--method", "sparse", "--sparsity", "1.5"], "sparsity=1.5"),
    (["--method", "int8", "--step", "999"], "No checkpoint of step 999"),
    (["--method", "int8", "--workdir", "EMPTY"], "No checkpoints in"),
    (["--method", "int8", "--out", "SOURCE"], "--out must be a new directory"),
])
def test_bad_input_is_one_line(char_run, tmp_path, capsys, args, message):
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "config.json").write_text(
      (pathlib.Path(char_run) / "config.json").read_text())
  args = [{"EMPTY": str(empty), "SOURCE": char_run}.get(a, a) for a in args]
  before = _files(char_run)
  with pytest.raises(SystemExit) as exit_:
    compress.main(["--workdir", char_run, "--out", str(tmp_path / "out"),
                   *args])
  assert exit_.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
  assert not (tmp_path / "out").exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".staging")]
  assert _files(char_run) == before


def test_a_compressed_run_is_not_compressed_again(char_run, tmp_path, capsys):
  """bf16 or sparse over int8 weights used to write a run nothing loads."""
  int8 = str(tmp_path / "int8")
  compress.main(["--workdir", char_run, "--out", int8, "--method", "int8"])
  for method in ("bf16", "sparse", "int4"):
    with pytest.raises(SystemExit):
      compress.main(["--workdir", int8, "--out", str(tmp_path / method),
                     "--method", method])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is already compressed (int8, from" in err[0]
    assert not (tmp_path / method).exists()


# --- Training-time compression -------------------------------------------------
def test_gradual_pruning_masks_resume_and_stay_zero(tmp_path):
  overrides = {**SMALL, "total_steps": 8, "checkpoint_every_steps": 4,
               "optimizer.decay_steps": 8,
               "eval_every_steps": 8, "pruning.sparsity": 0.6,
               "pruning.begin_step": 0, "pruning.end_step": 4,
               "pruning.frequency": 2}
  unbroken, resumed = str(tmp_path / "unbroken"), str(tmp_path / "resumed")
  train.train(config_loader.load(CHAR, overrides), unbroken)
  train.train(config_loader.load(CHAR, {**overrides, "total_steps": 4}),
              resumed)
  halfway = runs.load(resumed).params
  train.train(config_loader.load(CHAR, overrides), resumed)
  a, b = runs.load(unbroken).params, runs.load(resumed).params
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5,
                               atol=1e-7)
  kernels = {k: v for k, v in traverse_util.flatten_dict(b).items()
             if k[-1] == "kernel"}
  zeros = sum(int((np.asarray(v) == 0).sum()) for v in kernels.values())
  assert zeros / sum(v.size for v in kernels.values()) == pytest.approx(
      0.6, abs=0.01)
  before = traverse_util.flatten_dict(halfway)
  for key, value in kernels.items():  # Pruned at step 4, still zero at 8.
    assert (np.asarray(value)[np.asarray(before[key]) == 0] == 0).all()


def test_quantization_aware_training_runs_and_compresses(tmp_path):
  workdir = str(tmp_path / "qat")
  train.train(config_loader.load(CHAR, {
      **SMALL, "total_steps": 6, "eval_every_steps": 6,
      "checkpoint_every_steps": 6, "quantization.method": "int8"}), workdir)
  losses = [r["train/loss"] for r in metric_writer.read_jsonl(workdir)
            if "train/loss" in r]
  assert losses and all(np.isfinite(losses))
  run = runs.load(workdir)
  assert type(run.model).__name__ == "Model" and hasattr(
      type(run.model), "_unquantized_type")  # Loaded as it trained.
  compress.main(["--workdir", workdir, "--out", str(tmp_path / "int8"),
                 "--method", "int8"])
  assert runs.load(str(tmp_path / "int8")).config.quantization.method is None


def test_soft_kl():
  t = jnp.array([[1.0, 2.0, 0.5]])
  assert float(distill.soft_kl(t, t, 2.0)[0]) == pytest.approx(0, abs=1e-7)
  s = jnp.array([[0.0, 1.0, 1.0]])
  p, q = jax.nn.softmax(t / 2), jax.nn.softmax(s / 2)
  assert float(distill.soft_kl(s, t, 2.0)[0]) == pytest.approx(
      float(jnp.sum(p * jnp.log(p / q))), rel=1e-5)


def test_distilled_student_learns_and_lives_without_its_teacher(
    char_run, tmp_path, capsys):
  """Distillation wraps the training only: with the teacher's workdir
  deleted, the student samples, evaluates and serves as a plain LM run."""
  teacher = str(shutil.copytree(char_run, tmp_path / "teacher"))
  workdir = str(tmp_path / "student")
  train.train(config_loader.load(CHAR, {
      **SMALL, "model.emb_dim": 32, "total_steps": 30, "log_every_steps": 5,
      "distill.teacher_workdir": teacher}), workdir)
  records = metric_writer.read_jsonl(workdir)
  losses = [r["train/loss"] for r in records if "train/loss" in r]
  assert losses[-1] < losses[0] - 0.3
  assert [r for r in records if "val/kl" in r]
  shutil.rmtree(teacher)
  student = runs.load(workdir)  # Its own shapes only: no teacher inside.
  assert student.config.task.name == "lm"
  assert student.params["wte"]["embedding"].shape[1] == 32
  assert len(jax.tree.leaves(student.params)) == len(
      jax.tree.leaves(runs.load(char_run).params))
  sample.main(["--workdir", workdir, "--prompt", "ROMEO:",
               "--max_new_tokens", "5"])
  evaluate.main(["--workdir", workdir, "--split", "validation"])
  assert "perplexity" in capsys.readouterr().out
  config = settings.defaults()
  config.update(dict(slots=1, warm_up=False))
  served = models.load("student", workdir, config)
  assert served.endpoints == ["completions"]
  served.generator.close()


def test_distillation_between_resnets_keeps_batch_statistics(tmp_path):
  """The mutable path: BatchNorm statistics of the student update, the
  teacher's do not."""
  spec = str(EXPERIMENTS / "resnet_digits.py") + ":cpu"
  tiny = {"total_steps": 3, "log_every_steps": 1, "eval_every_steps": 3,
          "checkpoint_every_steps": 3, "input.batch_size": 16,
          "optimizer.warmup_steps": 1, "model.stage_sizes": (1, 1)}
  teacher, student = str(tmp_path / "teacher"), str(tmp_path / "student")
  one = jax.devices()[:1]  # Convolutions compile slowly for 8 CPU devices.
  train.train(config_loader.load(spec, {**tiny, "model.width": 8}), teacher,
              one)
  before = runs.load(teacher).variables["batch_stats"]
  train.train(config_loader.load(spec, {
      **tiny, "model.width": 4, "distill.teacher_workdir": teacher}),
      student, one)
  records = metric_writer.read_jsonl(student)
  assert all(np.isfinite(r["train/loss"]) for r in records
             if "train/loss" in r)
  assert [r for r in records if "val/kl" in r and "val/accuracy" in r]
  stats = traverse_util.flatten_dict(
      runs.load(student).variables["batch_stats"])
  assert any(float(jnp.abs(x).max()) > 0 for k, x in stats.items()
             if k[-1] == "mean")  # Zeros at init.
  after = runs.load(teacher).variables["batch_stats"]
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
