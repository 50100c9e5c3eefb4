"""Serving configs for `python -m bigmodel_jax.serve`.

  python -m bigmodel_jax.serve --config experiments/serving.py \\
      --workdir runs/shakespeare --port 8000
  ... --config experiments/serving.py:unbatched   # one request at a time

`batched` (default): 32 KV-cache slots decoded together and encoder calls
batched over 5 ms; `unbatched`: one request at a time, the load test's
baseline. Prices are USD per call and per 1,000 tokens, per model name.
"""
from bigmodel_jax.serving import settings


def get_config(arg: str | None = None):
  config = settings.defaults()
  if arg == "unbatched":
    config.slots = 1
    config.encoder_batch = 1
    config.encoder_window_ms = 0.0
  elif arg not in (None, "batched"):
    raise ValueError(f"Unknown variant {arg!r}; use batched or unbatched.")
  return config
