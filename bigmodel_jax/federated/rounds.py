"""A federated round as the train step: clients vmapped over a mesh axis.

One step of a federated run is one round (McMahan et al. 2017). Each
sampled client starts from the global parameters and takes `local_steps`
SGD steps of the task's own gradient function (`task.grad_fn`: DP-SGD's
under example-level DP) on its batches, plus FedProx's proximal term
mu/2 |w - w_global|^2 when `prox_mu` > 0 (Li et al. 2020). Its update
delta = w_global - w_client is the pseudo-gradient. The server averages
the deltas (weighted by the clients' example counts, or equally) and
applies them with its optimizer (Reddi et al. 2021): "fedavg" is SGD at
`server_learning_rate` (1: the average of the clients' parameters),
"fedavgm" adds momentum, "fedadam" is Adam. Under user-level DP each
delta is clipped to `dp.clip_norm` and Gaussian noise of std
sigma * clip / K is added to their (equal-weight) mean (DP-FedAvg).

The clients are a mesh axis, not a Python loop: the round's batch holds
the sampled clients' rows client-major, sharded over the "batch" rule's
mesh axes like any batch; the client update is vmapped over them with
those mesh axes as its SPMD axis, and inside a client the logical "batch"
axis is unsharded. So K clients train in parallel on K devices (K must be
a multiple of the batch shards). `client_update` and `server_update` are
also what Flower's clients and server run (`flower.py`).
"""
import jax
import jax.numpy as jnp
import optax
from flax.linen import partitioning
from jax.sharding import PartitionSpec as P

from bigmodel_jax import optim, privacy, steps
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.state import TrainState

SERVER_OPTIMIZERS = ("fedavg", "fedavgm", "fedadam")


def server_optimizer(block, trainable) -> optax.GradientTransformation:
  """The server's optimizer of `federated.server_optimizer`, applied to the
  mean client delta as a gradient (frozen parameters have no state)."""
  lr = block.server_learning_rate
  if block.server_optimizer == "fedavg":
    tx = optax.sgd(lr)
  elif block.server_optimizer == "fedavgm":
    tx = optax.sgd(lr, momentum=block.server_momentum)
  elif block.server_optimizer == "fedadam":
    tx = optax.adam(lr, b1=0.9, b2=0.99, eps=block.server_epsilon)
  else:
    raise ConfigError(f"federated.server_optimizer="
                      f"{block.server_optimizer!r}; use one of "
                      f"{SERVER_OPTIMIZERS}.")
  return optim.masked(tx, trainable)


def client_update(grad_fn, task, block, trainable):
  """(global params, model state, batches (S, B, ...), rng) -> (delta,
  model state, summed task sums): one client's local training."""
  client_tx = optax.sgd(block.client_learning_rate)
  mu = block.prox_mu

  def update(params, model_state, batches, rng):
    def local_step(carry, inputs):
      local, model_state, opt_state = carry
      i, batch = inputs
      grads, _, sums, model_state = grad_fn(
          local, model_state, batch, jax.random.fold_in(rng, i),
          task.normalizer(batch))
      if mu:
        grads = jax.tree.map(lambda g, w, w0: g + mu * (w - w0), grads,
                             local, params)
      grads = steps.frozen_zeroed(grads, trainable)
      updates, opt_state = client_tx.update(grads, opt_state, local)
      return (optax.apply_updates(local, updates), model_state,
              opt_state), sums

    count = jax.tree.leaves(batches)[0].shape[0]
    (local, model_state, _), sums = jax.lax.scan(
        local_step, (params, model_state, client_tx.init(params)),
        (jnp.arange(count), batches))
    delta = jax.tree.map(jnp.subtract, params, local)
    return delta, model_state, jax.tree.map(lambda s: s.sum(0), sums)

  return update


def server_update(tx):
  """(state, mean delta, model state) -> the next round's state."""

  def update(state: TrainState, delta, model_state) -> TrainState:
    updates, opt_state = tx.update(delta, state.opt_state, state.params)
    return TrainState(step=state.step + 1,
                      params=optax.apply_updates(state.params, updates),
                      model_state=model_state, opt_state=opt_state)

  return update


def _client_rules():
  """The current logical rules with "batch" unsharded (inside a client),
  and the mesh axes "batch" had (the clients' axis)."""
  rules = tuple(partitioning.get_axis_rules())
  axes = next((a for name, a in rules if name == "batch"), None)
  axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
  return tuple((n, None if n == "batch" else a) for n, a in rules), axes


