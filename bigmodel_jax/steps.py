"""Pure train and eval steps, jitted once with explicit shardings.

  train_step(state, batch, rng) -> (state, metrics)
  eval_step(params, batch) -> metrics (sums, so batches can be added up)

A batch holds "inputs" and integer "targets" of matching leading shape
(token-level for language models, one per example for classifiers) and an
optional float "weights" that masks targets out of the loss.
"""
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from bigmodel_jax import sharding
from bigmodel_jax.state import TrainState


def cross_entropy(logits, batch) -> dict:
  """Summed loss, correct predictions and target count over a batch."""
  targets = batch["targets"]
  weights = batch.get("weights", jnp.ones(targets.shape, jnp.float32))
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return {"loss": jnp.sum(losses * weights),
          "correct": jnp.sum(correct * weights),
          "count": jnp.sum(weights)}


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    learning_rate: optax.Schedule):
  """The pure update (state, batch, rng) -> (state, metrics)."""

  def train_step(state: TrainState, batch: dict, rng):
    rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
      logits = model.apply({"params": params}, batch["inputs"], train=True,
                           rngs={"dropout": rng})
      sums = cross_entropy(logits, batch)
      return sums["loss"] / sums["count"], sums

    (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    metrics = {
        "train/loss": loss,
        "train/accuracy": sums["correct"] / sums["count"],
        "train/grad_norm": grad_norm,
        "train/learning_rate": learning_rate(state.step),
        "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm),
    }
    return TrainState(step=state.step + 1, params=params,
                      opt_state=opt_state), metrics

  return train_step


def make_eval_step(model: nn.Module):
  def eval_step(params, batch: dict) -> dict:
    logits = model.apply({"params": params}, batch["inputs"], train=False)
    return cross_entropy(logits, batch)

  return eval_step


def jit_steps(factory, learning_rate, batch_example: dict):
  """Jits both steps with explicit in/out shardings; the state is donated."""
  mesh = factory.mesh
  batch_sh = {k: sharding.batch_sharding(mesh, v.ndim)
              for k, v in batch_example.items()}
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  train = sharding.in_context(mesh, jax.jit(
      make_train_step(factory.model, factory.tx, learning_rate),
      in_shardings=(factory.shardings, batch_sh, replicated),
      out_shardings=(factory.shardings, replicated),
      donate_argnums=0))
  evaluate = sharding.in_context(mesh, jax.jit(
      make_eval_step(factory.model),
      in_shardings=(factory.shardings.params, batch_sh),
      out_shardings=replicated))
  return train, evaluate


def evaluate(eval_step, params, batches, mesh) -> dict:
  """Mean loss and accuracy over an iterable of (host-local) batches."""
  total = None
  for batch in batches:
    sums = eval_step(params, sharding.global_batch(batch, mesh))
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  total = jax.device_get(total)
  return {"loss": float(total["loss"] / total["count"]),
          "accuracy": float(total["correct"] / total["count"])}
