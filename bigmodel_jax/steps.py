"""Pure train and eval steps, jitted once with explicit shardings.

  train_step(state, batch, rng) -> (state, metrics)
  eval_step(variables, batch) -> sums (added up over batches, then summarised)

A batch holds "inputs" and integer "targets" of matching leading shape
(token-level for language models, one per example for classifiers), an
optional float "weights" that masks targets out of the loss (eval padding),
and for mixup "mix_targets" with "mix", each example's share of "targets".
Models with state besides parameters (BatchNorm statistics) update it in the
train step and read it in the eval step.
"""
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from bigmodel_jax import metrics, sharding
from bigmodel_jax.state import TrainState


def cross_entropy(logits, batch) -> dict:
  """Summed loss, correct predictions and target count over a batch."""
  targets = batch["targets"]
  weights = batch.get("weights", jnp.ones(targets.shape, jnp.float32))
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  if "mix_targets" in batch:  # Mixup: accuracy against the larger share.
    losses = batch["mix"] * losses + (1 - batch["mix"]) * (
        optax.softmax_cross_entropy_with_integer_labels(
            logits, batch["mix_targets"]))
    targets = jnp.where(batch["mix"] >= 0.5, targets, batch["mix_targets"])
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return {"loss": jnp.sum(losses * weights),
          "correct": jnp.sum(correct * weights),
          "count": jnp.sum(weights)}


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    learning_rate: optax.Schedule, grad_accum_steps: int = 1):
  """The pure update (state, batch, rng) -> (state, metrics).

  With `grad_accum_steps` k > 1 the batch is split into k microbatches
  (example i goes to microbatch i mod k, so each stays spread over the data
  axes) whose summed gradients make one update equal to the big-batch one.
  """

  def grads_and_sums(params, model_state, batch, rng):
    def loss_fn(params):
      logits, new_state = model.apply(
          {"params": params, **model_state}, batch["inputs"], train=True,
          rngs={"dropout": rng}, mutable=list(model_state))
      sums = cross_entropy(logits, batch)
      return sums["loss"], (sums, dict(new_state))
    (_, (sums, new_state)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    return grads, sums, new_state

  def accumulate(params, model_state, batch, rng):
    micro = jax.tree.map(
        lambda x: x.reshape(x.shape[0] // grad_accum_steps, grad_accum_steps,
                            *x.shape[1:]).swapaxes(0, 1), batch)

    def body(carry, inputs):
      grads, sums, model_state = carry
      i, microbatch = inputs
      g, s, model_state = grads_and_sums(
          params, model_state, microbatch, jax.random.fold_in(rng, i))
      return (jax.tree.map(jnp.add, grads, g),
              jax.tree.map(jnp.add, sums, s), model_state), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    sums = {"loss": 0.0, "correct": 0.0, "count": 0.0}
    (grads, sums, model_state), _ = jax.lax.scan(
        body, (zeros, jax.tree.map(jnp.float32, sums), model_state),
        (jnp.arange(grad_accum_steps), micro))
    return grads, sums, model_state

  def train_step(state: TrainState, batch: dict, rng):
    rng = jax.random.fold_in(rng, state.step)
    compute = grads_and_sums if grad_accum_steps == 1 else accumulate
    grads, sums, model_state = compute(state.params, state.model_state, batch,
                                       rng)
    grads = jax.tree.map(lambda g: g / sums["count"], grads)  # Of the mean.
    loss = sums["loss"] / sums["count"]
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    metrics_ = {
        "train/loss": loss,
        "train/accuracy": sums["correct"] / sums["count"],
        "train/grad_norm": grad_norm,
        "train/learning_rate": learning_rate(state.step),
        "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm),
    }
    return TrainState(step=state.step + 1, params=params,
                      model_state=model_state, opt_state=opt_state), metrics_

  return train_step


def make_eval_step(model: nn.Module, num_classes: int | None = None):
  """Loss sums; for classifiers (`num_classes`) also the confusion matrix."""

  def eval_step(variables, batch: dict) -> dict:
    logits = model.apply(variables, batch["inputs"], train=False)
    sums = cross_entropy(logits, batch)
    if num_classes:
      sums.update(metrics.classification_sums(logits, batch, num_classes))
    return sums

  return eval_step


def jit_steps(factory, learning_rate, num_classes: int | None = None,
              grad_accum_steps: int = 1):
  """Jits both steps with explicit in/out shardings; the state is donated.

  Every batch array is split over data x fsdp on its leading axis.
  """
  mesh = factory.mesh
  batch_sh = sharding.batch_sharding(mesh)
  replicated = NamedSharding(mesh, P())
  train = sharding.in_context(mesh, jax.jit(
      make_train_step(factory.model, factory.tx, learning_rate,
                      grad_accum_steps),
      in_shardings=(factory.shardings, batch_sh, replicated),
      out_shardings=(factory.shardings, replicated),
      donate_argnums=0))
  variables_sh = {"params": factory.shardings.params,
                  **factory.shardings.model_state}
  evaluate = sharding.in_context(mesh, jax.jit(
      make_eval_step(factory.model, num_classes),
      in_shardings=(variables_sh, batch_sh),
      out_shardings=replicated))
  return train, evaluate


def evaluate(eval_step, state: TrainState, batches, mesh) -> dict:
  """Summed eval outputs (numpy) over an iterable of host-local batches."""
  total = None
  for batch in batches:
    sums = eval_step(state.variables, sharding.global_batch(batch, mesh))
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  return jax.device_get(total)