class Federated:
  """A task trained in federated rounds: everything but the update is the
  wrapped task's (evaluation evaluates the global model)."""

  def __init__(self, task, config, accountant=None):
    if not hasattr(task, "objective"):
      raise ConfigError(f"Task {task.name!r} has its own update; federated "
                        "training needs a loss task.")
    block = config.federated
    for key in ("clients_per_round", "local_steps"):
      if not block[key] or block[key] < 1:
        raise ConfigError(f"federated.{key}={block[key]} must be >= 1.")
    if block.clients_per_round > block.clients:
      raise ConfigError(f"federated.clients_per_round="
                        f"{block.clients_per_round} is more than "
                        f"federated.clients={block.clients}.")
    if block.prox_mu < 0:
      raise ConfigError(f"federated.prox_mu={block.prox_mu} must be >= 0.")
    self.task, self.block, self.config = task, block, config
    self.user_dp = privacy.enabled(config) and config.dp.level == "user"
    self.accountant = accountant
    self.batches_per_step = block.clients_per_round * block.local_steps

  def __getattr__(self, name):  # Evaluation and the rest: the task's.
    return getattr(self.task, name)

  def optimizer(self, trainable):
    return server_optimizer(self.block, trainable)

  def round_spec(self, spec: dict) -> dict:
    """A round's batch spec from the input's: K * S batches, client-major,
    and "fed_weight"."""
    rows = self.batches_per_step * next(iter(spec.values())).shape[0]
    return {**{k: jax.ShapeDtypeStruct((rows, *v.shape[1:]), v.dtype)
               for k, v in spec.items()},
            "fed_weight": jax.ShapeDtypeStruct((rows,), jnp.float32)}

  def client(self, model, trainable):
    """One client's local training (`client_update` of the task)."""
    return client_update(self.task.grad_fn(model, trainable), self.task,
                         self.block, trainable)

  def aggregate(self, tx, trainable):
    """(state, deltas (K, ...), model states (K, ...), weights (K,), rng)
    -> (next state, the applied mean delta): the server's half of a round,
    also what the Flower server runs."""
    clients, server = self.block.clients_per_round, server_update(tx)
    noise = self.accountant.noise if self.user_dp and self.accountant else 0.
    clip = self.config.dp.clip_norm

    def aggregate(state, deltas, model_states, weights, rng):
      if self.user_dp:
        deltas, _ = jax.vmap(privacy.clipped, in_axes=(0, None))(deltas,
                                                                  clip)
        weights = jnp.full_like(weights, 1 / clients)
      mean = jax.tree.map(lambda d: jnp.tensordot(weights, d, 1), deltas)
      if self.user_dp:
        mean = privacy.noised(mean, noise * clip / clients, rng, trainable)
      model_state = jax.tree.map(lambda s: jnp.tensordot(weights, s, 1),
                                 model_states)
      return server(state, mean, model_state), mean

    return aggregate

  def metrics(self, sums, mean) -> dict:
    """A round's train metrics from the clients' summed sums."""
    update_norm = optax.tree.norm(mean)
    loss = self.task.train_metrics(sums)
    metrics = {f"train/{k}": v for k, v in loss.items()}
    metrics.update({
        "train/update_norm": update_norm,
        "train/learning_rate": jnp.asarray(self.block.client_learning_rate),
        "finite": (jnp.isfinite(loss.get("loss", 0.0)) &
                   jnp.isfinite(update_norm))})
    return metrics

  def train_step(self, model, tx, trainable):
    clients, local_steps = (self.block.clients_per_round,
                            self.block.local_steps)
    client = self.client(model, trainable)
    aggregate = self.aggregate(tx, trainable)

    def round_step(state: TrainState, batch: dict, rng):
      rng = jax.random.fold_in(rng, state.step)
      batch = dict(batch)
      weights = batch.pop("fed_weight").reshape(clients, -1)[:, 0]
      inner_rules, client_axes = _client_rules()
      shards = 1
      for axis in client_axes:
        shards *= jax.sharding.get_abstract_mesh().shape[axis]
      if clients % shards:
        raise ConfigError(f"federated.clients_per_round={clients} must be a "
                          f"multiple of the {shards} batch shards of the "
                          "mesh (the clients' axis).")
      batches = jax.tree.map(
          lambda x: jax.lax.with_sharding_constraint(
              x.reshape(clients, local_steps, -1, *x.shape[1:]),
              P(client_axes or None)), batch)
      with partitioning.axis_rules(inner_rules):
        deltas, model_states, sums = jax.vmap(
            client, in_axes=(None, None, 0, 0),
            spmd_axis_name=client_axes or None)(
                state.params, state.model_state, batches,
                client_rngs(rng, clients))
      new_state, mean = aggregate(state, deltas, model_states, weights, rng)
      return new_state, self.metrics(jax.tree.map(lambda s: s.sum(0), sums),
                                     mean)

    return round_step


def client_rngs(round_rng, clients: int):
  """The rng of each sampled client (by its position in the round)."""
  return jax.random.split(round_rng, clients)
