"""Image generators and their measured quality: the Fréchet distance equals
its closed form, DCGANs (and their class-conditional variant) train both
players on every mesh alike, and the generated_images evaluator scores any
run that generates images with a trained classifier."""
import base64
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from PIL import Image

from bigmodel_jax import config_loader, experiment, metric_writer, runs, train
from bigmodel_jax.evaluators import generated_images
from bigmodel_jax.models import gan
from bigmodel_jax.serving import process
from bigmodel_jax.serving.ledger import Ledger
from conftest import (_EXPERIMENTS, _SHORT, check_every_command,
                      model_server, run_steps)


def _config(spec, **overrides):
  return config_loader.load(str(_EXPERIMENTS / spec), overrides)


def test_the_frechet_distance_is_the_closed_form_of_gaussians():
  """For covariances with common eigenvectors the distance is
  |m_a - m_b|^2 + sum (sqrt(a_i) - sqrt(b_i))^2."""
  rng = np.random.default_rng(0)
  rotation, _ = np.linalg.qr(rng.normal(size=(5, 5)))
  a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
  mean_a, mean_b = rng.normal(size=5), rng.normal(size=5)
  distance = generated_images.frechet_distance(
      mean_a, rotation @ np.diag(a) @ rotation.T, mean_b,
      rotation @ np.diag(b) @ rotation.T)
  expected = np.sum((mean_a - mean_b) ** 2) + np.sum(
      (np.sqrt(a) - np.sqrt(b)) ** 2)
  assert distance == pytest.approx(expected, rel=1e-6)
  same = rng.normal(size=(400, 3))
  assert generated_images.features_distance(same, same) == pytest.approx(
      0, abs=1e-6)
  # Fitted Gaussians of large samples approach the closed form.
  big_a = rng.normal(size=(200_000, 2)) * [1.0, 2.0]
  big_b = rng.normal(size=(200_000, 2)) * [3.0, 1.0] + [1.0, 0.0]
  assert generated_images.features_distance(big_a, big_b) == pytest.approx(
      1 + 4 + 1, rel=0.02)


@pytest.mark.parametrize("variant", ["dcgan", "dcgan-cond", "mlp"])
def test_generators_make_images_and_read_labels_when_conditional(variant):
  model = gan.make(gan.model_config(variant, image_size=8, channels=1,
                                    num_classes=10, latent_dim=6))
  images = jax.random.uniform(jax.random.key(2), (4, 8, 8, 1), minval=-1)
  z = jax.random.normal(jax.random.key(0), (4, 6))
  labels = jnp.arange(4)
  params = nn.unbox(model.init(jax.random.key(1), images, z, labels))
  assert set(params["params"]) == {"generator", "discriminator"}
  out = model.apply(params, images, z, labels)
  assert out["images"].shape == images.shape and out["logits"].shape == (4,)
  assert float(jnp.abs(out["images"]).max()) <= 1
  other = model.apply(params, images, z, labels[::-1])
  conditional = gan.VARIANTS[variant].get("conditional", False)
  assert (not np.allclose(other["images"], out["images"])) == conditional
  assert (not np.allclose(other["logits"], out["logits"])) == conditional


def test_a_dcgan_needs_a_size_it_can_double_to():
  with pytest.raises(Exception, match="multiple of 4"):
    gan.make(gan.model_config("dcgan", image_size=10, channels=1))


def test_the_dcgan_update_trains_both_players():
  config = _config("gan_digits.py:cond", **{"optimizer.warmup_steps": 1})
  _, exp, state = run_steps(config, jax.devices()[:1], steps=0)
  before = jax.tree.map(np.asarray, state.params)
  batch = exp.global_batch(exp.data.train_batch(0))
  state, metrics = exp.train_step(state, batch, jax.random.key(1))
  assert bool(metrics["finite"])
  for network in ("generator", "discriminator"):
    moved = jax.tree.leaves(jax.tree.map(
        lambda a, b: not np.allclose(a, b), before[network],
        jax.tree.map(np.asarray, state.params[network])))
    assert all(moved), network  # Every tensor of both players moved.


