"""The generic train and eval steps, jitted once with explicit shardings.

  train_step(state, batch, rng) -> (state, metrics)
  eval_step(variables, batch) -> sums (added up over batches, then summarised)

Nothing here knows what a batch holds or what the loss is: a task
(`loss_task.LossTask`) gives the model's outputs (`apply`), the summed
statistics of a batch (`sums`), the objective and the metrics. This module
does the rest, in pieces an update of its own reuses: the gradient function
(`loss_grads`, replaceable: `grad_fn`), accumulation over microbatches
(`accumulated`), zeroing frozen parameters' gradients (`frozen_zeroed`),
the optimizer update, model state (BatchNorm statistics), the finiteness
flag, donation and shardings.
"""
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from bigmodel_jax.state import TrainState


def loss_grads(task, model):
  """The gradient function of a loss task on one (micro)batch:
  (params, model_state, batch, rng, normalizer) -> (grads, objective, sums,
  model_state). `make_train_step` takes any function of this signature
  (`grad_fn`), so an update that changes how gradients are made (per-example
  clipping and noise for DP-SGD) wraps this one instead of copying it."""

  def grad_fn(params, model_state, batch, rng, normalizer):
    def loss_fn(params):
      outputs, new_state = task.apply(
          model, {"params": params, **model_state}, batch, train=True,
          rngs={"dropout": rng}, mutable=list(model_state))
      sums = task.sums(outputs, batch)
      return task.objective(sums, normalizer), (sums, dict(new_state))
    (objective, (sums, new_state)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    return grads, objective, sums, new_state

  return grad_fn


def accumulated(grad_fn, steps: int):
  """`grad_fn` over `steps` microbatches, summed: example i goes to
  microbatch i mod steps, so each stays spread over the data axes. With an
  objective that divides by whole-batch counts (`task.normalizer`) the sum
  is exactly the big batch's gradient."""
  if steps == 1:
    return grad_fn

  def accumulate(params, model_state, batch, rng, normalizer):
    micro = jax.tree.map(
        lambda x: x.reshape(x.shape[0] // steps, steps,
                            *x.shape[1:]).swapaxes(0, 1), batch)

    def body(carry, inputs):
      *totals, model_state = carry
      i, microbatch = inputs
      *out, model_state = grad_fn(params, model_state, microbatch,
                                  jax.random.fold_in(rng, i), normalizer)
      return (*jax.tree.map(jnp.add, tuple(totals), tuple(out)),
              model_state), None

    zeros = jax.tree.map(  # Zeros shaped like one microbatch's outputs.
        lambda x: jnp.zeros(x.shape, x.dtype),
        jax.eval_shape(grad_fn, params, model_state,
                       jax.tree.map(lambda x: x[0], micro), rng,
                       normalizer)[:3])
    (*totals, model_state), _ = jax.lax.scan(
        body, (*zeros, model_state), (jnp.arange(steps), micro))
    return (*totals, model_state)

  return accumulate


def frozen_zeroed(grads, trainable):
  """`grads` with frozen parameters' gradients zero (`trainable`: params ->
  bools, see optim.trainable; None: all train), so XLA never computes them."""
  if trainable is None:
    return grads
  return jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads,
                      trainable(grads))


def make_train_step(task, model, tx: optax.GradientTransformation,
                    learning_rate: optax.Schedule, grad_accum_steps: int = 1,
                    trainable=None, grad_fn=None):
  """The pure update (state, batch, rng) -> (state, metrics) of a LossTask:
  `grad_fn` (default `loss_grads`), `accumulated` over `grad_accum_steps`
  microbatches, `frozen_zeroed`, then the optimizer."""
  compute = accumulated(grad_fn or loss_grads(task, model), grad_accum_steps)

  def train_step(state: TrainState, batch: dict, rng):
    rng = jax.random.fold_in(rng, state.step)
    grads, objective, sums, model_state = compute(
        state.params, state.model_state, batch, rng, task.normalizer(batch))
    grads = frozen_zeroed(grads, trainable)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    metrics = {f"train/{k}": v for k, v in task.train_metrics(sums).items()}
    metrics.update({
        "train/grad_norm": grad_norm,
        "train/learning_rate": learning_rate(state.step),
        "finite": jnp.isfinite(objective) & jnp.isfinite(grad_norm),
    })
    return TrainState(step=state.step + 1, params=params,
                      model_state=model_state, opt_state=opt_state), metrics

  return train_step


def make_eval_step(task, model):
  """(variables, batch) -> the task's eval sums of one batch; with the
  batch's "groups" ((B, G) weights: `grouped.py`), also the sums of each
  group under "groups" (leading axis G)."""

  def eval_step(variables, batch: dict) -> dict:
    outputs = task.apply(model, variables, batch, train=False)
    sums = task.eval_sums(outputs, batch)
    if "groups" in batch:
      sums["groups"] = group_sums(task, outputs, batch)
    return sums

  return eval_step


def group_sums(task, outputs, batch: dict) -> dict:
  """The task's eval sums of each group: weights = the group's column."""
  targets = batch["targets"]

  def of_group(weights):
    weights = weights.reshape(weights.shape + (1,) * (targets.ndim - 1))
    return task.eval_sums(outputs, {**batch, "weights": jnp.broadcast_to(
        weights, targets.shape)})

  return jax.vmap(of_group, in_axes=1)(batch["groups"])


def jit_steps(factory, train_step, eval_step):
  """Jits both steps with explicit in/out shardings; the state is donated.

  Every batch array is split over the "batch" rule's mesh axes (data x fsdp
  by default) on its leading axis.
  """
  layout = factory.layout
  batch_sh = layout.batch_sharding()
  replicated = NamedSharding(layout.mesh, P())
  train = layout.in_context(jax.jit(
      train_step, in_shardings=(factory.shardings, batch_sh, replicated),
      out_shardings=(factory.shardings, replicated), donate_argnums=0))
  variables_sh = {"params": factory.shardings.params,
                  **factory.shardings.model_state}
  evaluate = layout.in_context(jax.jit(
      eval_step, in_shardings=(variables_sh, batch_sh),
      out_shardings=replicated))
  return train, evaluate


def jit_eval_step(eval_step, variables, layout):
  """`eval_step` jitted for `variables` as they are sharded (a loaded run)."""
  return layout.in_context(jax.jit(
      eval_step, in_shardings=(jax.tree.map(lambda x: x.sharding, variables),
                               layout.batch_sharding()),
      out_shardings=NamedSharding(layout.mesh, P())))


def evaluate(eval_step, variables, batches, layout) -> dict:
  """Summed eval outputs (numpy) over an iterable of host-local batches.

  The host waits for the total before last (see `bounded`)."""
  total = None
  for batch in batches:
    sums = eval_step(variables, layout.global_batch(batch))
    total = (sums if total is None else
             jax.tree.map(jnp.add, bounded(total), sums))
  return jax.device_get(total)


def bounded(outputs):
  """`outputs` once computed: loops call it on the step before the one just
  dispatched, so at most two steps are in flight. Unbounded queues of steps
  with collectives deadlock XLA:CPU's multi-device runtime (JAX 0.10) within
  tens of steps; on accelerators it keeps the queue short at no cost."""
  return jax.block_until_ready(outputs)
