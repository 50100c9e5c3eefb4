"""Federated training across machines on Flower: a server and its clients.

  python -m bigmodel_jax.federated server --config experiments/federated_digits.py:iid \\
      --workdir runs/fed --address 0.0.0.0:8080
  python -m bigmodel_jax.federated client --config experiments/federated_digits.py:iid \\
      --partition 0 --address SERVER:8080          # and 1, 2, ... on their machines

The simulation on one host is an ordinary run: `python -m bigmodel_jax.train`
with the same config. See bigmodel_jax/federated/flower.py and docs/federated.md.
"""
import sys

from bigmodel_jax import config_loader
from bigmodel_jax.errors import entrypoint


@entrypoint
def main(argv=None) -> None:
  parser = config_loader.arg_parser(__doc__)
  parser.add_argument("role", choices=("server", "client"))
  parser.add_argument("--address", default="127.0.0.1:8080",
                      help="the server's host:port (server: where it listens)")
  parser.add_argument("--workdir", help="server: the run's workdir")
  parser.add_argument("--partition", type=int,
                      help="client: which client's data it trains (0-based)")
  args, config = config_loader.parse_args(parser, argv)
  from bigmodel_jax.federated import flower  # Imports Flower and JAX.
  if args.role == "server":
    if not args.workdir:
      parser.exit(2, "error: the server needs --workdir\n")
    flower.serve(config, args.workdir, args.address)
  else:
    if args.partition is None:
      parser.exit(2, "error: a client needs --partition K\n")
    flower.join(config, args.partition, args.address)


if __name__ == "__main__":
  main(sys.argv[1:])
