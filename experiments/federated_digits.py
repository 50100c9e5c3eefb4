"""Federated and private training of the digits ViT (vit_digits.py's model).

  python -m bigmodel_jax.train --config experiments/federated_digits.py:iid \\
      --workdir runs/fed_iid
  python -m bigmodel_jax.train --config experiments/federated_digits.py:dp_eps3 \\
      --workdir runs/dp_eps3

Federated variants: 50 clients holding the 1,438 training images, 10
sampled per round, 5 local SGD steps of 16 images at learning rate 0.1,
150 rounds; "iid", or label-skewed by Dirichlet(alpha) ("alpha0.1",
"alpha1", "alpha100"), and "fedprox" (alpha 0.1 with mu = 0.1) and
"fedadam" (alpha 0.1, Adam at the server); "user_dp" is the alpha1
federation with user-level DP (noise 1.0, clip 0.5). Private variants
train a smaller ViT (2 layers of width 32) centrally with DP-SGD: SGD with
momentum 0.9 at learning rate 0.5, batches of 256, 600 steps, clip 1, no
mixup, the noise calibrated to spend epsilon 1, 3 or 8 at delta 1e-5
("dp_eps1", "dp_eps3", "dp_eps8"; "dp_none" is the same run without DP).
Every variant runs a loss-threshold membership-inference attack at the
end (membership/auc). Measured figures: docs/federated.md.
"""
import os

import ml_collections

from bigmodel_jax import config_blocks, config_loader

VIT_DIGITS = os.path.join(os.path.dirname(__file__), "vit_digits.py:cpu")

FEDERATED = {"iid": ("iid", 1.0, 0.0, "fedavg"),
             "alpha0.1": ("dirichlet", 0.1, 0.0, "fedavg"),
             "alpha1": ("dirichlet", 1.0, 0.0, "fedavg"),
             "alpha100": ("dirichlet", 100.0, 0.0, "fedavg"),
             "fedprox": ("dirichlet", 0.1, 0.1, "fedavg"),
             "fedadam": ("dirichlet", 0.1, 0.0, "fedadam"),
             "user_dp": ("dirichlet", 1.0, 0.0, "fedavg")}
PRIVATE = {"dp_eps1": 1.0, "dp_eps3": 3.0, "dp_eps8": 8.0, "dp_none": None}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "iid"
  if variant not in FEDERATED and variant not in PRIVATE:
    raise ValueError(f"Unknown variant {variant!r}; use one of "
                     f"{list(FEDERATED) + list(PRIVATE)}.")
  config = config_loader.load_file(VIT_DIGITS)
  config.input.mixup_alpha = 0.0
  config.evals.membership = ml_collections.ConfigDict(dict(
      name="membership", members="train", outsiders="test", every_steps=0))
  if variant in PRIVATE:
    config.total_steps, config.eval_every_steps = 600, 100
    config.checkpoint_every_steps = 600
    config.input.batch_size = 256
    config.model.update(dict(emb_dim=32, num_layers=2, num_heads=2,
                             mlp_dim=64, dropout=0.0))
    config.optimizer = config_blocks.sgd(learning_rate=0.5, warmup_steps=0,
                                         weight_decay=0.0)
    if PRIVATE[variant] is not None:
      config.dp.target_epsilon = PRIVATE[variant]
      config.dp.delta = 1e-5
      config.dp.clip_norm = 1.0
    return config
  kind, alpha, mu, server = FEDERATED[variant]
  config.total_steps, config.eval_every_steps = 150, 10
  config.checkpoint_every_steps, config.log_every_steps = 50, 10
  config.input.batch_size = 16
  config.federated.update(dict(
      clients=50, clients_per_round=10, local_steps=5,
      client_learning_rate=0.1, partition=kind, alpha=alpha, prox_mu=mu,
      server_optimizer=server,
      server_learning_rate=0.01 if server == "fedadam" else 1.0))
  if variant == "user_dp":
    config.dp.level, config.dp.noise_multiplier = "user", 1.0
    config.dp.clip_norm = 0.5
  return config
