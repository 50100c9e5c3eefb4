"""Autoencoders and anomaly detection: shapes and parameter counts, the KL
in closed form equals its Monte Carlo estimate and is never negative, the
reparameterised gradient reaches the variance, the KL warms up, training
lowers the ELBO on every mesh alike, a VAE trained without a digit singles
that digit out (and a classifier's max-softmax baseline is scored the same
way), and a trained run goes through every command."""
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from bigmodel_jax import config_loader, metric_writer, train
from bigmodel_jax.models import autoencoder
from bigmodel_jax.tasks import vae
from conftest import _EXPERIMENTS, _SHORT, check_every_command, run_steps

SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "scripts"


def _config(arg="cpu", **overrides):
  return config_loader.load(str(_EXPERIMENTS / "vae_digits.py") + ":" + arg,
                            {"input.batch_size": 64, **overrides})


def _model(variant, **overrides):
  return autoencoder.make(autoencoder.model_config(
      variant, **{"image_size": 8, "channels": 1, **overrides}))


@pytest.mark.parametrize("variant", sorted(autoencoder.VARIANTS))
def test_outputs_have_the_image_and_latent_shapes(variant):
  model = _model(variant, latent_dim=5)
  images = jnp.zeros((3, 8, 8, 1))
  params = nn.unbox(model.init(jax.random.key(0), images))["params"]
  out = model.apply({"params": params}, images)
  assert out["logits"].shape == images.shape
  assert out["mean"].shape == (3, 5)
  assert ("logvar" in out) == autoencoder.VARIANTS[variant].get(
      "variational", True)
  generated = model.apply({"params": params}, jnp.zeros((4, 5)),
                          method="generate")
  assert generated.shape == (4, 8, 8, 1)
  assert float(generated.min()) >= 0 and float(generated.max()) <= 1


def test_the_mlp_vae_counts_its_layers():
  model = _model("mlp", latent_dim=5, hidden_dim=7, num_layers=2)
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1))))
  dense = lambda n, m: n * m + m  # noqa: E731
  expected = (dense(64, 7) + dense(7, 7) + dense(7, 10) +  # Encoder.
              dense(5, 7) + dense(7, 7) + dense(7, 64))    # Decoder.
  assert autoencoder.num_params(params["params"]) == expected


def test_the_convolutional_size_must_halve_evenly():
  with pytest.raises(Exception, match="needs a multiple of 4"):
    _model("conv", image_size=10)


def test_the_kl_is_its_monte_carlo_estimate_and_never_negative():
  rng = np.random.default_rng(0)
  mean = rng.normal(size=(4, 3)).astype(np.float32)
  logvar = rng.normal(size=(4, 3)).astype(np.float32)
  outputs = {"logits": jnp.zeros((4, 8, 8, 1)), "mean": mean,
             "logvar": logvar}
  kl = np.asarray(vae.per_image(outputs, jnp.zeros((4, 8, 8, 1)))["kl"])
  z = mean + np.exp(logvar / 2) * rng.normal(size=(200_000, 4, 3))
  log_q = -0.5 * (((z - mean) ** 2) / np.exp(logvar) + logvar)
  log_p = -0.5 * z ** 2
  np.testing.assert_allclose(kl, (log_q - log_p).sum(-1).mean(0), rtol=0.02)
  assert (kl >= 0).all()
  prior = {**outputs, "mean": np.zeros_like(mean),
           "logvar": np.zeros_like(logvar)}
  np.testing.assert_allclose(
      vae.per_image(prior, jnp.zeros((4, 8, 8, 1)))["kl"], 0, atol=1e-6)


def test_the_reparameterised_gradient_reaches_the_variance():
  """Training samples z with the rng (eval decodes one fixed sample), and
  the loss's gradient flows through the sample into the log-variance's
  weights."""
  model = _model("mlp", latent_dim=4, hidden_dim=16)
  images = jnp.asarray(np.random.default_rng(0).uniform(size=(8, 8, 8, 1)),
                       jnp.float32)
  params = nn.unbox(model.init(jax.random.key(0), images))["params"]
  run = lambda key: model.apply({"params": params}, images, train=True,  # noqa: E731
                                rngs={"dropout": jax.random.key(key)})
  assert not np.allclose(run(1)["logits"], run(2)["logits"])
  evaluated = [model.apply({"params": params}, images)["logits"]
               for _ in range(2)]
  np.testing.assert_array_equal(*evaluated)

  def reconstruction(params):
    out = model.apply({"params": params}, images, train=True,
                      rngs={"dropout": jax.random.key(3)})
    return jnp.sum(vae.per_image(out, images)["reconstruction"])

  kernel = jax.grad(reconstruction)(params)["encoder"]["latent"]["kernel"]
  assert kernel.shape[-1] == 8  # Means, then log-variances.
  assert np.all(np.isfinite(kernel))
  assert float(jnp.abs(kernel[:, 4:]).sum()) > 0  # Through exp(logvar/2)*eps.


