"""Magnitude pruning: one-shot (`compress --method sparse`), gradual during
training (`config.pruning`), and structured (`compress --method heads`).

Prunable weights are the kernels of projections and convolutions (leaves
named "kernel", two or more axes); embeddings, norms and biases stay dense.
`scope` "global" ranks all of them together by |w|, "layer" each kernel
alone; `pattern` "2:4" keeps the 2 largest of every 4 consecutive inputs
(the layout sparse tensor cores run), whatever `sparsity` says.

Gradual pruning (Zhu & Gupta 2017) raises the sparsity from 0 at
`begin_step` to `sparsity` at `end_step` along a cubic, re-ranking every
`frequency` steps. It is an optax transformation chained after the
optimizer: its state holds the masks (so they are checkpointed and resume
with the run), and a pruned weight's update is minus itself, so it is zero
after the step and stays zero.

Structured pruning removes whole attention heads and MLP hidden units, the
same number in every layer, chosen by the L2 norm of the weights each one
owns (every parameter axis named "heads"/"kv_heads" or "mlp"): the model is
physically smaller, and its config says so.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import optax
from flax import linen as nn
from ml_collections.config_dict import placeholder

from bigmodel_jax.errors import ConfigError

SCOPES = ("global", "layer")
PATTERNS = (None, "2:4")


def check(sparsity: float, scope: str, pattern: str | None) -> None:
  if not 0 <= sparsity < 1:
    raise ConfigError(f"sparsity={sparsity}: it must be in [0, 1).")
  if scope not in SCOPES:
    raise ConfigError(f"Unknown pruning scope {scope!r}; have {SCOPES}.")
  if pattern not in PATTERNS:
    raise ConfigError(f"Unknown sparsity pattern {pattern!r}; have "
                      f"{PATTERNS}.")


def prunable(params) -> dict:
  """{path: bool} as a tree like `params`: which leaves may be pruned."""
  def one(path, x):  # The path may end in a logical-axes box's "value".
    keys = [k.key for k in path if hasattr(k, "key")]
    return keys[-1] == "kernel" and x.ndim >= 2
  return jax.tree_util.tree_map_with_path(one, params)


def _two_of_four(w):
  """Mask keeping the 2 largest |w| of every 4 consecutive inputs (axis 0;
  a convolution's input channels, axis -2); all-ones when 4 does not
  divide that axis."""
  axis = w.ndim - 2 if w.ndim == 4 else 0
  if w.shape[axis] % 4:
    return jnp.ones(w.shape, bool)
  moved = jnp.moveaxis(jnp.abs(w), axis, -1)
  groups = moved.reshape(moved.shape[:-1] + (-1, 4))
  rank = jnp.argsort(jnp.argsort(-groups, axis=-1), axis=-1)
  keep = (rank < 2).reshape(moved.shape)
  return jnp.moveaxis(keep, -1, axis)


def _threshold(values, sparsity):
  """The largest |w| of the `sparsity` fraction of `values` nearest zero
  (-1 when that fraction holds none): what is at most it is pruned."""
  flat = jnp.sort(jnp.abs(values).ravel())
  count = jnp.floor(sparsity * flat.size).astype(jnp.int32)
  return jnp.where(count > 0, flat[jnp.maximum(count - 1, 0)], -1.0)


def masks(params, sparsity, scope: str = "global", pattern=None):
  """Boolean masks (True: kept) like `params`, all True on leaves that are
  never pruned. `sparsity` may be traced (gradual pruning)."""
  which = prunable(params)
  kernels = [x for x, p in zip(jax.tree.leaves(params), jax.tree.leaves(which))
             if p]
  if pattern == "2:4":
    keep = _two_of_four
  elif scope == "global":
    cut = _threshold(jnp.concatenate([x.ravel() for x in kernels]), sparsity)

    def keep(x):
      return jnp.abs(x) > cut
  else:
    def keep(x):
      return jnp.abs(x) > _threshold(x, sparsity)
  return jax.tree.map(lambda x, p: keep(x) if p else jnp.ones(x.shape, bool),
                      params, which)


def apply_masks(params, tree_of_masks):
  return jax.tree.map(lambda x, m: jnp.where(m, x, 0), params, tree_of_masks)


def nonzero(params) -> tuple[int, int]:
  """(nonzero entries, all entries) of the parameters."""
  leaves = jax.tree.leaves(params)
  return (sum(int(jnp.count_nonzero(x)) for x in leaves),
          sum(x.size for x in leaves))


# --- Gradual pruning in the optimizer ------------------------------------------
class PruneState(NamedTuple):
  count: jax.Array
  masks: dict


def sparsity_at(block, total_steps: int):
  """The cubic schedule of `block`: step -> target sparsity."""
  begin = block.begin_step
  end = total_steps if block.end_step is None else block.end_step
  if end <= begin:
    raise ConfigError(f"pruning.end_step={end} must come after "
                      f"begin_step={begin}.")

  def schedule(step):
    done = jnp.clip((step - begin) / (end - begin), 0.0, 1.0)
    return block.sparsity * (1 - (1 - done) ** 3)
  return schedule


def config_block() -> ml_collections.ConfigDict:
  """`config.pruning`: gradual magnitude pruning to `sparsity`; 0: off."""
  return ml_collections.ConfigDict(dict(
      sparsity=0.0, scope="global", pattern=placeholder(str), begin_step=0,
      end_step=placeholder(int), frequency=100))


def wrap(tx: optax.GradientTransformation, config
         ) -> optax.GradientTransformation:
  """`tx` followed by the pruning of `config.pruning` when it prunes."""
  block = config.get("pruning") or {}
  if not block.get("sparsity"):
    return tx
  return optax.chain(tx, transform(block, config.total_steps))


def transform(block, total_steps: int) -> optax.GradientTransformation:
  """Chained after the optimizer: keeps pruned weights at zero, re-ranks
  every `frequency` steps from `begin_step` to `end_step`."""
  check(block.sparsity, block.scope, block.pattern)
  schedule = sparsity_at(block, total_steps)
  end = total_steps if block.end_step is None else block.end_step

  def init(params):  # Masks boxed like the params: sharded like them.
    return PruneState(jnp.zeros((), jnp.int32),
                      jax.tree.map(lambda x: jnp.ones(x.shape, bool), params))

  def update(updates, state, params):
    step = state.count
    due = ((step >= block.begin_step) & (step <= end) &
           ((step - block.begin_step) % block.frequency == 0))
    current = apply_masks(params, state.masks)
    new = jax.lax.cond(
        due, lambda: masks(current, schedule(step), block.scope,
                           block.pattern),
        lambda: state.masks)
    updates = jax.tree.map(lambda u, x, m: jnp.where(m, u, -x), updates,
                           params, new)
    return updates, PruneState(step + 1, new)

  return optax.GradientTransformation(init, update)


# --- Structured: whole heads and hidden units ----------------------------------
def named_axes(abstract_boxed) -> dict:
  """{param path tuple: logical axis names} of boxed abstract params."""
  flat = jax.tree_util.tree_flatten_with_path(
      abstract_boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
  return {tuple(str(k.key) for k in path): tuple(leaf.names)
          for path, leaf in flat if isinstance(leaf, nn.Partitioned)}


def _keep(params: dict, names: dict, kinds: tuple, count: int):
  """{module prefix: kept indices} per block, by the L2 norm of everything
  each index owns along axes named in `kinds`."""
  norms = {}
  for path, x in params.items():
    for axis, name in enumerate(names.get(path, ())):
      if name in kinds:
        other = tuple(i for i in range(x.ndim) if i != axis)
        norms.setdefault(path[:-2], []).append(
            np.sum(np.square(np.asarray(x, np.float64)), axis=other))
  return {prefix: np.sort(np.argsort(-np.sum(parts, 0))[:count])
          for prefix, parts in norms.items()}


def remove_units(params: dict, names: dict, kinds: tuple, count: int
                 ) -> dict:
  """`params` (flat {path tuple: array}) keeping, in each block, the
  `count` strongest units along the axes named `kinds`."""
  keep = _keep(params, names, kinds, count)
  out = {}
  for path, x in params.items():
    for axis, name in enumerate(names.get(path, ())):
      if name in kinds and path[:-2] in keep:
        x = np.take(np.asarray(x), keep[path[:-2]], axis=axis)
    out[path] = x
  return out
