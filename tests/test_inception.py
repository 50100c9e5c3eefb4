"""Inception-v3: torchvision's parameter counts and names, the auxiliary
head's loss in training only, and a digits run evaluated, exported and
served by /v1/classify."""
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from PIL import Image

from bigmodel_jax import config_loader
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.models import inception
from bigmodel_jax.serving import models, settings
from bigmodel_jax.tasks import classification
from conftest import OK, _EXPERIMENTS, _SHORT, expect_cli

TINY = {"model.width": 0.0625, "input.batch_size": 16}


def _abstract(aux_head: bool, size: int = 299, train: bool = False):
  model = inception.make(inception.model_config("v3", num_classes=1000,
                                                aux_head=aux_head))
  images = jnp.zeros((2, size, size, 3))
  variables = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "dropout": jax.random.key(1)}, images))
  out = jax.eval_shape(lambda v: model.apply(
      v, images, train=train, rngs={"dropout": jax.random.key(2)},
      mutable=["batch_stats"]), variables)[0]
  return nn.unbox(variables["params"]), out


def test_the_imagenet_variant_has_torchvisions_parameters():
  """23.8M published; torchvision's inception_v3 has 23,834,568 without
  and 27,161,264 with the auxiliary classifier, and these names."""
  params, logits = _abstract(aux_head=False)
  assert inception.num_params(params) == 23_834_568
  assert logits.shape == (2, 1000)
  assert sorted(params["Mixed_7b"]) == [
      "branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b",
      "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3a",
      "branch3x3dbl_3b", "branch_pool"]
  assert params["Mixed_6b"]["branch7x7dbl_5"]["conv"]["kernel"].shape == (
      1, 7, 128, 192)  # torchvision's (192, 128, 1, 7), transposed.
  with_aux, _ = _abstract(aux_head=True)
  assert inception.num_params(with_aux) == 27_161_264


def test_the_auxiliary_head_adds_its_loss_in_training_only():
  _, outputs = _abstract(aux_head=True, train=True)
  assert {k: v.shape for k, v in outputs.items()} == {
      "logits": (2, 1000), "aux_logits": (2, 1000)}
  _, evaluated = _abstract(aux_head=True)
  assert evaluated.shape == (2, 1000)  # Evaluation: the main head alone.
  rng = np.random.default_rng(0)
  logits, aux = (jnp.asarray(rng.normal(size=(4, 5))) for _ in range(2))
  batch = {"targets": jnp.asarray([0, 1, 2, 3])}
  task = classification.Task(None)
  sums = task.sums({"logits": logits, "aux_logits": aux}, batch)
  np.testing.assert_allclose(sums["loss"], task.sums(logits, batch)["loss"] +
                             0.4 * task.sums(aux, batch)["loss"], rtol=1e-6)
  with pytest.raises(ConfigError, match="Mixed_6e's grid of 17x17"):
    _abstract(aux_head=True, size=139, train=True)


def _config(**overrides):
  return config_loader.load(str(_EXPERIMENTS / "inception_digits.py:cpu"),
                            {**_SHORT, **TINY, **overrides})


@pytest.mark.slow
def test_a_digits_run_is_evaluated_exported_and_served(
    tmp_path, capsys):
  from bigmodel_jax import evaluate, export, train
  workdir = str(tmp_path / "run")
  train.train(_config(), workdir, jax.devices()[:1])
  buffer = io.BytesIO()
  Image.fromarray(np.full((8, 8), 128, np.uint8)).save(buffer, "PNG")
  # Explaining and compressing are the image classifiers' (ResNet's and
  # ViT's in the capability matrix); one compilation of Inception is slow.
  expect_cli(evaluate.main, ["--workdir", workdir, "--split", "test"], OK,
             capsys)
  expect_cli(export.main, ["--workdir", workdir, "--format", "hf", "--out",
                           str(tmp_path / "hf")],
             "has no Hugging Face equivalent", capsys)
  expect_cli(export.main, ["--workdir", workdir, "--format", "jax",
                           "--examples", "2", "--out", str(tmp_path / "jax")],
             OK, capsys)
  config = settings.defaults()
  config.update(dict(slots=2, warm_up=False, encoder_window_ms=0.0))
  served = models.load("inception", workdir, config)
  assert served.endpoints == ["classify"]
  probabilities, units = served.classifier.submit(
      served.image_input(buffer.getvalue())).result(60)
  assert len(probabilities) == 10 and units == 1
  assert abs(float(np.sum(probabilities)) - 1) < 1e-4
