"""ViT and ResNet: variant shapes, BatchNorm state, sharding, real training."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import linen as nn

from bigmodel_jax import (checkpoints, config_loader, experiment, metric_writer,
                          plan, train)
from bigmodel_jax.data import sklearn_digits, tfds_images
from bigmodel_jax.dataio import images
from bigmodel_jax.dataio import image_ops
from bigmodel_jax.dataio.common import shuffled_indices
from bigmodel_jax.models import resnet, vit
from bigmodel_jax.tasks import classification
from conftest import run_steps

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"

# A narrow two-stage ResNet and a 2-layer ViT that train in seconds.
TINY_RESNET = {"model.width": 8, "model.stage_sizes": (1, 1),
               "input.batch_size": 32, "total_steps": 4, "log_every_steps": 1,
               "eval_every_steps": 4, "checkpoint_every_steps": 2,
               "optimizer.warmup_steps": 1}


def _config(name, **overrides):
  return config_loader.load(str(EXPERIMENTS / f"{name}.py") + ":cpu", overrides)


def _params(model, shape):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return nn.unbox(jax.eval_shape(model.init, jax.random.key(0), x))


# Published parameter counts (ViT paper / timm; torchvision for ResNet).
@pytest.mark.parametrize("module, variant, millions", [
    (vit, "Ti/16", 5.7), (vit, "S/16", 22.1), (vit, "B/16", 86.6),
    (vit, "L/16", 304.3), (vit, "B/32", 88.2), (resnet, "18", 11.69),
    (resnet, "34", 21.80), (resnet, "50", 25.56), (resnet, "101", 44.55),
    (resnet, "152", 60.19)])
def test_variants_have_the_published_sizes(module, variant, millions):
  model = module.make(module.model_config(variant, num_classes=1000))
  variables = _params(model, (2, 224, 224, 3))
  assert module.num_params(variables["params"]) / 1e6 == pytest.approx(
      millions, rel=0.01)
  assert set(variables) == ({"params", "batch_stats"} if module is resnet
                            else {"params"})
  out = jax.eval_shape(model.apply, variables,
                       jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32))
  assert out.shape == (2, 1000)


def test_batchnorm_uses_batch_statistics_in_training_only():
  model = resnet.make(resnet.model_config("18", num_classes=3, width=4,
                                          stem="small", stage_sizes=(1, 1)))
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1)) * 3 + 2
  variables = model.init(jax.random.key(1), x)
  _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  old = variables["batch_stats"]["stem_norm"]
  new = updates["batch_stats"]["stem_norm"]
  assert not np.allclose(old["mean"], new["mean"])  # Running stats move.
  # Eval: each example's output is independent of the rest of the batch.
  alone = model.apply(variables, x[:1])
  together = model.apply(variables, x)
  np.testing.assert_allclose(alone[0], together[0], rtol=1e-5, atol=1e-6)
  # Training: the other examples change the normalisation.
  train_alone, _ = model.apply(variables, x[:2], train=True,
                               mutable=["batch_stats"])
  train_together, _ = model.apply(variables, x, train=True,
                                  mutable=["batch_stats"])
  assert not np.allclose(train_alone[0], train_together[0], atol=1e-4)


def test_group_norm_has_no_state():
  model = resnet.make(resnet.model_config("18", num_classes=3, width=4,
                                          stem="small", norm="group"))
  variables = model.init(jax.random.key(1), jnp.zeros((2, 8, 8, 1)))
  assert set(variables) == {"params"}


def _results(config, devices=None):
  losses, exp, state = run_steps(config, devices)
  return losses, jax.device_get(state.model_state), exp.evaluate(state)


@pytest.mark.parametrize("name, overrides", [
    ("resnet_digits", TINY_RESNET),
    ("vit_digits", {"model.num_layers": 2, "input.batch_size": 32})])
def test_mesh_2x2x2_gives_the_single_device_results(name, overrides):
  single = _results(_config(name, **overrides, **{"mesh.data": 1}),
                   jax.devices()[:1])
  sharded = _results(_config(name, **overrides, **{
      "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}))
  np.testing.assert_allclose(sharded[0], single[0], rtol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-6),
               sharded[1], single[1])  # BatchNorm statistics.
  assert sharded[2] == pytest.approx(single[2], rel=1e-4, abs=1e-6)


def test_resume_restores_batchnorm_statistics(tmp_path):
  workdir = str(tmp_path)
  train.train(_config("resnet_digits", **TINY_RESNET), workdir)
  exp = experiment.build(_config("resnet_digits", **TINY_RESNET))
  mgr = checkpoints.manager(workdir)
  restored = checkpoints.restore(mgr, exp.factory.abstract)
  mgr.close()
  fresh = exp.factory.init(jax.random.key(0))
  stats = restored.model_state["batch_stats"]["stem_norm"]
  assert int(restored.step) == 4
  assert not np.allclose(stats["mean"],
                         fresh.model_state["batch_stats"]["stem_norm"]["mean"])
  # Evaluating the restored state reproduces the run's final eval.
  last = [r for r in metric_writer.read_jsonl(workdir) if "val/loss" in r][-1]
  assert exp.evaluate(restored)["loss"] == pytest.approx(last["val/loss"],
                                                         rel=1e-5)


def test_a_short_resnet_training_on_digits_learns(tmp_path):
  config = _config("resnet_digits", **{
      **TINY_RESNET, "model.width": 16, "model.stage_sizes": (1, 1, 1, 1),
      "total_steps": 60,
      "eval_every_steps": 60, "checkpoint_every_steps": 60,
      "input.batch_size": 64, "optimizer.learning_rate": 1e-2,
      "optimizer.warmup_steps": 10})
  last = train.train(config, str(tmp_path))
  assert last["val/accuracy"] > 0.7  # Chance is 0.1; 0.85 seen.
  records = metric_writer.read_jsonl(str(tmp_path))
  confusion = [r["val/confusion_matrix"] for r in records
               if "val/confusion_matrix" in r][-1]
  assert np.sum(confusion) == len(sklearn_digits.split("test")[1])


def test_digits_split_is_fixed_and_disjoint():
  train_x, train_y = sklearn_digits.split("train")
  test_x, test_y = sklearn_digits.split("test")
  assert len(train_y) + len(test_y) == 1797 and len(test_y) == 359
  assert np.bincount(test_y).min() >= 35  # Stratified.
  np.testing.assert_array_equal(sklearn_digits.split("test")[0], test_x)
  assert train_x.dtype == np.uint8 and train_x.max() == 255


def test_eval_batches_cover_the_split_once_with_padding():
  config = _config("resnet_digits", **{"input.batch_size": 64})
  data = sklearn_digits.Input(config.input, seed=0, process_index=1,
                              process_count=2)
  batches = list(data.eval_batches())
  assert len(batches) == data.num_eval_batches() == 6  # ceil(359 / 64).
  assert all(b["inputs"].shape == (32, 8, 8, 1) for b in batches)
  total = sum(b["weights"].sum() for b in batches)
  other = sklearn_digits.Input(config.input, seed=0, process_index=0,
                               process_count=2)
  assert total + sum(b["weights"].sum() for b in other.eval_batches()) == 359


def test_training_batches_are_epochs_and_a_function_of_the_step():
  epoch = np.concatenate([shuffled_indices(10, 4, 0, s)
                          for s in range(5)])
  assert sorted(epoch[:10]) == list(range(10))  # Each example once an epoch.
  assert sorted(epoch[10:20]) == list(range(10))
  np.testing.assert_array_equal(shuffled_indices(10, 4, 0, 3),
                                epoch[12:16])


def test_preprocessing_strings():
  rng = np.random.default_rng(0)
  image = np.arange(8 * 6 * 3, dtype=np.float32).reshape(8, 6, 3)
  op = image_ops.parse("resize_small(12)|central_crop(12)|flip_lr(p=1.0)|"
                       "value_range(-1, 1)")
  out = op(image, rng)
  assert out.shape == (12, 12, 3) and out.min() >= -1 and out.max() <= 1
  assert image_ops.parse("random_crop(6, pad=1)")(image, rng).shape == (6, 6, 3)
  assert image_ops.parse("inception_crop(5)")(image, rng).shape == (5, 5, 3)
  with pytest.raises(ValueError, match="Unknown preprocessing op 'flip'"):
    image_ops.parse("flip|value_range(0, 1)")


def test_mixup_batches_and_loss():
  config = _config("resnet_digits", **{"input.mixup_alpha": 0.4,
                                       "input.batch_size": 16})
  data = sklearn_digits.Input(config.input, seed=0, process_index=0,
                              process_count=1)
  batch = data.train_batch(0)
  share = batch["mix"][0]
  assert 0 < share < 1 and np.all(batch["mix"] == share)
  np.testing.assert_array_equal(batch["mix_targets"],
                                np.roll(batch["targets"], 1))
  assert set(batch) == set(images.batch_spec(config.input))


def test_tfds_images_reads_a_dataset_by_name():
  config = _config("resnet_imagenet", **{
      "input.dataset": "mnist", "input.train_split": "train",
      "input.eval_split": "test", "input.image_size": 16,
      "input.channels": 1, "input.batch_size": 4,
      "input.train_pp": "random_crop(16)|value_range(-1, 1)",
      "input.eval_pp": "central_crop(16)|value_range(-1, 1)"})
  with tfds.testing.mock_data(num_examples=10):
    data = tfds_images.Input(config.input, seed=0, process_index=0,
                             process_count=1)
  assert data.model_fields() == {"num_classes": 10}
  batch = data.train_batch(3)
  assert batch["inputs"].shape == (4, 16, 16, 1)
  assert batch["targets"].dtype == np.int32


def test_missing_tfds_dataset_names_the_fix(tmp_path):
  config = _config("resnet_imagenet", **{"input.data_dir": str(tmp_path)})
  with pytest.raises(FileNotFoundError, match="tfds build imagenet2012"):
    tfds_images.Input(config.input, seed=0, process_index=0, process_count=1)


def test_posemb_resampling_for_a_new_image_size():
  small = vit.make(vit.model_config("Ti/4", num_classes=10, num_layers=1))
  big = vit.make(vit.model_config("Ti/4", num_classes=5, num_layers=1))
  params = small.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
  target = _params(big, (1, 16, 16, 3))["params"]
  adapted = vit.adapt_params(nn.unbox(params), target)
  assert jax.tree.map(jnp.shape, adapted) == jax.tree.map(jnp.shape, target)
  # A constant grid stays constant; the head restarts at zero.
  grid = jnp.ones((4, 192)) * 3.0
  np.testing.assert_allclose(vit.resample_posemb(grid, 16), 3.0, rtol=1e-6)
  assert not np.any(adapted["head"]["kernel"])
  big.apply({"params": adapted}, jnp.zeros((1, 16, 16, 3)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit_imagenet", "resnet_imagenet"])
def test_imagenet_recipes_compile_ahead_of_time(name):
  config = config_loader.load(str(EXPERIMENTS / f"{name}.py"),
                           {"input.batch_size": 8})
  result = plan.plan(config)
  expected = {"vit_imagenet": 86.6e6, "resnet_imagenet": 25.6e6}[name]
  assert result["parameters"] == pytest.approx(expected, rel=0.01)
  assert result["temp_bytes"] > 0 and result["params_bytes"] > 0


def test_mixup_loss_mixes_both_targets_and_scores_the_larger_share():
  logits = jnp.log(jnp.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
  batch = {"targets": jnp.array([0, 2]), "mix_targets": jnp.array([1, 0]),
           "mix": jnp.array([0.3, 0.6])}
  sums = classification.Task(config=None).sums(logits, batch)
  expected = -(0.3 * np.log(0.7) + 0.7 * np.log(0.2) +
               0.6 * np.log(0.8) + 0.4 * np.log(0.1))
  assert float(sums["loss"]) == pytest.approx(expected, rel=1e-5)
  # Example 0 counts against target 1 (share 0.7): wrong; example 1 right.
  assert float(sums["correct"]) == 1.0


def test_fine_tuning_at_a_new_image_size_starts_from_the_pretrained_run(
    tmp_path):
  small = {"model.num_layers": 1, "input.batch_size": 16, "total_steps": 2,
           "eval_every_steps": 2, "checkpoint_every_steps": 2,
           "optimizer.warmup_steps": 1, "input.mixup_alpha": 0.0}
  pretrain = str(tmp_path / "pretrain")
  train.train(_config("vit_digits", **small), pretrain)
  finetune = _config("vit_digits", **small, **{
      "input.image_size": 24, "input.train_pp": "resize(24)",
      "input.eval_pp": "resize(24)", "init_from.workdir": pretrain})
  exp = experiment.build(finetune)
  state, report = exp.load_pretrained(exp.factory.init(jax.random.key(0)),
                                      finetune.init_from)
  assert report.startswith("initialised 23 of 23 parameter tensors")
  loaded, step = checkpoints.restore_params(
      pretrain, exp.factory.abstract.params)
  assert step == 2 and loaded["posemb"].shape == (16, 64)  # Saved shape.
  assert state.params["posemb"].shape == (36, 64)  # 4x4 -> 6x6 patches.
  np.testing.assert_allclose(state.params["posemb"],
                             vit.resample_posemb(loaded["posemb"], 36),
                             rtol=1e-6)
  np.testing.assert_array_equal(state.params["block_0"]["fc"]["kernel"],
                                loaded["block_0"]["fc"]["kernel"])
  assert state.params["posemb"].sharding == exp.factory.shardings.params[
      "posemb"]
  last = train.train(finetune, str(tmp_path / "finetune"))
  assert np.isfinite(last["val/loss"])
  with pytest.raises(FileNotFoundError, match="No checkpoints"):
    checkpoints.restore_params(str(tmp_path / "nowhere"), loaded)
  with pytest.raises(FileNotFoundError, match=r"have steps \[2\]"):
    checkpoints.restore_params(pretrain, loaded, step=999)
