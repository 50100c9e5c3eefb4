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


def make(config, total_steps: int) -> optax.GradientTransformation:
  """AdamW with global-norm clipping and the warmup+cosine schedule."""
  lr = schedule(config, total_steps)
  return optax.chain(
      optax.clip_by_global_norm(config.grad_clip_norm),
      optax.adamw(lr, b1=config.b1, b2=config.b2, eps=config.eps,
                  weight_decay=config.weight_decay, mask=decay_mask),
  )
