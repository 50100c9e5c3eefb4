"""API keys, invoices and prices of the serving ledger.

  python -m bigmodel_jax.billing keys create --name acme --quota-tokens 1000000 --rate 60
  python -m bigmodel_jax.billing keys create --name ops --admin
  python -m bigmodel_jax.billing keys list
  python -m bigmodel_jax.billing keys revoke acme
  python -m bigmodel_jax.billing report --from 2026-11-01 --to 2026-11-30 [--csv]
  python -m bigmodel_jax.billing suggest-price --workdir RUN --device-hour-usd 2.5 --margin 0.5

Every command takes `--db URL` (an SQLAlchemy URL; default $BIGMODEL_JAX_DB,
else sqlite:///ledger.sqlite). A key's secret is printed once, at creation;
the ledger keeps only its hash. `--rate` is requests per minute; `--credit`
prepaid dollars (calls stop with 402 when it is spent); `--quota-tokens` a
hard limit on input + output tokens (429 when reached). An `--admin` key sees
every key's usage in the console (/console); other keys see their own.

`report` prints one invoice line per key and model for the days from `--from`
to `--to` (inclusive, UTC). `suggest-price` prices 1M output tokens from the
throughput `scripts/load_test.py` measured for the run (its load_test.json),
or, with `--accelerator` and `--mfu`, from the model's FLOPs per token.
"""
import argparse
import datetime
import json
import os
import sys

from bigmodel_jax import perf
from bigmodel_jax.errors import ConfigError, NotFound, entrypoint
from bigmodel_jax.serving import usage
from bigmodel_jax.serving.ledger import Ledger, usd

DEFAULT_DB = "sqlite:///ledger.sqlite"


def default_db() -> str:
  return os.environ.get("BIGMODEL_JAX_DB", DEFAULT_DB)


def _date(text: str) -> datetime.datetime:
  try:
    return usage.day(text)
  except ValueError:
    raise ConfigError(f"{text!r} is not a date; use YYYY-MM-DD.") from None


def _usd(nano: int | None) -> str:
  return "-" if nano is None else usd(nano)


def _shown(name: str) -> str:
  """A key name with control characters escaped (safe on a terminal)."""
  return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in name)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--db", default=default_db(), help="SQLAlchemy URL")
  commands = parser.add_subparsers(dest="command", required=True)
  key_commands = commands.add_parser("keys").add_subparsers(
      dest="action", required=True)
  create = key_commands.add_parser("create")
  create.add_argument("--name", required=True)
  create.add_argument("--quota-tokens", type=int)
  create.add_argument("--rate", type=float, help="requests per minute")
  create.add_argument("--credit", type=float, help="prepaid USD")
  create.add_argument("--admin", action="store_true",
                      help="sees every key's usage in the console")
  key_commands.add_parser("list")
  revoke = key_commands.add_parser("revoke")
  revoke.add_argument("name", help="the key's name or its secret's prefix")
  report = commands.add_parser("report")
  report.add_argument("--from", dest="start", required=True, type=_date)
  report.add_argument("--to", dest="end", required=True, type=_date)
  report.add_argument("--csv", action="store_true")
  price = commands.add_parser("suggest-price")
  price.add_argument("--workdir", required=True)
  price.add_argument("--device-hour-usd", type=float, required=True)
  price.add_argument("--margin", type=float, default=0.5,
                     help="0.5: the price is 1.5x the cost")
  price.add_argument("--load-test", help="load_test.json (default: the run's)")
  price.add_argument("--accelerator", choices=sorted(perf.PEAK_FLOPS),
                     help="price from FLOPs on this device instead")
  price.add_argument("--mfu", type=float, default=0.3,
                     help="with --accelerator: the utilisation assumed")
  return parser


