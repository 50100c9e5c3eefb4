"""Optimizer and learning-rate schedule, built from `config.optimizer`.

`optimizer.trainable` picks the parameters that train: "all", a preset of
the model module's `trainable_presets` (e.g. BERT's "head", "top2", "lora"),
or a regular expression searched in "/"-joined parameter paths
("layer_5/|classifier"). The others are frozen: `optax.multi_transform` gives
them no optimizer state and zero updates.
"""
import re
from typing import Callable

import jax
import optax
from flax import linen as nn

from bigmodel_jax.errors import ConfigError


def schedule(config, total_steps: int) -> optax.Schedule:
  """Linear warmup to `learning_rate`, cosine decay to `min_learning_rate`.

  Step s < warmup_steps uses learning_rate * (s + 1) / (warmup_steps + 1), as
  nanoGPT does: the first step already learns."""
  decay_steps = config.get("decay_steps") or total_steps
  if config.warmup_steps >= decay_steps:
    raise ConfigError(f"optimizer.warmup_steps={config.warmup_steps} must be "
                     f"below the decay steps ({decay_steps}).")
  return optax.warmup_cosine_decay_schedule(
      init_value=config.learning_rate / (config.warmup_steps + 1),
      peak_value=config.learning_rate,
      warmup_steps=config.warmup_steps, decay_steps=decay_steps,
      end_value=config.min_learning_rate)


def decay_mask(params):
  """Weight decay on weight matrices and embeddings only, as nanoGPT does:
  tensors of two or more axes, except biases (a per-head bias has two)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p: p.ndim >= 2 and getattr(path[-1], "key", "") != "bias",
      params)


def adamw(config, lr) -> optax.GradientTransformation:
  """AdamW; decay is decoupled and scaled by the learning rate (optax)."""
  return optax.adamw(lr, b1=config.b1, b2=config.b2, eps=config.eps,
                     weight_decay=config.weight_decay, mask=decay_mask)


def sgd(config, lr) -> optax.GradientTransformation:
  """SGD with (Nesterov) momentum and L2 weight decay added to the gradient."""
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
      optax.sgd(lr, momentum=config.momentum, nesterov=config.nesterov))


OPTIMIZERS = {"adamw": adamw, "sgd": sgd}


def path_name(path) -> str:
  """"layer_0/query/kernel" for a pytree key path."""
  return "/".join(str(getattr(k, "key", k)) for k in path)


def trainable(config, presets: dict) -> Callable | None:
  """params -> tree of bools (True: trains) for `config.trainable`; None
  when everything trains."""
  choice = config.get("trainable", "all")
  if choice == "all":
    return None
  pattern = re.compile(presets.get(choice, choice))

  def mask(params):
    out = jax.tree_util.tree_map_with_path(  # Boxed params are leaves.
        lambda path, _: bool(pattern.search(path_name(path))), params,
        is_leaf=lambda x: isinstance(x, nn.Partitioned))
    if not any(jax.tree.leaves(out)):
      raise ConfigError(
          f"optimizer.trainable={choice!r} matches no parameter; presets "
          f"{['all', *presets]}, or a regex over paths like "
          f"{path_name(jax.tree_util.tree_flatten_with_path(params)[0][0][0])!r}.")
    return out
  return mask


def make(config, total_steps: int, trainable_mask: Callable | None = None
         ) -> optax.GradientTransformation:
  """`config.name` ("adamw" by default, or "sgd") with global-norm clipping
  and the warmup+cosine schedule, on the `trainable_mask` parameters."""
  name = config.get("name", "adamw")
  if name not in OPTIMIZERS:
    raise ConfigError(f"Unknown optimizer {name!r}; have {list(OPTIMIZERS)}.")
  return masked(optax.chain(
      optax.clip_by_global_norm(config.grad_clip_norm),
      OPTIMIZERS[name](config, schedule(config, total_steps))),
      trainable_mask)


def masked(tx: optax.GradientTransformation, trainable_mask: Callable | None
           ) -> optax.GradientTransformation:
  """`tx` on the `trainable_mask` parameters only (no state for the rest)."""
  if trainable_mask is None:
    return tx
  return optax.multi_transform(
      {"train": tx, "frozen": optax.set_to_zero()},
      lambda params: jax.tree.map(lambda t: "train" if t else "frozen",
                                  trainable_mask(params)))


def per_part(tx: optax.GradientTransformation, parts: tuple
             ) -> optax.GradientTransformation:
  """`tx` on each top-level part of the parameters on its own ({"generator":
  ..., "discriminator": ...}), one state per part. An update touches only
  the parts its gradients hold, so a task can update one part at a time."""

  def init(params):
    return {part: tx.init(params[part]) for part in parts}

  def update(grads, state, params=None):
    updates, state = {}, dict(state)
    for part in grads:
      updates[part], state[part] = tx.update(
          grads[part], state[part], None if params is None else params[part])
    return updates, state

  return optax.GradientTransformation(init, update)
