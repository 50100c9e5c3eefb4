"""The device mesh and the one logical-axis rules table shared by every model.

Models name the axes of their parameters and key activations ("embed", "mlp",
"batch", ...). `RULES` maps those names to the mesh axes ("data", "fsdp",
"tensor"); changing a row re-shards every model family at once.
"""
import contextlib
import functools
import math

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

RULES = (
    # Activations.
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("act_kv", None),
    ("height", None),
    ("width", None),
    ("act_channels", None),
    # Parameters: weight matrices are sharded over fsdp on their model-width
    # axis and over tensor on heads / hidden units / vocabulary.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),  # Key/value heads (fewer than query heads in GQA).
    ("kv", None),
    ("layers", None),  # The stacked axis of scanned layers.
    ("position", None),
    ("patch", None),  # Flattened image patches (ViT's patch embedding input).
    ("conv_in", None),
    ("conv_out", "fsdp"),  # Convolution output channels.
    ("classes", None),
    ("lora", None),  # The rank of LoRA adapters.
    ("norm", None),  # Small vectors (norm scales, output biases): replicated.
)


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
    raise ValueError(f"Unknown mesh axes {sorted(unknown)}; use {MESH_AXES}.")
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise ValueError(f"At most one mesh axis may be -1, got {free}.")
  known = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if len(devices) % known:
      raise ValueError(f"Mesh {sizes} does not divide {len(devices)} devices.")
    sizes[free[0]] = len(devices) // known
  if math.prod(sizes.values()) != len(devices):
    raise ValueError(
        f"Mesh {sizes} needs {math.prod(sizes.values())} devices, "
        f"have {len(devices)}.")
  shape = tuple(sizes[a] for a in MESH_AXES)
  return jax.make_mesh(shape, MESH_AXES, devices=devices,
                       axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _fit(spec: P, shape, mesh) -> P:
  """Drops mesh axes from dimensions they do not divide (those replicate)."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    names = tuple(n for n in names if mesh.shape[n] > 1)
    if names and dim % math.prod(mesh.shape[n] for n in names):
      names = ()
    fitted.append(names[0] if len(names) == 1 else (names or None))
  return P(*fitted)


def tree_shardings(abstract_boxed_tree, mesh):
  """Shardings for a tree whose leaves may be `nn.LogicallyPartitioned`."""
  specs = nn.get_partition_spec(abstract_boxed_tree)
  shapes = nn.unbox(abstract_boxed_tree)
  return jax.tree.map(
      lambda spec, x: NamedSharding(
          mesh, _fit(nn.logical_to_mesh_axes(spec, RULES), x.shape, mesh)),
      specs, shapes, is_leaf=lambda s: isinstance(s, P))


def batch_sharding(mesh) -> NamedSharding:
  """Batch-major arrays: leading axis over data (and fsdp), rest replicated."""
  return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch",), RULES))


def num_batch_shards(mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def global_batch(local_batch: dict, mesh) -> dict:
  """Assembles this process's slice of a batch into global sharded arrays."""
  return {
      k: jax.make_array_from_process_local_data(
          batch_sharding(mesh), np.asarray(v))
      for k, v in local_batch.items()
  }


@contextlib.contextmanager
def context(mesh):
  """Mesh and rules in scope, so logical constraints in models take effect."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    yield


def in_context(mesh, fn):
  """`fn` run (and so traced) inside `context(mesh)`."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with context(mesh):
      return fn(*args, **kwargs)
  return wrapped
