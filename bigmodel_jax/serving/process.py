"""A server on a free loopback port, in a child process (load tests, tests)
or in a thread of this one (tests that reach into the engine).

  with process.Server(["runs/shakespeare"], db="sqlite:///l.sqlite") as server:
    httpx.get(server.url + "/healthz")
  with process.InThread(app, config) as server: ...
"""
import os
import socket
import subprocess
import sys
import threading
import time

import httpx

from bigmodel_jax.serving import http_server


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Server:
  """Starts `python -m bigmodel_jax.serve` and waits until /healthz answers."""

  def __init__(self, workdirs: list, *, db: str, names: list = (),
               config: str | None = None, args: list = (), log: str,
               env: dict | None = None, timeout: float = 300):
    self.port = free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    command = [sys.executable, "-m", "bigmodel_jax.serve", "--port",
               str(self.port), "--db", db]
    for workdir in workdirs:
      command += ["--workdir", workdir]
    for name in names:
      command += ["--name", name]
    if config:
      command += ["--config", config]
    self.log = log
    with open(log, "a") as out:
      self.process = subprocess.Popen(
          command + list(args), stdout=out, stderr=subprocess.STDOUT,
          env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      if self.process.poll() is not None:
        raise RuntimeError(f"The server exited ({self.process.returncode}):"
                           f"\n{self.output()}")
      try:
        if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
          return
      except httpx.HTTPError:
        time.sleep(0.3)
    self.stop()
    raise RuntimeError(f"The server did not start in {timeout} s:\n"
                       f"{self.output()}")

  def output(self) -> str:
    with open(self.log) as f:
      return f.read()[-4000:]

  def stop(self) -> None:
    if self.process.poll() is None:
      self.process.terminate()
      try:
        self.process.wait(30)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.stop()


class InThread:
  """Serves an app (`api.create_app`) from a thread of this process."""

  def __init__(self, app, config, timeout: float = 60):
    self.port = free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self.server = http_server.server(app, "127.0.0.1", self.port, config)
    self.thread = threading.Thread(target=self.server.run, daemon=True)
    self.thread.start()
    deadline = time.monotonic() + timeout
    while not self.server.started:
      if time.monotonic() > deadline or not self.thread.is_alive():
        raise RuntimeError("The server thread did not start.")
      time.sleep(0.05)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.server.should_exit = True
    self.thread.join(30)


def create_key(db: str, name: str, *options) -> str:
  """A new key's secret, made by the billing command."""
  created = subprocess.run(
      [sys.executable, "-m", "bigmodel_jax.billing", "--db", db, "keys",
       "create", "--name", name, *options], check=True, capture_output=True,
      text=True)
  return created.stdout.strip().splitlines()[-1]
