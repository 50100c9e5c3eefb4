"""Building blocks of experiment configs, so experiment files stay short.

  config = config_blocks.base(total_steps=2000, eval_every_steps=250)
  config.input = ...; config.model = gpt.model_config("nano", ...)
  config.optimizer = config_blocks.adamw(learning_rate=1e-3, warmup_steps=100)
"""
import ml_collections
from ml_collections.config_dict import placeholder

from bigmodel_jax import (distill, federated, privacy, pruning, quantization,
                          registry, selection, sharding)


def base(*, total_steps: int, log_every_steps: int = 50,
         eval_every_steps: int = 250, checkpoint_every_steps: int = 500,
         keep_checkpoints: int = 3, seed: int = 0) -> ml_collections.ConfigDict:
  """Loop cadence, seed, the task (None: the model's default), and a
  data-parallel mesh over all devices with the default sharding rules."""
  config = ml_collections.ConfigDict()
  config.seed = seed
  config.total_steps = total_steps
  config.log_every_steps = log_every_steps
  config.eval_every_steps = eval_every_steps
  config.checkpoint_every_steps = checkpoint_every_steps
  config.keep_checkpoints = keep_checkpoints
  config.profile_steps = placeholder(tuple)  # (first, last): TensorBoard trace.
  # Fine-tuning: start from the params of another run's checkpoint, or of a
  # Hugging Face checkpoint directory (models with a `load_hf`).
  config.init_from = ml_collections.ConfigDict(dict(
      workdir=placeholder(str), step=placeholder(int), hf_dir=placeholder(str)))
  config.task = ml_collections.ConfigDict(dict(name=placeholder(str)))
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Logical axis -> mesh axes: None (replicated), "fsdp", "data,fsdp", ...
  config.sharding = ml_collections.ConfigDict({"rules": dict(sharding.RULES)})
  config.grad_accum_steps = 1  # Microbatches per update (same global batch).
  # More evaluators: KEY -> block (evaluators/), beside the task's own.
  config.evals = ml_collections.ConfigDict()
  # Checkpoints chosen by their evaluation (selection.py): the best step
  # kept (--step best), and early stopping.
  config.keep_best = selection.keep_best_block()
  config.early_stopping = selection.early_stopping_block()
  # The settings of the training-time wrappers and of the tasks, each block
  # owned by its module: quantization-aware training, pruning, distillation.
  config.quantization = quantization.config_block()
  config.pruning = pruning.config_block()
  config.distill = distill.config_block()
  config.federated = federated.config_block()  # Rounds of clients.
  config.dp = privacy.config_block()  # Differential privacy.
  for name, block in registry.task_blocks().items():
    config[name] = block
  return config


def adamw(*, learning_rate: float, warmup_steps: int,
          min_learning_rate: float = 0.0, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, weight_decay: float = 0.1,
          grad_clip_norm: float = 1.0) -> ml_collections.ConfigDict:
  """`config.optimizer`: AdamW, warmup then cosine decay (see optim.py)."""
  return ml_collections.ConfigDict(dict(
      name="adamw",
      learning_rate=learning_rate,
      min_learning_rate=min_learning_rate,
      warmup_steps=warmup_steps,
      decay_steps=placeholder(int),  # None: total_steps.
      b1=b1, b2=b2, eps=eps,
      weight_decay=weight_decay,
      grad_clip_norm=grad_clip_norm,
      trainable="all",  # Or a model preset / path regex (optim.trainable).
  ))


def sgd(*, learning_rate: float, warmup_steps: int, momentum: float = 0.9,
        nesterov: bool = False, weight_decay: float = 1e-4,
        min_learning_rate: float = 0.0, grad_clip_norm: float = 1e9
        ) -> ml_collections.ConfigDict:
  """`config.optimizer`: SGD + momentum, L2 decay, warmup then cosine."""
  return ml_collections.ConfigDict(dict(
      name="sgd", learning_rate=learning_rate,
      min_learning_rate=min_learning_rate, warmup_steps=warmup_steps,
      decay_steps=placeholder(int), momentum=momentum, nesterov=nesterov,
      weight_decay=weight_decay, grad_clip_norm=grad_clip_norm,
      trainable="all"))


def image_input(name: str, *, batch_size: int, image_size: int,
                channels: int, train_pp: str, eval_pp: str,
                **fields) -> ml_collections.ConfigDict:
  """`config.input` of an image classifier (`dataio/images.py`)."""
  return ml_collections.ConfigDict({
      "name": name, "batch_size": batch_size, "image_size": image_size,
      "channels": channels, "train_pp": train_pp, "eval_pp": eval_pp,
      "mixup_alpha": 0.0,  # > 0: mixup with Beta(alpha, alpha) shares.
      "num_workers": 0,  # Preprocessing threads (0: in the prefetch thread).
      # Cross-validation (dataio/folds.py, sweep --folds K): fold `fold` of
      # the train split's `num_folds` is the eval split; None: off.
      "num_folds": placeholder(int), "fold": 0, "split_seed": 0,
      # Labels the train split leaves out (anomaly detection: unseen).
      "train_without_classes": (),
      **labelled_fields(), **fields})


def char_input(*, seq_len, batch_size: int, eval_steps: int
               ) -> ml_collections.ConfigDict:
  """`config.input` of a character model on tiny_shakespeare (`char_lm`);
  `seq_len` may be a FieldReference the model's block size shares."""
  return ml_collections.ConfigDict(dict(
      name="char_lm",
      dataset="tiny_shakespeare",
      data_dir=placeholder(str),  # None: $TFDS_DATA_DIR.
      train_split="train",
      eval_split="validation",
      test_split=placeholder(str),  # E.g. "test".
      seq_len=seq_len,
      batch_size=batch_size,  # Global batch.
      eval_steps=eval_steps,
  ))


def labelled_fields() -> dict:
  """`config.input` keys of every classification input: per-group
  evaluation (`dataio/groups.py`) and corrected labels
  (`dataio/label_overrides.py`)."""
  return {"groups": placeholder(str), "label_overrides": placeholder(str)}