def _keys(ledger: Ledger, args) -> None:
  if args.action == "create":
    for name in ("quota_tokens", "rate", "credit"):
      value = getattr(args, name)
      if value is not None and not value > 0:
        raise ConfigError(f"--{name.replace('_', '-')}={value}: must be > 0.")
    key, secret = ledger.create_key(args.name, quota_tokens=args.quota_tokens,
                                    rate_per_minute=args.rate,
                                    credit_usd=args.credit, admin=args.admin)
    print(f"Created {'admin ' * key.admin}key {_shown(key.name)!r} "
          f"({key.prefix}...). Its secret, shown only now:\n{secret}")
  elif args.action == "list":
    print(f"{'name':20} {'prefix':14} {'created (UTC)':19} {'status':8} "
          f"{'quota':>10} {'rate/min':>8} {'credit $':>12} {'used tokens':>12}"
          f" {'spent $':>12}")
    for key, created in ledger.list_keys():
      tokens, spent = ledger.spent(key.id)
      status = "revoked" if key.revoked else "admin" if key.admin else "active"
      print(f"{_shown(key.name):20} {key.prefix:14} "
            f"{created:%Y-%m-%d %H:%M:%S} {status:8} "
            f"{key.quota_tokens or '-':>10} {key.rate_per_minute or '-':>8} "
            f"{_usd(key.credit_nanousd):>12} {tokens:>12} {_usd(spent):>12}")
  else:
    for key in ledger.revoke(args.name):
      print(f"Revoked {_shown(key.name)!r} ({key.prefix}...).")


def _report(ledger: Ledger, args) -> None:
  end = args.end + datetime.timedelta(days=1)
  if end <= args.start:
    raise ConfigError("--to is before --from.")
  lines = ledger.invoices(args.start, end)
  if args.csv:
    sys.stdout.write(usage.invoice_csv(lines))
    return
  rows = usage.invoice_lines(lines)
  print(f"Invoices {args.start:%Y-%m-%d} to {args.end:%Y-%m-%d} (UTC)")
  print(f"{'key':20} {'model':20} {'calls':>7} {'input':>10} {'output':>10} "
        f"{'unit':6} {'amount $':>12}")
  totals = {}
  for row in rows:
    print(f"{_shown(row['name']):20} {_shown(row['model']):20} "
          f"{row['calls']:>7} "
          f"{row['input_units']:>10} {row['output_units']:>10} "
          f"{row['unit']:6} {row['amount_usd']:>12}")
    totals[row["name"]] = totals.get(row["name"], 0) + row["price_nanousd"]
  for name, total in totals.items():
    print(f"{'total ' + _shown(name):62} {'':6} {_usd(total):>12}")


def _tokens_per_second(args) -> tuple[float, str]:
  """Output tokens/s of one device serving the run, and where it came from."""
  if args.accelerator:
    from bigmodel_jax import runs  # Loads JAX: only when FLOPs are asked for.
    run = runs.load(args.workdir)
    flops = 2 * run.family.num_params(run.params)  # Forward pass per token.
    return (args.mfu * perf.PEAK_FLOPS[args.accelerator] / flops,
            f"{args.accelerator} at {args.mfu:.0%} MFU, {flops:.3g} FLOPs "
            "per token")
  path = args.load_test or os.path.join(args.workdir, "load_test.json")
  if not os.path.isfile(path):
    raise NotFound(f"No load test at {path}: run scripts/load_test.py "
                   f"--workdir {args.workdir}, or give --accelerator.")
  with open(path) as f:
    results = json.load(f)
  best = max((r for r in results["rows"] if r["batching"]),
             key=lambda r: r["output_tokens_per_s"])
  return (best["output_tokens_per_s"],
          f"load test on {results['device']}, concurrency "
          f"{best['concurrency']}")


def _suggest_price(args) -> None:
  if not args.device_hour_usd > 0 or not args.margin >= 0:
    raise ConfigError("--device-hour-usd must be > 0 and --margin >= 0.")
  rate, source = _tokens_per_second(args)
  cost = args.device_hour_usd / (rate * 3600) * 1e6
  print(f"throughput      {rate:,.1f} output tokens/s ({source})")
  print(f"cost            ${cost:.4f} per 1M output tokens at "
        f"${args.device_hour_usd}/device-hour")
  print(f"suggested price ${cost * (1 + args.margin):.4f} per 1M output tokens "
        f"(margin {args.margin:.0%}); serving config: "
        f"per_1k_output={cost * (1 + args.margin) / 1000:.6g}")


@entrypoint
def main(argv=None) -> None:
  args = _parser().parse_args(argv)
  if args.command == "suggest-price":
    return _suggest_price(args)
  ledger = Ledger(args.db)
  if args.command == "keys":
    _keys(ledger, args)
  else:
    _report(ledger, args)


if __name__ == "__main__":
  main()