def test_the_r1_penalty_is_its_definition_on_real_images():
  """d_loss grows by r1_weight / 2 x the mean over real images of
  |d logit / d image|^2, computed here by finite differences. (The weight
  is large so the penalty of a freshly initialised discriminator stands
  well above float32's rounding of the loss.)"""
  def first_step(weight):
    config = _config("gan_digits.py:cond", **{"gan.r1_weight": weight,
                                               "input.batch_size": 4})
    _, exp, state = run_steps(config, jax.devices()[:1], steps=0)
    batch = exp.global_batch(exp.data.train_batch(0))
    params = jax.tree.map(np.asarray, state.params)
    _, metrics = exp.train_step(state, batch, jax.random.key(1))
    return exp, params, batch, float(metrics["train/d_loss"])

  exp, params, batch, plain = first_step(0.0)
  *_, penalised = first_step(2e4)
  real = np.asarray(batch["inputs"], np.float64)
  logit = lambda x: np.asarray(exp.model.apply(
      {"params": params}, jnp.asarray(x, jnp.float32), batch["targets"],
      method="discriminate"), np.float64)
  squared, eps = np.zeros(len(real)), 1e-3
  for index in np.ndindex(real.shape[1:]):
    step = np.zeros_like(real)
    step[(slice(None),) + index] = eps
    squared += ((logit(real + step) - logit(real - step)) / (2 * eps)) ** 2
  assert penalised - plain == pytest.approx(1e4 * squared.mean(), rel=1e-3)


def test_every_mesh_gives_the_single_device_losses():
  """Both players' losses, step after step."""
  def losses(**mesh):
    config = _config("gan_digits.py:cond", **{"input.batch_size": 32,
                                               **mesh})
    _, exp, state = run_steps(config, None if mesh else jax.devices()[:1],
                              steps=0)
    out = []
    for step in range(3):
      batch = exp.global_batch(exp.data.train_batch(step))
      state, metrics = exp.train_step(state, batch, jax.random.key(1))
      out.append((float(metrics["train/d_loss"]),
                  float(metrics["train/g_loss"])))
    return out

  np.testing.assert_allclose(
      losses(**{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}), losses(),
      rtol=2e-5)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
  """A small digits classifier run (all ten classes)."""
  workdir = str(tmp_path_factory.mktemp("classifier"))
  train.train(_config("resnet_digits.py:cpu", **{
      **_SHORT, "total_steps": 80, "eval_every_steps": 80,
      "checkpoint_every_steps": 80, "model.width": 4}), workdir,
      jax.devices()[:1])
  return workdir


def _generated(workdir) -> list:
  return [r for r in metric_writer.read_jsonl(workdir)
          if "generated/fid" in r]


@pytest.mark.slow
def test_a_trained_generator_is_nearer_the_digits_than_its_start(
    classifier, tmp_path):
  """A VAE's samples (any run that generates images), scored at step 0's
  parameters and after training, by the classifier's features."""
  workdir = str(tmp_path / "vae")
  train.train(_config("vae_digits.py:cpu", **{
      **_SHORT, "total_steps": 600, "eval_every_steps": 600,
      "checkpoint_every_steps": 600, "optimizer.warmup_steps": 10}), workdir,
      jax.devices()[:1])
  config = config_loader.load_json(f"{workdir}/config.json")
  config.evals.generated = {"name": "generated_images",
                            "classifier": classifier, "num_samples": 300}
  exp = experiment.build(config, jax.devices()[:1])
  evaluator = exp.evaluators()["generated"]
  start = evaluator(exp.factory.init(jax.random.key(0)).variables)[0]
  trained = evaluator(runs.load(workdir).variables)[0]
  assert 0 < trained["fid_floor"] < trained["fid"] < start["fid"]
  assert trained["coverage"] > start["coverage"]
  assert 0 < trained["class_entropy"] <= 1 and "label_accuracy" not in trained


