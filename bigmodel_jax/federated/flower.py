"""The federated rounds across machines, on Flower (flwr).

  python -m bigmodel_jax.federated server --config C --workdir W \\
      [--address 0.0.0.0:8080]
  python -m bigmodel_jax.federated client --config C --partition K \\
      [--address SERVER:8080]          # one per client, K = 0 .. clients-1

Server and clients build the same experiment from the same config, so
they start from the same parameters (the seed, or `init_from`) and agree
on the partition; each client holds only its partition's data in practice,
and reads only that. Each round the server (a Flower `Strategy`) sends the
trainable parameters (LoRA adapters and the head under
`optimizer.trainable`: the frozen rest never travels) to the round's
sampled clients (`partition.sampled_clients`), each runs
`rounds.Federated.client` on its batches of the round, and the server
applies `rounds.Federated.aggregate` to their updates. These are the
functions a simulated round runs, with the same rngs, so a deployment
gives the simulation's parameters (to float rounding; tested). The server
evaluates the global model every `eval_every_steps` rounds and writes the
workdir of an ordinary run (config, metrics.jsonl, checkpoints): evaluate,
export and serve read it; a restarted server resumes from its newest
checkpoint. This uses Flower's long-standing `start_server` /
`start_client` entry points; docs/federated.md says how Flower's secure
aggregation (SecAgg+) is turned on.
"""
import socket
import time

import flwr
import jax
import jax.numpy as jnp
import numpy as np
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays

from bigmodel_jax import (checkpoints, config_loader, experiment,
                          metric_writer)
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.federated import partition, rounds


def _sent(tree, trainable) -> list:
  """The leaves of `tree` that travel (the trainable ones)."""
  leaves = jax.tree.leaves(tree)
  if trainable is None:
    return leaves
  return [x for x, t in zip(leaves, jax.tree.leaves(trainable(tree))) if t]


def _received(tree, arrays: list, trainable):
  """`tree` with its travelling leaves replaced by `arrays`."""
  leaves, treedef = jax.tree.flatten(tree)
  mask = ([True] * len(leaves) if trainable is None
          else jax.tree.leaves(trainable(tree)))
  if sum(mask) != len(arrays):
    raise ConfigError(f"Received {len(arrays)} arrays for {sum(mask)} "
                      "trainable parameters: server and client configs "
                      "differ.")
  arrays = iter(arrays)
  return jax.tree.unflatten(treedef, [
      jnp.asarray(next(arrays), x.dtype) if m else x
      for x, m in zip(leaves, mask)])


def _federated(config, devices):
  exp = experiment.build(config, devices)
  if not isinstance(exp.task, rounds.Federated):
    raise ConfigError("The config is not federated: set "
                      "config.federated.clients.")
  return exp


class Client(flwr.client.NumPyClient):
  """A Flower client training partition `index` of the run's data."""

  def __init__(self, config, index: int, devices=None):
    self.exp = exp = _federated(config, devices)
    block = exp.config.federated
    if not 0 <= index < block.clients:
      raise ConfigError(f"--partition {index} is not one of the "
                        f"{block.clients} clients (0 .. {block.clients - 1}).")
    self.index, self.block = index, block
    self.state, _ = exp.initial_state()
    self.update = jax.jit(exp.task.client(exp.model, exp.trainable))

  def get_properties(self, config):
    return {"partition": self.index}

  def fit(self, parameters, config):
    exp, block = self.exp, self.block
    round_, position = int(config["round"]), int(config["position"])
    batch = exp.data.train_examples(
        exp.data.client_rows(self.index, round_), round_)
    batches = {k: np.asarray(v).reshape(block.local_steps, -1, *v.shape[1:])
               for k, v in batch.items()}
    rng = rounds.client_rngs(jax.random.fold_in(exp.rngs()[1], round_),
                             block.clients_per_round)[position]
    params = _received(self.state.params, parameters, exp.trainable)
    delta, model_state, sums = self.update(params, self.state.model_state,
                                           batches, rng)
    arrays = [np.asarray(x) for x in
              _sent(delta, exp.trainable) + jax.tree.leaves(model_state)]
    return (arrays, len(exp.data.parts[self.index]),
            {k: float(v) for k, v in sums.items()})


