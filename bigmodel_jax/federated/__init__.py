"""Federated learning: any loss-task experiment trained by simulated clients
on one host, or by real ones through Flower.

  config.federated.clients = 100            # N; None: not federated
  config.federated.clients_per_round = 8    # K, sampled each round
  config.federated.local_steps = 5          # S batches of input.batch_size
  config.federated.partition = "dirichlet"  # iid | dirichlet | contiguous
  config.federated.alpha = 0.1
  config.federated.server_optimizer = "fedavg"  # fedavgm | fedadam
  config.federated.prox_mu = 0.01           # FedProx

A step of the run is a round and `total_steps` counts rounds: checkpoints,
resumption, evaluation of the global model, metrics.jsonl and TensorBoard
are the ordinary run's (`rounds.py` is the update, `partition.py` the
data). `python -m bigmodel_jax.federated server|client` runs the same
rounds across machines (`flower.py`). docs/federated.md has the recipes.
"""
import jax
import ml_collections
from ml_collections.config_dict import placeholder

from bigmodel_jax import privacy
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.federated import partition, rounds


def config_block() -> ml_collections.ConfigDict:
  """`config.federated`: off until `clients` is set."""
  return ml_collections.ConfigDict(dict(
      clients=placeholder(int), clients_per_round=8, local_steps=1,
      client_learning_rate=0.1, server_optimizer="fedavg",
      server_learning_rate=1.0, server_momentum=0.9, server_epsilon=1e-3,
      prox_mu=0.0, partition="iid", alpha=1.0, weighting="examples"))


def enabled(config) -> bool:
  return bool((config.get("federated") or {}).get("clients"))


def wrap(task, config, data):
  """(task, data) trained in federated rounds when `config.federated`
  names clients, else unchanged. Under example-level DP the clients train
  with DP-SGD, accounted per client (the smallest, as if it trained in
  every round: an upper bound); under user-level DP the server is."""
  if not enabled(config):
    return task, data
  block = config.federated
  parts = None if data is None else partition.of_config(block, data,
                                                        config.seed)
  accountant = None
  level = config.dp.level if privacy.enabled(config) else None
  if level not in (None, *privacy.LEVELS):
    raise ConfigError(f"dp.level={level!r}; use one of {privacy.LEVELS}.")
  smallest = min(len(p) for p in parts) if parts else None
  if level == "example":  # Without data (planning): nothing to account.
    task = privacy.Private(
        task, config, data, events_per_step=block.local_steps,
        sampling_rate=smallest and min(1.0, config.input.batch_size /
                                       smallest),
        examples=smallest,
        what="example-level DP-SGD in each client, as if in every round")
    accountant = task.accountant
  elif level == "user" and parts:
    accountant = privacy.Accountant(
        config.dp, examples=block.clients, total_steps=config.total_steps,
        sampling_rate=block.clients_per_round / block.clients,
        what="user-level DP-FedAvg at the server")
  task = rounds.Federated(task, config, accountant)
  if data is not None:
    data = partition.ClientRounds(
        data, block, parts, seed=config.seed,
        batch_size=config.input.batch_size,
        process_index=jax.process_index(), process_count=jax.process_count())
  return task, data
