"""Clients' shares of the training data, and the rounds' batches drawn from them.

A partition is a pure function of (seed, settings, the training labels):
"iid" deals a permutation of the examples out evenly; "dirichlet" gives
each class's examples to the clients in proportions drawn from
Dirichlet(alpha) (Hsu et al. 2019: alpha 0.1 leaves most clients one or two
classes, 100 is nearly IID); "contiguous" gives each client one block of
examples in data order (text: a stretch of documents, the by-document
split of a corpus). Round r samples `clients_per_round` of them and draws
`local_steps` batches of `input.batch_size` from each, a pure function of
(seed, r), so a resumed run sees the same rounds.
"""
import numpy as np

from bigmodel_jax.dataio import common, prefetch
from bigmodel_jax.errors import ConfigError

KINDS = ("iid", "dirichlet", "contiguous")


def partition(kind: str, size: int, clients: int, seed: int, *,
              labels: np.ndarray | None = None, alpha: float = 1.0
              ) -> list[np.ndarray]:
  """Each client's example indices (sorted), every example in one client."""
  if clients > size:
    raise ConfigError(f"federated.clients={clients} is more than the "
                      f"{size} training examples.")
  if kind == "iid":
    order = np.random.default_rng([seed, 1]).permutation(size)
    return [np.sort(part) for part in np.array_split(order, clients)]
  if kind == "contiguous":
    return np.array_split(np.arange(size), clients)
  if kind != "dirichlet":
    raise ConfigError(f"federated.partition={kind!r}; use one of {KINDS}.")
  if labels is None:
    raise ConfigError("federated.partition='dirichlet' skews labels, and "
                      "this input has none; use iid or contiguous.")
  if alpha <= 0:
    raise ConfigError(f"federated.alpha={alpha} must be > 0.")
  for attempt in range(100):  # Redrawn until no client is empty.
    rng = np.random.default_rng([seed, 2, attempt])
    parts = [[] for _ in range(clients)]
    for c in np.unique(labels):
      members = rng.permutation(np.flatnonzero(labels == c))
      shares = rng.dirichlet(np.full(clients, alpha))
      cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
      for k, piece in enumerate(np.split(members, cuts)):
        parts[k].extend(piece.tolist())
    if all(parts):
      return [np.sort(np.asarray(p, np.int64)) for p in parts]
  raise ConfigError(f"Dirichlet(alpha={alpha}) left a client without data "
                    f"in 100 draws; use fewer clients or a larger alpha.")


def of_config(block, data, seed: int) -> list[np.ndarray]:
  """The partition `config.federated` describes, of `data`'s train split."""
  return partition(block.partition, data.train_size(), block.clients, seed,
                   labels=data.train_labels(), alpha=block.alpha)


def sampled_clients(clients: int, per_round: int, seed: int, round_: int
                    ) -> np.ndarray:
  """The clients that train in round `round_` (all when per_round equals
  clients, in order)."""
  if per_round == clients:
    return np.arange(clients)
  return np.sort(np.random.default_rng([seed, 3, round_]).choice(
      clients, per_round, replace=False))


def client_indices(part: np.ndarray, client: int, rows: int, seed: int,
                   round_: int) -> np.ndarray:
  """`rows` example indices of a client for round `round_`: its examples
  in shuffled epochs of its own (one epoch position per round)."""
  return part[common.shuffled_indices(len(part), rows,
                                      seed * 1_000_003 + client, round_)]


def client_weights(sizes, weighting: str) -> np.ndarray:
  """The sampled clients' weights in the average, from their example
  counts: shares of their examples ("examples", FedAvg's n_k / n) or equal
  ("uniform")."""
  if weighting == "uniform":
    return np.full(len(sizes), 1 / len(sizes), np.float32)
  if weighting != "examples":
    raise ConfigError(f"federated.weighting={weighting!r}; use examples or "
                      "uniform.")
  sizes = np.asarray(sizes, np.float64)
  return (sizes / sizes.sum()).astype(np.float32)


class ClientRounds:
  """The run's input, whose train batches are rounds: `local_steps`
  batches of every sampled client, client-major (K * S * B rows), with
  "fed_weight" (the client's share of the round's weight, on each of its
  rows). Everything else (evaluation, tokenizer, classes) is the input's."""

  def __init__(self, data, block, parts: list[np.ndarray], *, seed: int,
               batch_size: int, process_index: int, process_count: int):
    self.data, self.block, self.parts, self.seed = data, block, parts, seed
    self.batch_size = batch_size
    self.round_rows = block.clients_per_round * block.local_steps * batch_size
    self._rows = common.process_rows(self.round_rows, process_index,
                                     process_count)

  def __getattr__(self, name):
    return getattr(self.data, name)

  def client_rows(self, client: int, round_: int) -> np.ndarray:
    """Client `client`'s example indices for round `round_` (S * B)."""
    return client_indices(self.parts[client], client,
                          self.block.local_steps * self.batch_size,
                          self.seed, round_)

  def train_batch(self, step: int) -> dict:
    """This process's rows of round `step`."""
    block = self.block
    clients = sampled_clients(block.clients, block.clients_per_round,
                              self.seed, step)
    indices = np.stack([self.client_rows(int(k), step) for k in clients])
    batch = self.data.train_examples(indices.reshape(-1)[self._rows], step)
    weights = np.repeat(client_weights(
        [len(self.parts[k]) for k in clients], block.weighting),
        indices.shape[1])
    return {**batch, "fed_weight": weights[self._rows]}

  def train_batches(self, start_step: int):
    return prefetch.background(self.train_batch, start_step)
