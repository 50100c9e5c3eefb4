"""Runs a model that `python -m bigmodel_jax.export --format jax` wrote.

Needs only jax and numpy (not bigmodel_jax): export copies this file into
the artifact as load.py.

  import load                               # in the exported directory
  model = load.load("exported/vit")         # or load.load() from inside it
  logits = model(images)                    # shaped as signature.json says
  outputs = model(images, latents)          # a model of several inputs

  python load.py INPUTS.npy [MORE.npy ...] OUTPUTS.npz   # from a shell
"""
import json
import os
import sys

import jax
import numpy as np
from jax import export

HERE = os.path.dirname(os.path.abspath(__file__))


def load(directory: str = HERE):
  """The model in `directory` as a function: *inputs -> outputs."""
  with open(os.path.join(directory, "model.jaxexport"), "rb") as f:
    exported = export.deserialize(bytearray(f.read()))
  with np.load(os.path.join(directory, "variables.npz")) as arrays:
    leaves = [jax.device_put(arrays[str(i)]) for i in range(len(arrays.files))]
  with open(os.path.join(directory, "signature.json")) as f:
    dtypes = [spec["dtype"] for spec in json.load(f)["inputs"]]

  def model(*inputs):
    if len(inputs) != len(dtypes):
      raise TypeError(f"The model takes {len(dtypes)} inputs "
                      f"(signature.json), not {len(inputs)}.")
    return exported.call(leaves, *(np.asarray(x, dtype)
                                   for x, dtype in zip(inputs, dtypes)))
  return model


if __name__ == "__main__":
  outputs = load()(*(np.load(path) for path in sys.argv[1:-1]))
  flat = outputs if isinstance(outputs, dict) else {"outputs": outputs}
  np.savez(sys.argv[2], **{k: np.asarray(v) for k, v in flat.items()})
