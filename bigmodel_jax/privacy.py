"""Differential privacy: DP-SGD as a gradient function, and the privacy spent.

  config.dp.noise_multiplier = 1.1   # sigma; or dp.target_epsilon = 3.0
  config.dp.clip_norm = 1.0          # C
  config.dp.level = "example"        # or "user" (federated runs: fed/...)

Example level is DP-SGD (Abadi et al. 2016): every example's gradient (of
the trainable parameters only: LoRA adapters and the head under
`optimizer.trainable`) is clipped to norm C, the clipped gradients are
summed, Gaussian noise of standard deviation sigma * C is added and the sum
is divided by the batch size. `wrap` makes any loss task private this way by
replacing its gradient function (`steps.loss_grads`); the optimizer, the
microbatches and the rest of the update are the task's own. In a federated
run the clients train with it. User level (federated runs only) clips and
noises each client's whole update at the server instead (DP-FedAvg,
McMahan et al. 2018: `federated/rounds.py`).

The privacy spent, epsilon at `dp.delta` (default 1 / training examples),
comes from dp-accounting's RDP accountant of the Poisson-subsampled Gaussian
mechanism, composed once per update. Batches here are drawn from shuffled
epochs of fixed size, not by Poisson sampling: the accounting substitutes
Poisson sampling at the same rate (batch / examples), as DP-SGD
implementations commonly do, and the train log says so. Every evaluation
logs `privacy/epsilon`; with `dp.epsilon_budget` a run stops at the last
step within it (`dp.on_budget="stop"`) or warns and goes on ("warn").
Models with state updated in the forward pass (BatchNorm) are refused: their
statistics mix examples, so per-example clipping would not bound anything.
"""
import jax
import jax.numpy as jnp
import ml_collections
import optax
from ml_collections.config_dict import placeholder

from bigmodel_jax import loss_task, steps
from bigmodel_jax.errors import ConfigError

LEVELS = ("example", "user")


def config_block() -> ml_collections.ConfigDict:
  """`config.dp`: off until `noise_multiplier` or `target_epsilon` is set."""
  return ml_collections.ConfigDict(dict(
      level="example", noise_multiplier=placeholder(float),
      target_epsilon=placeholder(float), clip_norm=1.0,
      delta=placeholder(float), epsilon_budget=placeholder(float),
      on_budget="stop"))


def enabled(config) -> bool:
  block = config.get("dp") or {}
  return (block.get("noise_multiplier") is not None or
          block.get("target_epsilon") is not None)


def epsilon(noise_multiplier: float, sampling_rate: float, steps_: int,
            delta: float) -> float:
  """Epsilon of `steps_` Poisson-subsampled Gaussian mechanisms (RDP)."""
  from absl import logging as absl_logging
  from dp_accounting import dp_event, rdp
  if steps_ <= 0:
    return 0.0
  if noise_multiplier == 0:
    return float("inf")
  accountant = rdp.RdpAccountant()
  accountant.compose(dp_event.PoissonSampledDpEvent(
      sampling_rate, dp_event.GaussianDpEvent(noise_multiplier)), steps_)
  verbosity = absl_logging.get_verbosity()  # Orders that fail to converge
  absl_logging.set_verbosity(absl_logging.ERROR)  # are skipped, loudly.
  try:
    return float(accountant.get_epsilon(delta))
  finally:
    absl_logging.set_verbosity(verbosity)


def calibrated(target_epsilon: float, sampling_rate: float, steps_: int,
               delta: float) -> float:
  """The noise multiplier that spends `target_epsilon` in `steps_`."""
  from dp_accounting import dp_event, mechanism_calibration, rdp
  return float(mechanism_calibration.calibrate_dp_mechanism(
      rdp.RdpAccountant, lambda sigma: dp_event.SelfComposedDpEvent(
          dp_event.PoissonSampledDpEvent(
              sampling_rate, dp_event.GaussianDpEvent(sigma)), steps_),
      target_epsilon, delta))


class Accountant:
  """The privacy spent after each update of a run: `events_per_step`
  mechanisms of rate `sampling_rate` per update (local steps of a client)."""

  def __init__(self, block, *, sampling_rate: float, total_steps: int,
               examples: int, what: str, events_per_step: int = 1):
    if not 0 < sampling_rate <= 1:
      raise ConfigError(f"DP sampling rate {sampling_rate:.3g} ({what}) must "
                        "be in (0, 1]: the batch is larger than the data.")
    if block.clip_norm is None or block.clip_norm <= 0:
      raise ConfigError(f"dp.clip_norm={block.clip_norm} must be > 0.")
    self.block, self.rate = block, sampling_rate
    self.per_step, self.what = events_per_step, what
    self.delta = block.delta if block.delta is not None else 1 / examples
    self.noise = block.noise_multiplier
    if self.noise is None:
      self.noise = calibrated(block.target_epsilon, sampling_rate,
                              total_steps * events_per_step, self.delta)
    if self.noise < 0:
      raise ConfigError(f"dp.noise_multiplier={self.noise} must be >= 0.")
    self.total_steps = total_steps
    self.last_step = total_steps
    budget = block.epsilon_budget
    if budget is not None and self.epsilon(total_steps) > budget:
      low, high = 0, total_steps  # epsilon(low) <= budget < epsilon(high)
      while high - low > 1:
        middle = (low + high) // 2
        low, high = ((middle, high) if self.epsilon(middle) <= budget
                     else (low, middle))
      self.last_step = low

  def epsilon(self, step: int) -> float:
    return epsilon(self.noise, self.rate, step * self.per_step, self.delta)

  def spent(self, step: int) -> dict:
    """Scalars logged with every evaluation."""
    return {"epsilon": self.epsilon(step), "delta": self.delta,
            "noise_multiplier": self.noise}

  def describe(self) -> str:
    return (f"DP ({self.what}): noise multiplier {self.noise:.4g}, clip "
            f"{self.block.clip_norm:g}, sampling rate {self.rate:.4g} "
            f"(accounted as Poisson sampling; batches are shuffled epochs), "
            f"epsilon {self.epsilon(self.total_steps):.3g} at delta "
            f"{self.delta:.3g} after {self.total_steps} steps")

  def limit(self) -> tuple[int, str | None]:
    """(the last step to train, a line saying why it is not the last
    configured one, or None)."""
    if self.last_step == self.total_steps:
      return self.total_steps, None
    line = (f"the privacy budget epsilon={self.block.epsilon_budget:g} is "
            f"spent after step {self.last_step} (epsilon "
            f"{self.epsilon(self.total_steps):.3g} at total_steps="
            f"{self.total_steps})")
    if self.block.on_budget == "warn":
      return self.total_steps, f"warning: {line}; training on (dp.on_budget)"
    if self.block.on_budget != "stop":
      raise ConfigError(f"dp.on_budget={self.block.on_budget!r}; use stop "
                        "or warn.")
    return self.last_step, f"{line}: stopping there (dp.on_budget)"


