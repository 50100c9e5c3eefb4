"""Pure train and eval steps, jitted once with explicit shardings.

  train_step(state, batch, rng) -> (state, metrics)
  eval_step(variables, batch) -> sums (added up over batches, then summarised)

A batch holds "inputs" and integer "targets" of matching leading shape
(token-level for language models, one per example for classifiers), an
optional float "weights" that masks targets out of the loss (eval padding),
and for mixup "mix_targets" with "mix", each example's share of "targets".
Entries named in `MODEL_KWARGS` (BERT's "segments") go to the model by name.
A model may return a dict: "logits" are scored against "targets" and each
auxiliary head K (BERT's next-sentence "nsp") against "K_targets", one per
example; the objective adds the auxiliary mean losses to the main one.
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


MODEL_KWARGS = ("segments",)


def apply_model(model: nn.Module, variables, batch: dict, **kwargs):
  return model.apply(variables, batch["inputs"], **kwargs,
                     **{k: batch[k] for k in MODEL_KWARGS if k in batch})


def cross_entropy(outputs, batch) -> dict:
  """Summed loss, correct predictions and target count over a batch; an
  auxiliary head K adds the same as "K/loss", "K/correct", "K/count"."""
  if not isinstance(outputs, dict):
    return _sums(outputs, batch)
  sums = _sums(outputs["logits"], batch)
  for name, logits in outputs.items():
    if name != "logits":
      aux = _sums(logits, {"targets": batch[f"{name}_targets"]})
      sums.update({f"{name}/{k}": v for k, v in aux.items()})
  return sums


def objective(sums: dict, count, batch_shapes: dict):
  """The loss to differentiate: the main summed loss over `count` (its
  total weight in the whole batch) plus each auxiliary head's summed loss
  over its number of targets in the whole batch. Sums over microbatches of
  it are the whole batch's loss."""
  loss = sums["loss"] / count
  for key in sums:
    if key.endswith("/loss"):
      name = key[:-len("/loss")]
      loss += sums[key] / batch_shapes[f"{name}_targets"][0]
  return loss


def _sums(logits, batch) -> dict:
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
                    learning_rate: optax.Schedule, grad_accum_steps: int = 1,
                    trainable=None):
  """The pure update (state, batch, rng) -> (state, metrics).

  With `grad_accum_steps` k > 1 the batch is split into k microbatches
  (example i goes to microbatch i mod k, so each stays spread over the data
  axes) whose summed gradients make one update equal to the big-batch one.
  `trainable` (params -> bools, see optim.trainable) zeroes the gradients of
  frozen parameters, so XLA never computes them.
  """

  def grads_and_sums(params, model_state, batch, rng, count, shapes):
    def loss_fn(params):
      outputs, new_state = apply_model(
          model, {"params": params, **model_state}, batch, train=True,
          rngs={"dropout": rng}, mutable=list(model_state))
      sums = cross_entropy(outputs, batch)
      return objective(sums, count, shapes), (sums, dict(new_state))
    (_, (sums, new_state)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    return grads, sums, new_state

  def accumulate(params, model_state, batch, rng, count, shapes):
    micro = jax.tree.map(
        lambda x: x.reshape(x.shape[0] // grad_accum_steps, grad_accum_steps,
                            *x.shape[1:]).swapaxes(0, 1), batch)

    def body(carry, inputs):
      grads, sums, model_state = carry
      i, microbatch = inputs
      g, s, model_state = grads_and_sums(
          params, model_state, microbatch, jax.random.fold_in(rng, i), count,
          shapes)
      return (jax.tree.map(jnp.add, grads, g),
              jax.tree.map(jnp.add, sums, s), model_state), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    sums = jax.tree.map(  # Zeros shaped like one microbatch's sums.
        lambda x: jnp.zeros(x.shape, x.dtype),
        jax.eval_shape(grads_and_sums, params, model_state,
                       jax.tree.map(lambda x: x[0], micro), rng, count,
                       shapes)[1])
    (grads, sums, model_state), _ = jax.lax.scan(
        body, (zeros, sums, model_state),
        (jnp.arange(grad_accum_steps), micro))
    return grads, sums, model_state

  def train_step(state: TrainState, batch: dict, rng):
    rng = jax.random.fold_in(rng, state.step)
    compute = grads_and_sums if grad_accum_steps == 1 else accumulate
    count = jnp.sum(batch["weights"]) if "weights" in batch else (
        batch["targets"].size)
    shapes = {k: v.shape for k, v in batch.items()}
    grads, sums, model_state = compute(state.params, state.model_state, batch,
                                       rng, count, shapes)
    if trainable is not None:
      grads = jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads,
                           trainable(grads))
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
    metrics_.update({f"train/{k}": v
                     for k, v in metrics.auxiliary(sums).items()})
    return TrainState(step=state.step + 1, params=params,
                      model_state=model_state, opt_state=opt_state), metrics_

  return train_step


def make_eval_step(model: nn.Module, num_classes: int | None = None):
  """Loss sums; for classifiers (`num_classes`) also the confusion matrix."""

  def eval_step(variables, batch: dict) -> dict:
    outputs = apply_model(model, variables, batch, train=False)
    sums = cross_entropy(outputs, batch)
    if num_classes:
      sums.update(metrics.classification_sums(outputs, batch, num_classes))
    return sums

  return eval_step


def jit_steps(factory, learning_rate, num_classes: int | None = None,
              grad_accum_steps: int = 1, trainable=None):
  """Jits both steps with explicit in/out shardings; the state is donated.

  Every batch array is split over data x fsdp on its leading axis.
  """
  mesh = factory.mesh
  batch_sh = sharding.batch_sharding(mesh)
  replicated = NamedSharding(mesh, P())
  train = sharding.in_context(mesh, jax.jit(
      make_train_step(factory.model, factory.tx, learning_rate,
                      grad_accum_steps, trainable),
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