def test_the_kl_weight_warms_up_from_zero():
  config = _config(**{"vae.kl_warmup_steps": 4, "optimizer.warmup_steps": 1})
  _, exp, state = run_steps(config, jax.devices()[:1], steps=0)
  logged = []
  for step in range(6):
    batch = exp.global_batch(exp.data.train_batch(step))
    state, metrics = exp.train_step(state, batch, jax.random.key(1))
    logged.append({k: float(v) for k, v in metrics.items()})
  first, last = logged[0], logged[-1]
  assert first["train/kl"] > 0
  assert first["train/loss"] == pytest.approx(first["train/reconstruction"])
  assert last["train/loss"] == pytest.approx(
      last["train/reconstruction"] + last["train/kl"], rel=1e-5)


@pytest.mark.parametrize("arg", ["cpu", "conv", "ae"])
def test_a_short_training_lowers_the_loss(arg):
  losses, _, _ = run_steps(_config(arg, **{"optimizer.warmup_steps": 1}),
                           jax.devices()[:1], steps=60)
  assert np.mean(losses[-5:]) < 0.8 * losses[0], losses


def test_every_mesh_gives_the_single_device_losses():
  """The convolutional VAE, its reparameterisation noise included."""
  config = _config("conv")
  single, _, _ = run_steps(config, jax.devices()[:1])
  sharded, _, _ = run_steps(_config("conv", **{
      "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}))
  np.testing.assert_allclose(sharded, single, rtol=2e-5)


def test_the_train_split_leaves_the_held_out_digit_out():
  _, exp, _ = run_steps(_config("cpu:9"), jax.devices()[:1], steps=0)
  assert 9 not in set(exp.data.train_labels())
  eval_labels = np.concatenate([b["targets"][b["weights"] > 0]
                                for b in exp.data.eval_batches("test")])
  assert 9 in set(eval_labels)


@pytest.fixture(scope="module")
def anomaly_runs(tmp_path_factory):
  """A VAE and a classifier trained without the 9s: their workdirs."""
  root = tmp_path_factory.mktemp("anomaly")
  made = {}
  for arg, steps, more in (("cpu:9", 400, {}),
                           ("classifier:9", 60, {"model.width": 4})):
    workdir = str(root / arg.replace(":", "_"))
    train.train(_config(arg, **{**_SHORT, "total_steps": steps,
                                "eval_every_steps": steps,
                                "checkpoint_every_steps": steps, **more}),
                workdir, jax.devices()[:1])
    made[arg.split(":")[0]] = workdir
  return made


def _anomaly_scalars(workdir):
  return next(r for r in reversed(metric_writer.read_jsonl(workdir))
              if "anomaly/anomaly_share" in r)


@pytest.mark.slow
def test_a_vae_trained_without_a_digit_singles_it_out(anomaly_runs):
  scalars = _anomaly_scalars(anomaly_runs["cpu"])
  assert scalars["anomaly/anomaly_share"] == pytest.approx(36 / 359, abs=0.02)
  for score in ("neg_elbo", "reconstruction_error"):
    assert scalars[f"anomaly/{score}_roc_auc"] > 0.75, scalars
    assert (scalars[f"anomaly/{score}_anomalous"] >
            scalars[f"anomaly/{score}_normal"])
    # Average precision well above the anomalies' share (chance).
    assert scalars[f"anomaly/{score}_pr_auc"] > 2 * scalars[
        "anomaly/anomaly_share"]


@pytest.mark.slow
def test_the_same_evaluator_scores_a_classifiers_max_softmax(anomaly_runs):
  scalars = _anomaly_scalars(anomaly_runs["classifier"])
  assert {k.split("/")[1].rsplit("_", 2)[0] for k in scalars
          if k.endswith("_roc_auc")} == {"max_softmax"}
  assert 0.5 < scalars["anomaly/max_softmax_roc_auc"] <= 1.0


@pytest.mark.slow
def test_a_trained_run_goes_through_every_command(anomaly_runs, tmp_path,
                                                  capsys):
  workdir = anomaly_runs["cpu"]
  check_every_command(workdir, tmp_path, capsys, split="test", prompt="x",
                      sample="cannot generate",
                      export_hf="has no Hugging Face export",
                      explain="cannot logit lens")
  spec = importlib.util.spec_from_file_location(
      "autoencoder_grids", SCRIPTS / "autoencoder_grids.py")
  grids = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(grids)
  grids.main(["--workdir", workdir, "--out", str(tmp_path / "grids.png")])
  assert (tmp_path / "grids.png").stat().st_size > 1000
