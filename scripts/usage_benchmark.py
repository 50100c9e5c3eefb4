"""How fast the console's usage reads answer on a large ledger.

  python scripts/usage_benchmark.py [--rows 1000000] [--keys 100] [--days 30] \\
      [--db postgresql+psycopg://...]   # default: a new SQLite file

Fills a ledger with `--rows` usage rows of `--keys` keys spread evenly over
the last `--days` days (bulk inserts, no server), then times each read the
usage routes make — per-day totals, the latest calls, one call by request
id, key states, invoice lines — for one key and for every key (an admin),
and prints the median of 5 runs of each. A PostgreSQL URL should name an
empty database: the rows are added to it.
"""
import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time

from bigmodel_jax.serving import usage
from bigmodel_jax.serving.ledger import Ledger, now
from bigmodel_jax.serving.tables import usage as usage_table


def fill(ledger: Ledger, rows: int, keys: int, days: int) -> list[int]:
  """The ids of `keys` new keys with `rows` calls between them."""
  ids = [ledger.create_key(f"key-{i}")[0].id for i in range(keys)]
  start, span = now() - datetime.timedelta(days=days), days * 86400
  batch = 20_000
  with ledger.engine.begin() as db:
    for first in range(0, rows, batch):
      db.execute(usage_table.insert(), [dict(
          request_id=f"req-{i}", key_id=ids[i % keys], model="m",
          endpoint="completions", unit="tokens", input_units=7,
          output_units=48, latency_ms=20.0, status=200, price_nanousd=77_500,
          created_at=start + datetime.timedelta(seconds=span * i / rows))
          for i in range(first, min(rows, first + batch))])
  return ids


def median_ms(read) -> float:
  times = []
  for _ in range(5):
    started = time.perf_counter()
    read()
    times.append(1000 * (time.perf_counter() - started))
  return statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--rows", type=int, default=1_000_000)
  parser.add_argument("--keys", type=int, default=100)
  parser.add_argument("--days", type=int, default=30)
  parser.add_argument("--db", help="SQLAlchemy URL (default: new SQLite)")
  args = parser.parse_args()
  folder = tempfile.mkdtemp(prefix="bmj-usage-")
  url = args.db or f"sqlite:///{os.path.join(folder, 'ledger.sqlite')}"
  ledger = Ledger(url)
  started = time.perf_counter()
  ids = fill(ledger, args.rows, args.keys, args.days)
  print(f"{args.rows:,} rows, {args.keys} keys, {args.days} days on "
        f"{ledger.engine.dialect.name} ({platform.machine()}, "
        f"{os.cpu_count()} CPUs), filled in "
        f"{time.perf_counter() - started:.0f} s")
  engine, end = ledger.engine, now()
  month = end - datetime.timedelta(days=args.days)
  reads = {
      "daily totals, 30 days": lambda k: usage.daily(engine, month, end, k),
      "latest 20 calls": lambda k: usage.calls(engine, k, 20),
      "one call by request id": lambda k: usage.calls(
          engine, k, request_id=f"req-{args.rows - 1}"),
      "key states": lambda k: usage.key_states(engine, k),
      "invoice lines, 30 days": lambda k: ledger.invoices(month, end, k)}
  print("\n| read | one key (ms) | every key (ms) |\n|---|---:|---:|")
  for name, read in reads.items():
    print(f"| {name} | {median_ms(lambda: read(ids[0])):.1f} | "
          f"{median_ms(lambda: read(None)):.1f} |")


if __name__ == "__main__":
  main()
