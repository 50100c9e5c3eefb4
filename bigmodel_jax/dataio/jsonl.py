"""The records of a JSONL file, each with where it is (for error lines)."""
import json
from typing import Iterator

from bigmodel_jax.errors import ConfigError


def records(path: str, errors: str = "strict") -> Iterator[tuple[str, object]]:
  """("PATH:LINE", record) of each non-blank line; ConfigError naming the
  line that is not JSON. `errors`: how undecodable bytes are read."""
  with open(path, encoding="utf-8", errors=errors) as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        try:
          yield f"{path}:{number}", json.loads(line)
        except json.JSONDecodeError as e:
          raise ConfigError(f"{path}:{number} is not JSON ({e}).") from None
