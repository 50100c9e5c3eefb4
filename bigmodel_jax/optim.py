"""Optimizer and learning-rate schedule, built from `config.optimizer`."""
import jax
import optax


def schedule(config, total_steps: int) -> optax.Schedule:
  """Linear warmup to `learning_rate`, cosine decay to `min_learning_rate`."""
  decay_steps = config.get("decay_steps") or total_steps
  if config.warmup_steps >= decay_steps:
    raise ValueError(f"optimizer.warmup_steps={config.warmup_steps} must be "
                     f"below the decay steps ({decay_steps}).")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate,
      warmup_steps=config.warmup_steps, decay_steps=decay_steps,
      end_value=config.min_learning_rate)


def decay_mask(params):
  """Weight decay on weight matrices and embeddings only, as nanoGPT does."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


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


def make(config, total_steps: int) -> optax.GradientTransformation:
  """`config.name` ("adamw" by default, or "sgd") with global-norm clipping
  and the warmup+cosine schedule."""
  name = config.get("name", "adamw")
  if name not in OPTIMIZERS:
    raise ValueError(f"Unknown optimizer {name!r}; have {list(OPTIMIZERS)}.")
  return optax.chain(
      optax.clip_by_global_norm(config.grad_clip_norm),
      OPTIMIZERS[name](config, schedule(config, total_steps)))
