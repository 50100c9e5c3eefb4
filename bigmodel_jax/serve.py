"""Serves trained runs as an OpenAI-compatible, metered HTTP API.

  python -m bigmodel_jax.billing keys create --name me        # prints a key
  python -m bigmodel_jax.serve --workdir runs/shakespeare [--workdir runs/minilm] \\
      [--host 127.0.0.1 --port 8000] [--db sqlite:///ledger.sqlite] \\
      [--config experiments/serving.py[:unbatched]] [--config.slots=8]

  curl localhost:8000/v1/completions -H "Authorization: Bearer $KEY" \\
      -H "Content-Type: application/json" \\
      -d '{"model": "shakespeare", "prompt": "ROMEO:", "max_tokens": 64}'

A model is named after its run directory (or `--name`, once per
--workdir). Language models serve /v1/completions (and /v1/chat/completions
when fine-tuned on conversations), BERT-family runs /v1/embeddings (and
/v1/classify with a classifier head), image classifiers /v1/classify.
Compressed runs (`compress`) serve like any run. See docs/serving.md.
"""
import argparse
import os

from bigmodel_jax import config_loader, runs
from bigmodel_jax.billing import default_db
from bigmodel_jax.errors import ConfigError, entrypoint
from bigmodel_jax.serving import api, http_server, models, settings
from bigmodel_jax.serving.ledger import Ledger


def _config(spec: str | None, overrides: dict):
  config = (config_loader.load_file(spec) if spec else settings.defaults())
  config = config_loader.override(config, overrides)
  settings.prices(config)  # A malformed price table fails now.
  for name in ("slots", "decode_steps", "encoder_batch", "max_connections"):
    if not config[name] >= 1:
      raise ConfigError(f"config.{name}={config[name]}: must be >= 1.")
  for name in ("header_timeout_seconds", "body_timeout_seconds",
               "hold_seconds", "replay_hours"):
    if not config[name] > 0:
      raise ConfigError(f"config.{name}={config[name]}: must be > 0.")
  return config


@entrypoint
def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", action="append", required=True)
  parser.add_argument("--name", action="append", default=[],
                      help="model names, in --workdir order")
  parser.add_argument("--host", default="127.0.0.1")
  parser.add_argument("--port", type=int, default=8000)
  parser.add_argument("--db", default=default_db(), help="SQLAlchemy URL")
  parser.add_argument("--config", help="experiments/serving.py[:variant]")
  runs.add_step_arg(parser)  # The same for every --workdir.
  args, rest = parser.parse_known_args(argv)
  if not 0 < args.port < 65536:
    raise ConfigError(f"--port={args.port}: it must be in 1..65535.")
  config = _config(args.config, config_loader.parse_overrides(rest))
  if len(args.name) > len(args.workdir):
    raise ConfigError("More --name than --workdir arguments.")
  names = args.name + [os.path.basename(os.path.normpath(w))
                       for w in args.workdir[len(args.name):]]
  if len(set(names)) != len(names):
    raise ConfigError(f"Two models would be named alike: {names}; use --name.")
  ledger = Ledger(args.db)
  served = {}
  for name, workdir in zip(names, args.workdir):
    served[name] = models.load(name, workdir, config, args.step)
    print(f"{name}: {', '.join(api.ENDPOINT_NAMES[e] for e in served[name].endpoints)}"
          f" (step {served[name].run.step})", flush=True)
  app = api.create_app(served, ledger, config)
  print(f"Serving on http://{args.host}:{args.port}/v1", flush=True)
  http_server.server(app, args.host, args.port, config).run()


if __name__ == "__main__":
  main()