class Strategy(flwr.server.strategy.Strategy):
  """The server's half of the rounds, with an ordinary run's workdir."""

  def __init__(self, config, workdir: str, devices=None):
    self.exp = exp = _federated(config, devices)
    self.config, self.block = exp.config, exp.config.federated
    self.workdir, self.proxies = workdir, {}
    self.mgr = checkpoints.manager(workdir, keep=self.config.keep_checkpoints)
    self.state = checkpoints.restore(self.mgr, exp.factory.abstract)
    if self.state is None:
      self.state, _ = exp.initial_state()
    self.start = int(self.state.step)
    self.writer = metric_writer.MetricWriter(workdir, self.start)
    config_loader.save_run_config(self.config, workdir, self.start)
    exp.data.save(workdir)
    self.aggregate = jax.jit(exp.task.aggregate(exp.tx, exp.trainable))
    self.began = time.perf_counter()

  @property
  def rounds(self) -> int:
    """Rounds left to train (Flower counts from 1 in every server run)."""
    return self.config.total_steps - self.start

  def initialize_parameters(self, client_manager):
    return ndarrays_to_parameters(
        [np.asarray(x) for x in _sent(self.state.params,
                                      self.exp.trainable)])

  def _partition_proxies(self, client_manager) -> dict:
    """Partition index -> the connected client that trains it."""
    clients = self.block.clients
    if not client_manager.wait_for(clients, timeout=600):
      raise ConfigError(f"Fewer than {clients} clients connected in 600 s.")
    for proxy in client_manager.all().values():
      if proxy.cid not in {p.cid for p in self.proxies.values()}:
        properties = proxy.get_properties(
            flwr.common.GetPropertiesIns({}), timeout=60, group_id=None)
        self.proxies[int(properties.properties["partition"])] = proxy
    return self.proxies

  def configure_fit(self, server_round, parameters, client_manager):
    round_ = self.start + server_round - 1
    proxies = self._partition_proxies(client_manager)
    chosen = partition.sampled_clients(self.block.clients,
                                       self.block.clients_per_round,
                                       self.config.seed, round_)
    return [(proxies[int(k)], FitIns(parameters, {"round": round_,
                                                  "position": i}))
            for i, k in enumerate(chosen)]

  def aggregate_fit(self, server_round, results, failures):
    if failures:
      raise RuntimeError(f"{len(failures)} client(s) failed in round "
                         f"{server_round}: {failures[0]!r}")
    round_ = self.start + server_round - 1
    index = {proxy.cid: k for k, proxy in self.proxies.items()}
    chosen = [int(k) for k in partition.sampled_clients(
        self.block.clients, self.block.clients_per_round, self.config.seed,
        round_)]
    by_client = {index[proxy.cid]: fit for proxy, fit in results}
    fits = [by_client[k] for k in chosen]
    weights = partition.client_weights([fit.num_examples for fit in fits],
                                       self.block.weighting)
    sent = len(_sent(self.state.params, self.exp.trainable))
    stacked = [np.stack(a) for a in zip(*[parameters_to_ndarrays(
        fit.parameters) for fit in fits])]
    deltas = _received(jax.tree.map(jnp.zeros_like, self.state.params),
                       stacked[:sent], self.exp.trainable)
    model_states = jax.tree.unflatten(
        jax.tree.structure(self.state.model_state), stacked[sent:])
    rng = jax.random.fold_in(self.exp.rngs()[1], round_)
    self.state, mean = self.aggregate(self.state, deltas, model_states,
                                      jnp.asarray(weights), rng)
    sums = {k: sum(fit.metrics[k] for fit in fits) for k in fits[0].metrics}
    metrics = {k: float(v) for k, v in self.exp.task.metrics(
        {k: jnp.asarray(v) for k, v in sums.items()}, mean).items()}
    if not metrics.pop("finite"):
      raise RuntimeError(f"Non-finite loss or update in round {round_ + 1}.")
    step = round_ + 1
    self.writer.write_scalars(step, metrics)
    print(f"round {step}/{self.config.total_steps} | " + " | ".join(
        f"{k[len('train/'):]} {v:.4f}" for k, v in metrics.items()) +
        f" | {time.perf_counter() - self.began:.1f} s", flush=True)
    if step % self.config.checkpoint_every_steps == 0 or (
        step == self.config.total_steps):
      checkpoints.save(self.mgr, step, self.state)
      self.mgr.wait_until_finished()
    return self.initialize_parameters(None), {}

  def evaluate(self, server_round, parameters):
    step = self.start + server_round
    if server_round == 0 or not (step % self.config.eval_every_steps == 0 or
                                 step == self.config.total_steps):
      return None
    scalars, _, _ = self.exp.summary(self.exp.eval_totals(
        self.state.variables))
    self.writer.write_scalars(step, {f"val/{k}": v
                                     for k, v in scalars.items()})
    print(f"round {step} | " + " | ".join(
        f"val/{k} {v:.4f}" for k, v in scalars.items()
        if "/class_" not in k), flush=True)
    return scalars.get("loss", 0.0), scalars

  def configure_evaluate(self, server_round, parameters, client_manager):
    return []  # The server evaluates the global model itself.

  def aggregate_evaluate(self, server_round, results, failures):
    return None, {}

  def close(self):
    self.writer.close()
    self.mgr.wait_until_finished()
    self.mgr.close()


def serve(config, workdir: str, address: str, devices=None) -> None:
  """Runs the server until the run's last round."""
  strategy = Strategy(config, workdir, devices)
  try:
    if strategy.rounds > 0:
      flwr.server.start_server(
          server_address=address, strategy=strategy,
          config=flwr.server.ServerConfig(num_rounds=strategy.rounds))
    else:
      print(f"already trained to round {strategy.start}; nothing to do")
  finally:
    strategy.close()


def join(config, index: int, address: str, devices=None,
         wait_s: float = 600) -> None:
  """Runs client `index` until the server ends the run (waiting up to
  `wait_s` for the server to listen)."""
  client = Client(config, index, devices).to_client()
  host, _, port = address.rpartition(":")
  deadline = time.monotonic() + wait_s
  while True:  # Flower's client gives up at once on a refused connection.
    try:
      socket.create_connection((host.strip("[]"), int(port)), 5).close()
      break
    except OSError:
      if time.monotonic() > deadline:
        raise ConfigError(f"No Flower server at {address} after "
                          f"{wait_s:.0f} s.") from None
      time.sleep(0.5)
  flwr.client.start_client(server_address=address, client=client,
                           insecure=True)
