"""Load test of `python -m bigmodel_jax.serve`: continuous batching on and off.

  python scripts/load_test.py --workdir runs/shakespeare \\
      [--concurrency 1,8,32] [--requests 64] [--max_tokens 48] [--time_limit 60] \\
      [--key_args "--quota-tokens 1000000000 --credit 1000"]

For each serving mode (experiments/serving.py:batched, then :unbatched) it
starts a server on 127.0.0.1 (a fresh ledger and key in a temporary folder),
then at each concurrency sends `--requests` streamed completions from that
many concurrent clients (at most `--time_limit` seconds per level; requests
not started by then are not sent) and prints requests/s, output tokens/s,
p50/p99 latency and time to first token. Writes the table and the raw rows
to RUN/load_test.json and load_test.md (`billing suggest-price` reads the
JSON). Loopback only; bounded in count and time.
"""
import argparse
import asyncio
import json
import os
import platform
import tempfile
import time

import numpy as np

from bigmodel_jax.serving import process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Client:
  """One keep-alive HTTP/1.1 connection, read with asyncio streams: a lean
  client, so the load generator takes little of the CPU it measures."""

  def __init__(self, url: str, key: str):
    self.host, _, port = url.removeprefix("http://").partition(":")
    self.port, self.key = int(port), key
    self.reader = self.writer = None

  async def post(self, path: str, body: dict) -> tuple[int, dict, bytes]:
    if self.writer is None:
      self.reader, self.writer = await asyncio.open_connection(self.host,
                                                               self.port)
    data = json.dumps(body).encode()
    self.writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer "
        f"{self.key}\r\nContent-Type: application/json\r\nContent-Length: "
        f"{len(data)}\r\n\r\n".encode() + data)
    head = (await self.reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in head[1:] if line)
    return int(head[0].split()[1]), headers

  async def chunks(self, headers: dict):
    """The body, as it arrives (chunked) or whole (Content-Length)."""
    if "content-length" in headers:
      yield await self.reader.readexactly(int(headers["content-length"]))
      return
    while size := int(await self.reader.readline(), 16):
      yield (await self.reader.readexactly(size + 2))[:-2]
    await self.reader.readline()

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


async def _one(client: _Client, body: dict) -> dict:
  """One completion; its latency, time to first token and output tokens."""
  started = time.monotonic()
  first, tokens, text = None, 0, b""
  status, headers = await client.post("/v1/completions", body)
  async for chunk in client.chunks(headers):
    if status != 200:
      raise RuntimeError(f"HTTP {status}: {chunk[:300]!r}")
    if not body["stream"]:
      tokens = json.loads(chunk)["usage"]["completion_tokens"]
      continue
    text += chunk
    *events, text = text.split(b"\n\n")
    for event in events:
      if event.startswith(b"data: {"):
        if b'"usage"' in event:
          tokens = json.loads(event[6:])["usage"]["completion_tokens"]
        elif first is None:
          first = time.monotonic() - started
  latency = time.monotonic() - started
  return {"latency": latency, "ttft": first or latency, "tokens": tokens}


async def run_level(url, key, model, concurrency, requests, max_tokens,
                    prompt, time_limit, stream=True) -> dict:
  """`requests` completions from `concurrency` clients."""
  body = {"model": model, "prompt": prompt, "max_tokens": max_tokens,
          "temperature": 0.8, "stream": stream,
          "stream_options": {"include_usage": True}}
  todo = list(range(requests))
  results = []
  started = time.monotonic()

  async def worker():
    client = _Client(url, key)
    try:
      while todo and time.monotonic() - started < time_limit:
        i = todo.pop()
        results.append(await _one(client, {**body, "seed": i}))
    finally:
      client.close()
  await asyncio.gather(*(worker() for _ in range(concurrency)))
  elapsed = time.monotonic() - started
  latency = np.array([r["latency"] for r in results])
  ttft = np.array([r["ttft"] for r in results])
  return {"concurrency": concurrency, "requests": len(results),
          "seconds": elapsed,
          "requests_per_s": len(results) / elapsed,
          "output_tokens_per_s": sum(r["tokens"] for r in results) / elapsed,
          "p50_latency_ms": float(np.percentile(latency, 50) * 1000),
          "p99_latency_ms": float(np.percentile(latency, 99) * 1000),
          "p50_ttft_ms": float(np.percentile(ttft, 50) * 1000)}


def table(rows: list[dict]) -> str:
  lines = ["| batching | concurrency | requests | req/s | output tok/s | "
           "p50 latency ms | p99 latency ms | p50 TTFT ms |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(
        f"| {'on' if r['batching'] else 'off'} | {r['concurrency']} | "
        f"{r['requests']} | {r['requests_per_s']:.2f} | "
        f"{r['output_tokens_per_s']:.0f} | {r['p50_latency_ms']:.0f} | "
        f"{r['p99_latency_ms']:.0f} | {r['p50_ttft_ms']:.0f} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="a language-model run")
  parser.add_argument("--concurrency", default="1,8,32")
  parser.add_argument("--requests", type=int, default=64,
                      help="per concurrency level")
  parser.add_argument("--max_tokens", type=int, default=48)
  parser.add_argument("--prompt", default="ROMEO:")
  parser.add_argument("--time_limit", type=float, default=60,
                      help="seconds per level")
  parser.add_argument("--out", help="folder (default: the run)")
  parser.add_argument("--server_args", default="",
                      help='e.g. "--config.decode_steps=1" (both modes)')
  parser.add_argument("--no_stream", action="store_true",
                      help="whole responses (time to first token = latency)")
  parser.add_argument("--key_args", default="",
                      help='e.g. "--quota-tokens 1000000000 --credit 1000": '
                      "calls then hold their most in the ledger")
  args = parser.parse_args()
  levels = [int(c) for c in args.concurrency.split(",")]
  rows = []
  with tempfile.TemporaryDirectory() as folder:
    for variant in ("batched", "unbatched"):
      db = f"sqlite:///{os.path.join(folder, variant + '.sqlite')}"
      key = process.create_key(db, "load-test", *args.key_args.split())
      with process.Server(
          [args.workdir], names=["model"], db=db,
          config=os.path.join(ROOT, "experiments", f"serving.py:{variant}"),
          log=os.path.join(folder, f"{variant}.log"),
          args=args.server_args.split()) as server:
        for concurrency in levels:
          row = asyncio.run(run_level(server.url, key, "model", concurrency,
                                      args.requests, args.max_tokens,
                                      args.prompt, args.time_limit,
                                      not args.no_stream))
          rows.append({"batching": variant == "batched", **row})
          print(table(rows[-1:]).splitlines()[-1], flush=True)
  by = {(r["batching"], r["concurrency"]): r for r in rows}
  text = table(rows)
  for c in levels:
    gain = (by[True, c]["output_tokens_per_s"] /
            by[False, c]["output_tokens_per_s"])
    text += f"\n\nConcurrency {c}: batching gives {gain:.1f}x the output tokens/s."
  device = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
  print(f"\n{text}\n({device})")
  out = args.out or args.workdir
  with open(os.path.join(out, "load_test.json"), "w") as f:
    json.dump({"device": device, "max_tokens": args.max_tokens,
               "prompt": args.prompt, "rows": rows}, f, indent=2)
  with open(os.path.join(out, "load_test.md"), "w") as f:
    f.write(text + "\n")


if __name__ == "__main__":
  main()
