"""LoRA fine-tuning of all-MiniLM-L6-v2 on rt-polarity, federated or private.

  python -m bigmodel_jax.train --config experiments/federated_rt.py:federated \\
      --workdir runs/rt_federated
  python -m bigmodel_jax.train --config experiments/federated_rt.py:private \\
      --workdir runs/rt_private

bert_finetune.py's `lora` variant (rank-8 adapters on query/value and the
head train; the rest is frozen and never leaves a Flower client). The
"federated" variant: 20 clients holding the 8,529 training sentences
(Dirichlet(1) over the two labels), 5 sampled per round, 4 local steps of
16 sentences at learning rate 0.2, 40 rounds. "private": centralized
DP-SGD on the adapters, batches of 64, 300 steps, clip 1, noise calibrated
to epsilon 8 at delta 1e-5; "private_federated" adds user-level DP
(noise 0.5, clip 0.5) to the federated variant. Both report the
membership-inference attack's AUC (membership/auc).
"""
import os

import ml_collections

from bigmodel_jax import config_loader

LORA = os.path.join(os.path.dirname(__file__), "bert_finetune.py:lora")
VARIANTS = ("federated", "private", "private_federated")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "federated"
  if variant not in VARIANTS:
    raise ValueError(f"Unknown variant {variant!r}; use one of "
                     f"{list(VARIANTS)}.")
  config = config_loader.load_file(LORA)
  config.model.dropout = 0.0
  config.evals.membership = ml_collections.ConfigDict(dict(
      name="membership", members="train", outsiders="test", every_steps=0))
  if variant == "private":
    config.input.batch_size = 64
    config.total_steps, config.eval_every_steps = 300, 100
    config.dp.update(dict(target_epsilon=8.0, delta=1e-5, clip_norm=1.0))
    return config
  config.input.batch_size = 16
  config.total_steps, config.eval_every_steps = 40, 10
  config.log_every_steps, config.checkpoint_every_steps = 5, 20
  config.federated.update(dict(
      clients=20, clients_per_round=5, local_steps=4,
      client_learning_rate=0.2, partition="dirichlet", alpha=1.0))
  if variant == "private_federated":
    config.dp.update(dict(level="user", noise_multiplier=0.5, clip_norm=0.5))
  return config
