"""Autoencoding: the negative ELBO of a VAE, or a plain autoencoder's
reconstruction loss (models/autoencoder.py).

Batch: "inputs" images in [0, 1] (the input's `value_range(0, 1)`); labels
are not used, except by evaluators. Per image, in nats:

  reconstruction = sum over pixels of the Bernoulli cross-entropy
  kl             = KL(q(z|x) || N(0, I)), closed form (0 without logvar)
  loss           = reconstruction + beta * warm-up(step) * kl

`config.vae.beta` weights the KL (a beta-VAE, Higgins et al. 2017), and
`config.vae.kl_warmup_steps` ramps its weight linearly from 0 over the
first steps (Bowman et al. 2016). The update is the generic one: the train
step adds the step's KL weight to the batch (one per example, so
accumulation splits it like the rest). Evaluation uses weight 1 and beta:
`elbo` is the true bound (beta 1), `loss` the objective trained.

Metrics: loss, reconstruction, kl, elbo (nats per image), mse (per pixel,
of the decoded probabilities). Capability "anomaly_scores":
`example_scores` gives each image's negative ELBO (a plain autoencoder's:
its reconstruction cross-entropy) and reconstruction error (the anomaly
evaluator, evaluators/anomaly.py). A plain autoencoder's kl is 0 and its
elbo is minus its cross-entropy, not a bound.
"""
import jax
import jax.numpy as jnp
import ml_collections
import optax

from bigmodel_jax import loss_task

KL_WEIGHT = "kl_weight"


def config_block() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      beta=1.0,  # The KL's weight (1: the ELBO; > 1: a beta-VAE).
      kl_warmup_steps=0,  # The KL's weight ramps from 0 over these steps.
  ))


def per_image(outputs, images) -> dict:
  """Each image's reconstruction cross-entropy, KL and squared error."""
  logits, axes = outputs["logits"], tuple(range(1, images.ndim))
  reconstruction = jnp.sum(optax.sigmoid_binary_cross_entropy(
      logits, images.astype(jnp.float32)), axes)
  logvar = outputs.get("logvar")
  kl = (jnp.zeros_like(reconstruction) if logvar is None else 0.5 * jnp.sum(
      jnp.exp(logvar) + outputs["mean"] ** 2 - 1.0 - logvar, -1))
  error = jnp.mean((jax.nn.sigmoid(logits) - images) ** 2, axes)
  return {"reconstruction": reconstruction, "kl": kl, "error": error}


class Task(loss_task.LossTask):
  name = "vae"
  required_keys = frozenset({"inputs"})
  optional_keys = frozenset({"targets", "weights"})
  capabilities = frozenset({"anomaly_scores"})
  config_block = staticmethod(config_block)

  def __init__(self, config):
    super().__init__(config)
    block = config.get("vae") or config_block()
    self.beta, self.warmup = block.beta, block.kl_warmup_steps

  def sums(self, outputs, batch: dict) -> dict:
    images = batch["inputs"]
    weights = batch.get("weights", jnp.ones(images.shape[:1], jnp.float32))
    kl_weight = batch.get(KL_WEIGHT, jnp.ones_like(weights))
    one = per_image(outputs, images)
    loss = one["reconstruction"] + self.beta * kl_weight * one["kl"]
    return {"loss": jnp.sum(loss * weights),
            "reconstruction": jnp.sum(one["reconstruction"] * weights),
            "kl": jnp.sum(one["kl"] * weights),
            "error": jnp.sum(one["error"] * weights),
            "count": jnp.sum(weights)}

  def normalizer(self, batch: dict):
    weights = batch.get("weights")
    return (jnp.sum(weights) if weights is not None
            else batch["inputs"].shape[0])

  def train_metrics(self, sums: dict) -> dict:
    count = sums["count"]
    reconstruction, kl = sums["reconstruction"] / count, sums["kl"] / count
    return {"loss": sums["loss"] / count, "reconstruction": reconstruction,
            "kl": kl, "elbo": -(reconstruction + kl),
            "mse": sums["error"] / count}

  def example_scores(self, outputs, batch: dict) -> dict:
    """Per image, higher = more anomalous: the negative ELBO (a plain
    autoencoder's cross-entropy) and the squared error."""
    one = per_image(outputs, batch["inputs"])
    if "logvar" not in outputs:
      return {"cross_entropy": one["reconstruction"],
              "reconstruction_error": one["error"]}
    return {"neg_elbo": one["reconstruction"] + one["kl"],
            "reconstruction_error": one["error"]}

  def train_step(self, model, tx, trainable):
    step = super().train_step(model, tx, trainable)

    def train_step(state, batch: dict, rng):
      ramp = (jnp.minimum(1.0, state.step / self.warmup) if self.warmup
              else jnp.ones(()))
      size = batch["inputs"].shape[0]
      return step(state, {**batch, KL_WEIGHT: jnp.full((size,), ramp)}, rng)

    return train_step