def clipped(tree, clip_norm: float) -> tuple:
  """(`tree` scaled to norm at most `clip_norm`, its norm before)."""
  norm = optax.tree.norm(tree)
  scale = jnp.minimum(1.0, clip_norm / jnp.maximum(norm, 1e-12))
  return jax.tree.map(lambda x: x * scale, tree), norm


def noised(tree, std: float, rng, trainable):
  """`tree` plus Gaussian noise of std `std` on its trainable leaves."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.fold_in(rng, 1 << 30), len(leaves))
  return steps.frozen_zeroed(jax.tree.unflatten(treedef, [
      x + std * jax.random.normal(k, x.shape, x.dtype)
      for x, k in zip(leaves, keys)]), trainable)


def clipped_noised(grad_fn, trainable, clip_norm: float,
                   noise_multiplier: float):
  """`grad_fn` (steps.loss_grads's signature) made DP-SGD's: per-example
  gradients of the trainable parameters clipped to `clip_norm`, summed,
  noised with std `noise_multiplier * clip_norm`, divided by the batch's
  normalizer. The returned sums also hold "clipped" (how many examples'
  gradients were scaled down)."""

  def dp_grad_fn(params, model_state, batch, rng, normalizer):
    if model_state:
      raise ConfigError(f"DP-SGD cannot train a model with state updated in "
                        f"its forward pass ({sorted(model_state)}: e.g. "
                        "BatchNorm mixes the examples of a batch).")
    size = jax.tree.leaves(batch)[0].shape[0]

    def one(example, i):
      grads, objective, sums, _ = grad_fn(
          params, model_state, jax.tree.map(lambda x: x[None], example),
          jax.random.fold_in(rng, i), 1.0)
      grads, norm = clipped(steps.frozen_zeroed(grads, trainable),
                            clip_norm)
      sums = {**sums, "clipped": (norm > clip_norm).astype(jnp.float32)}
      return grads, objective, sums

    grads, objectives, sums = jax.vmap(one)(batch, jnp.arange(size))
    total = noised(jax.tree.map(lambda g: g.sum(0), grads),
                   noise_multiplier * clip_norm, rng, trainable)
    return (jax.tree.map(lambda g: g / normalizer, total),
            objectives.sum() / normalizer,
            jax.tree.map(lambda s: s.sum(0), sums), model_state)

  return dp_grad_fn


def wrap(task, config, data):
  """`task` trained with DP-SGD when `config.dp` asks for example-level DP
  in a centralized run (federated runs: `federated.wrap`), else `task`."""
  if not enabled(config) or config.get("federated", {}).get("clients"):
    return task
  block = config.dp
  if block.level != "example":
    raise ConfigError(f"dp.level={block.level!r} needs a federated run "
                      "(config.federated.clients); centralized runs have "
                      "example-level DP.")
  if config.input.get("mixup_alpha"):
    raise ConfigError("DP-SGD bounds each example's influence, and mixup "
                      "puts an example in two rows: set input.mixup_alpha=0.")
  return Private(task, config, data)


class Private:
  """A loss task whose gradients are DP-SGD's, with its privacy accountant."""

  def __init__(self, task, config, data, *, events_per_step: int = 1,
               sampling_rate: float | None = None,
               examples: int | None = None, what: str = "DP-SGD"):
    if not hasattr(task, "objective"):
      raise ConfigError(f"Task {task.name!r} has its own update: DP-SGD "
                        "needs a loss task.")
    self.task, self.block = task, config.dp
    self.accountant = None  # Without data (planning), nothing to account.
    if data is not None:
      examples = examples or data.train_size()
      self.accountant = Accountant(
          config.dp, examples=examples, total_steps=config.total_steps,
          sampling_rate=(sampling_rate if sampling_rate is not None else
                         config.input.batch_size / examples),
          events_per_step=events_per_step, what=what)

  def __getattr__(self, name):  # Everything else is the task's.
    return getattr(self.task, name)

  def grad_fn(self, model, trainable):
    noise = self.accountant.noise if self.accountant else 0.0
    return clipped_noised(self.task.grad_fn(model, trainable), trainable,
                          self.block.clip_norm, noise)

  def train_metrics(self, sums: dict) -> dict:
    return {**self.task.train_metrics(sums),
            "clipped_fraction": sums["clipped"] / sums["count"]}

  train_step = loss_task.LossTask.train_step
