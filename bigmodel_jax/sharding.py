"""The device mesh and the logical-axis rules that map models onto it.

Models name the axes of their parameters and key activations ("embed", "mlp",
"batch", ...). A rules table maps those names to the mesh axes ("data",
"fsdp", "tensor"); `RULES` is the default, and `config.sharding.rules`
(built from it by `config_blocks.base`) is what a run uses, so an experiment
or a command line can move one name to other mesh axes:

  --config.sharding.rules.embed=None          # replicate the model width
  --config.sharding.rules.batch=data,fsdp     # several mesh axes: commas

A mesh axis that does not divide a dimension is dropped for that array (it
is replicated along that axis); `Layout.fallbacks` lists those cases so the
train log and the planner can say which parameters and why.
"""
import collections
import contextlib
import dataclasses
import functools
import math

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from bigmodel_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

RULES = {
    # Activations.
    "batch": "data,fsdp",  # Several mesh axes: comma-separated.
    "length": None,
    # The residual stream's length between transformer blocks: "tensor" turns
    # on sequence parallelism (norms and residuals split over the tensor axis).
    "act_seq": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
    "act_kv": None,
    "height": None,
    "width": None,
    "act_channels": None,
    # Parameters: weight matrices are sharded over fsdp on their model-width
    # axis and over tensor on heads / hidden units / vocabulary.
    "vocab": "tensor",
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",  # Key/value heads (fewer than query heads in GQA).
    "kv": None,
    "layers": None,  # The stacked axis of scanned layers.
    "gates": None,  # A recurrent cell's gates (LSTM's 4, GRU's 3).
    "position": None,
    "patch": None,  # Flattened image patches (ViT's patch embedding input).
    "conv_in": None,
    "conv_out": "fsdp",  # Convolution output channels.
    "classes": None,
    "latent": None,  # An autoencoder's latent code.
    "lora": None,  # The rank of LoRA adapters.
    "norm": None,  # Small vectors (norm scales, output biases): replicated.
}


def _mesh_axes(name: str, value):
  """A rule's value as None, one mesh axis or a tuple of them."""
  if isinstance(value, str):
    value = None if value.strip().lower() in ("", "none") else tuple(
        v.strip() for v in value.split(","))
  if value is None:
    return None
  value = tuple(value)
  unknown = [v for v in value if v not in MESH_AXES]
  if unknown:
    raise ConfigError(f"config.sharding.rules.{name}={value!r} names "
                     f"{unknown}; mesh axes are {MESH_AXES}.")
  return value[0] if len(value) == 1 else value


def rules_from_config(rules) -> tuple:
  """Flax's rules table, ((logical name, mesh axes), ...), from a mapping."""
  return tuple((name, _mesh_axes(name, value)) for name, value in
               dict(rules).items())


def make_mesh(mesh_config, devices=None) -> jax.sharding.Mesh:
  """Builds a ("data", "fsdp", "tensor") mesh; one size may be -1 (the rest).

  On several CPU devices this turns off async dispatch: XLA:CPU can deadlock
  when executions with collectives overlap on a machine with few cores.
  """
  devices = list(jax.devices() if devices is None else devices)
  if devices[0].platform == "cpu" and len(devices) > 1:
    jax.config.update("jax_cpu_enable_async_dispatch", False)
  sizes = {axis: int(mesh_config.get(axis, 1)) for axis in MESH_AXES}
  unknown = set(mesh_config.keys()) - set(MESH_AXES)
  if unknown:
    raise ConfigError(f"Unknown mesh axes {sorted(unknown)}; use {MESH_AXES}.")
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise ConfigError(f"At most one mesh axis may be -1, got {free}.")
  known = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if len(devices) % known:
      raise ConfigError(f"Mesh {sizes} does not divide {len(devices)} devices.")
    sizes[free[0]] = len(devices) // known
  if math.prod(sizes.values()) != len(devices):
    raise ConfigError(
        f"Mesh {sizes} needs {math.prod(sizes.values())} devices, "
        f"have {len(devices)}.")
  shape = tuple(sizes[a] for a in MESH_AXES)
  return jax.make_mesh(shape, MESH_AXES, devices=devices,
                       axis_types=(AxisType.Auto,) * len(MESH_AXES))


@dataclasses.dataclass(frozen=True)
class Fallback:
  """A logical axis left unsharded in one array: its size is not a multiple
  of its mesh axes' devices."""
  path: str
  logical: str
  size: int
  mesh_axes: tuple
  devices: int