@pytest.mark.slow
def test_a_conditional_dcgan_is_scored_per_checkpoint_and_runs_every_command(
    classifier, tmp_path, capsys):
  workdir = str(tmp_path / "cond")
  train.train(_config(f"gan_digits.py:cond:{classifier}", **{
      **_SHORT, "total_steps": 4, "eval_every_steps": 2,
      "checkpoint_every_steps": 2, "evals.generated.every_steps": 2,
      "evals.generated.num_samples": 100}), workdir, jax.devices()[:1])
  scored = _generated(workdir)
  assert [r["step"] for r in scored] == [2, 4]
  assert {"fid", "fid_floor", "coverage", "class_entropy", "confidence",
          "label_accuracy"} == {k.split("/")[1] for k in scored[-1]
                                if k != "step"}
  check_every_command(workdir, tmp_path, capsys, split="test", prompt="x",
                      sample="cannot generate",
                      export_hf="has no Hugging Face export",
                      explain="cannot logit lens")


@pytest.mark.slow
def test_the_images_route_draws_the_class_the_prompt_names(servable,
                                                            tmp_path):
  """OpenAI's client, unmodified: base64 PNGs of the run's size (or a
  multiple), the named class's, the same for the same seed, billed per
  image; a prompt naming no class is a clean 400."""
  import openai
  run = runs.load(servable("gan"))
  with model_server(servable, tmp_path, ["gan"], []) as server:
    client = openai.OpenAI(base_url=server.url + "/v1",
                           api_key=process.create_key(server.db, "tests"))
    answer = client.images.generate(model="gan", prompt="a handwritten 7",
                                    n=3, response_format="b64_json",
                                    extra_body={"seed": 5})
    again = client.images.generate(model="gan", prompt="draw 7 please",
                                   n=3, extra_body={"seed": 5})
    other = client.images.generate(model="gan", prompt="a 3", n=3,
                                   extra_body={"seed": 5})
    large = client.images.generate(model="gan", prompt="7", size="32x32",
                                   extra_body={"seed": 5})
    with pytest.raises(openai.BadRequestError, match="name exactly one of"):
      client.images.generate(model="gan", prompt="a digit")
    with pytest.raises(openai.BadRequestError, match="square multiple"):
      client.images.generate(model="gan", prompt="7", size="12x12")
  pictures = [np.asarray(Image.open(io.BytesIO(base64.b64decode(
      d.b64_json)))) for d in answer.data]
  assert [p.shape for p in pictures] == [(8, 8)] * 3
  assert [d.b64_json for d in again.data] == [d.b64_json
                                              for d in answer.data]
  assert [d.b64_json for d in other.data] != [d.b64_json
                                              for d in answer.data]
  big = np.asarray(Image.open(io.BytesIO(base64.b64decode(
      large.data[0].b64_json))))
  np.testing.assert_array_equal(big[::4, ::4], pictures[0])
  # The model's own images for latents of that seed and the class named.
  z = np.random.default_rng(5).standard_normal((3, 8)).astype(np.float32)
  for images, label in ((answer, 7), (other, 3)):
    own = run.model.apply(run.variables, z, np.full(3, label),
                          method="generate")
    np.testing.assert_array_equal(
        [np.asarray(Image.open(io.BytesIO(base64.b64decode(d.b64_json))))
         for d in images.data],
        np.clip(np.rint((np.asarray(own)[..., 0] + 1) * 127.5), 0, 255))
  rows = [r for r in Ledger(server.db).rows() if r["endpoint"] == "images"]
  assert [(r["unit"], r["output_units"]) for r in rows] == [
      ("images", 3)] * 3 + [("images", 1)]
