"""Adversarial training (GAN): alternating discriminator and generator updates.

The model has `generate(z, labels)` and `discriminate(images, labels)` and
parameters {"generator", "discriminator"} (models/gan.py). Each step first
updates the discriminator to tell the batch's "inputs" (real images) from
generated ones, then the generator, against the updated discriminator, to
make it call its images real (the non-saturating logistic losses of
Goodfellow et al. 2014). `config.gan.r1_weight` adds the R1 penalty
(Mescheder et al. 2018) to the discriminator's loss: r1_weight / 2 times
the squared norm of its logit's gradient with respect to each real image,
which keeps it from growing sharp enough to starve the generator of
gradient (0: none). Generated images take the real images' labels
("targets"), which a class-conditional model reads and others ignore.
Each network has its own optimizer state (`optim.per_part`, one optimizer
config).

This task is the example of the hook for updates that are not one loss and
one optimizer: it defines `optimizer` and `train_step` itself and uses
nothing of `steps.make_train_step`.
Metrics: d_loss, g_loss, d_real and d_fake (mean probability the
discriminator gives real and generated images); on evaluation also
d_accuracy on real images and on images from fixed latents.
"""
import jax
import jax.numpy as jnp
import ml_collections
import optax

from bigmodel_jax import loss_task, optim
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.state import TrainState

NETWORKS = ("discriminator", "generator")


def config_block() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      r1_weight=0.0,  # The R1 penalty on real images' gradients (0: none).
  ))


class Task(loss_task.ModelCall):
  name = "gan"
  required_keys = frozenset({"inputs"})
  optional_keys = frozenset({"targets", "weights", "mix_targets", "mix"})
  config_block = staticmethod(config_block)

  def __init__(self, config):
    super().__init__(config)
    self.latent_dim = config.model.latent_dim
    self.r1_weight = (config.get("gan") or config_block()).r1_weight

  def model_args(self, batch: dict) -> tuple:
    """The real images, fixed latents (one per image) and the labels: the
    model discriminates the images and generates from the latents."""
    images = batch["inputs"]
    return (images, self._latents(jax.random.key(0), images.shape[0]),
            batch.get("targets"))

  def optimizer(self, trainable):
    if trainable is not None:
      raise ConfigError("The gan task trains both networks; set "
                       "optimizer.trainable='all'.")
    return optim.per_part(
        optim.make(self.config.optimizer, self.config.total_steps), NETWORKS)

  def _latents(self, rng, batch_size: int):
    return jax.random.normal(rng, (batch_size, self.latent_dim))

  def losses(self, model, params, real, z, labels) -> dict:
    """Per-example discriminator and generator losses and logits."""
    fake = model.apply({"params": params}, z, labels, method="generate")
    real_logits = model.apply({"params": params}, real, labels,
                              method="discriminate")
    fake_logits = model.apply({"params": params}, fake, labels,
                              method="discriminate")
    return {"d_loss": jax.nn.softplus(-real_logits) +
                      jax.nn.softplus(fake_logits),
            "g_loss": jax.nn.softplus(-fake_logits),
            "real_logits": real_logits, "fake_logits": fake_logits}

  def train_step(self, model, tx, trainable):
    del trainable  # Refused in `optimizer`.
    schedule = optim.schedule(self.config.optimizer, self.config.total_steps)

    def d_loss(d_params, g_params, real, z, labels):
      params = {"discriminator": d_params,
                "generator": jax.lax.stop_gradient(g_params)}
      out = self.losses(model, params, real, z, labels)
      if not self.r1_weight:
        return jnp.mean(out["d_loss"]), out
      grads = jax.grad(lambda x: jnp.sum(model.apply(
          {"params": params}, x, labels, method="discriminate")))(real)
      penalty = jnp.sum(grads.astype(jnp.float32) ** 2,
                        tuple(range(1, real.ndim)))
      return jnp.mean(out["d_loss"] + self.r1_weight / 2 * penalty), out

    def g_loss(g_params, d_params, real, z, labels):
      params = {"discriminator": d_params, "generator": g_params}
      return jnp.mean(self.losses(model, params, real, z, labels)["g_loss"])

    def train_step(state: TrainState, batch: dict, rng):
      rng = jax.random.fold_in(rng, state.step)
      d_rng, g_rng = jax.random.split(rng)
      real, size = batch["inputs"], batch["inputs"].shape[0]
      labels, params = batch.get("targets"), state.params
      (d_value, out), d_grads = jax.value_and_grad(d_loss, has_aux=True)(
          params["discriminator"], params["generator"], real,
          self._latents(d_rng, size), labels)
      updates, opt_state = tx.update({"discriminator": d_grads},
                                     state.opt_state, params)
      params = {**params, "discriminator": optax.apply_updates(
          params["discriminator"], updates["discriminator"])}
      g_value, g_grads = jax.value_and_grad(g_loss)(
          params["generator"], params["discriminator"], real,
          self._latents(g_rng, size), labels)
      updates, opt_state = tx.update({"generator": g_grads}, opt_state,
                                     params)
      params = {**params, "generator": optax.apply_updates(
          params["generator"], updates["generator"])}
      grad_norm = optax.tree.norm({"d": d_grads, "g": g_grads})
      metrics = {
          "train/d_loss": d_value, "train/g_loss": g_value,
          "train/d_real": jnp.mean(jax.nn.sigmoid(out["real_logits"])),
          "train/d_fake": jnp.mean(jax.nn.sigmoid(out["fake_logits"])),
          "train/grad_norm": grad_norm,
          "train/learning_rate": schedule(state.step),
          "finite": (jnp.isfinite(d_value) & jnp.isfinite(g_value) &
                     jnp.isfinite(grad_norm)),
      }
      return state.replace(step=state.step + 1, params=params,
                           opt_state=opt_state), metrics

    return train_step

  def eval_step(self, model):
    def eval_step(variables, batch: dict) -> dict:
      real = batch["inputs"]
      weights = batch.get("weights", jnp.ones(real.shape[:1], jnp.float32))
      out = self.losses(model, variables["params"], *self.model_args(batch))
      correct = ((out["real_logits"] > 0).astype(jnp.float32) +
                 (out["fake_logits"] < 0).astype(jnp.float32))
      return {"d_loss": jnp.sum(out["d_loss"] * weights),
              "g_loss": jnp.sum(out["g_loss"] * weights),
              "d_correct": jnp.sum(correct * weights),
              "count": jnp.sum(weights)}
    return eval_step

  def summarize(self, totals: dict) -> dict:
    count = float(totals["count"])
    return {"d_loss": float(totals["d_loss"]) / count,
            "g_loss": float(totals["g_loss"]) / count,
            "d_accuracy": float(totals["d_correct"]) / (2 * count)}