@dataclasses.dataclass(frozen=True)
class Layout:
  """A mesh and the rules that place logical axes on it."""
  mesh: jax.sharding.Mesh
  rules: tuple = None  # Flax's table; None: `RULES`.

  def __post_init__(self):
    if self.rules is None:
      object.__setattr__(self, "rules", rules_from_config(RULES))

  def fit(self, logical: tuple, shape, path: str = "",
          fallbacks: list | None = None) -> P:
    """The mesh spec of an array with these logical axes, dropping mesh axes
    from dimensions they do not divide (recorded in `fallbacks`)."""
    spec = nn.logical_to_mesh_axes(logical, self.rules)
    fitted = []
    for i, dim in enumerate(shape):
      axes = spec[i] if i < len(spec) else None
      names = (axes,) if isinstance(axes, str) else tuple(axes or ())
      names = tuple(n for n in names if self.mesh.shape[n] > 1)
      devices = math.prod(self.mesh.shape[n] for n in names)
      if names and dim % devices:
        if fallbacks is not None:
          fallbacks.append(Fallback(path, logical[i], dim, names, devices))
        names = ()
      fitted.append(names[0] if len(names) == 1 else (names or None))
    return P(*fitted)

  def tree_shardings(self, abstract_boxed_tree, fallbacks: list | None = None):
    """Shardings for a tree whose leaves may be `nn.LogicallyPartitioned`."""
    def one(path, leaf):
      logical = (tuple(leaf.names) if isinstance(leaf, nn.Partitioned)
                 else ())
      shape = nn.unbox(leaf).shape
      return NamedSharding(self.mesh, self.fit(
          logical, shape, jax.tree_util.keystr(path, simple=True,
                                               separator="/"), fallbacks))
    return jax.tree_util.tree_map_with_path(
        one, abstract_boxed_tree,
        is_leaf=lambda x: isinstance(x, nn.Partitioned))

  def num_batch_shards(self) -> int:
    """Devices the leading batch axis is split over (the "batch" rule)."""
    return math.prod(self.mesh.shape[a]
                     for a in _axes_of(self.batch_sharding().spec))

  def batch_sharding(self) -> NamedSharding:
    """Batch-major arrays: leading axis over data (and fsdp), rest replicated."""
    return NamedSharding(self.mesh,
                         nn.logical_to_mesh_axes(("batch",), self.rules))

  def global_batch(self, local_batch: dict) -> dict:
    """Assembles this process's slice of a batch into global sharded arrays."""
    return {k: jax.make_array_from_process_local_data(
        self.batch_sharding(), np.asarray(v)) for k, v in local_batch.items()}

  @contextlib.contextmanager
  def context(self):
    """Mesh and rules in scope, so logical constraints in models take effect."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def in_context(self, fn):
    """`fn` run (and so traced) inside `context()`."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
      with self.context():
        return fn(*args, **kwargs)
    return wrapped


def refit(target: NamedSharding, shape) -> NamedSharding:
  """`target` for an array of another shape: mesh axes that do not divide
  a dimension are dropped from it."""
  mesh, spec, fitted = target.mesh, target.spec, []
  for i, dim in enumerate(shape):
    axes = spec[i] if i < len(spec) else None
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = math.prod(mesh.shape[n] for n in names)
    fitted.append(axes if dim % size == 0 else None)
  return NamedSharding(mesh, P(*fitted))


def describe_fallbacks(fallbacks: list[Fallback], most: int = 3) -> list[str]:
  """One line per (logical axis, size, mesh axes): how many arrays fall back
  to replication, with example paths."""
  groups = collections.defaultdict(list)
  for f in fallbacks:
    groups[(f.logical, f.size, f.mesh_axes, f.devices)].append(f.path)
  lines = []
  for (logical, size, axes, devices), paths in sorted(groups.items()):
    examples = ", ".join(paths[:most]) + (" ..." if len(paths) > most else "")
    lines.append(
        f"'{logical}' of size {size} is not divisible by "
        f"{'x'.join(axes)}={devices}: replicated along {'x'.join(axes)} in "
        f"{len(paths)} array(s) ({examples})")
  return lines


def _axes_of(spec: P) -> tuple:
  """The mesh axes a spec's first dimension is split over."""
  first = spec[0] if len(spec) else None
  return (first,) if isinstance(first, str) else tuple(first or ())
