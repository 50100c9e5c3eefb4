"""Chat templates: how a conversation becomes the tokens a decoder sees.

A template maps each role to the text that opens its turn ("{content}" is
the message; the assistant's entry is only its header, since the model
writes what follows). An assistant turn is its header, its content and the
end-of-document token, so generation stops there; every conversation starts
with that token too, as documents do in pretraining. Only the assistant's
content and closing token are trained on (`pieces` marks them). The template
is saved with the run (WORKDIR/chat_template.json), so sampling and serving
render prompts exactly as training did.

  template = chat.Template(chat.DEFAULT)
  ids = template.prompt_ids(tokenizer, [{"role": "user", "content": "Hi"}])
"""
import json
import os

import numpy as np

from bigmodel_jax.errors import ConfigError

DEFAULT = {"system": "### System:\n{content}\n\n",
           "user": "### User:\n{content}\n\n",
           "assistant": "### Assistant:\n"}
FILE = "chat_template.json"


def messages_of(record: dict, where: str) -> list[dict]:
  """The messages of a JSONL record: {"prompt", "response"} or
  {"messages": [{"role", "content"}, ...]} ending with the assistant."""
  if "messages" in record:
    messages = record["messages"]
  elif "prompt" in record and "response" in record:
    messages = [{"role": "user", "content": record["prompt"]},
                {"role": "assistant", "content": record["response"]}]
  else:
    raise ConfigError(f"{where}: a record needs \"prompt\" and \"response\", "
                      "or \"messages\".")
  if (not messages or not all(isinstance(m, dict) and {"role", "content"} <=
                              m.keys() for m in messages) or
      messages[-1]["role"] != "assistant"):
    raise ConfigError(f"{where}: messages must be {{\"role\", \"content\"}} "
                      "objects ending with the assistant's.")
  return messages


class Template:
  """Renders conversations as (text or None for the end token, trained)."""

  def __init__(self, roles: dict):
    if "assistant" not in roles or any(
        role != "assistant" and "{content}" not in text
        for role, text in roles.items()):
      raise ConfigError("A chat template needs an \"assistant\" header and "
                        "\"{content}\" in every other role's text.")
    self.roles = dict(roles)

  def pieces(self, messages: list[dict]) -> list[tuple[str | None, bool]]:
    out = [(None, False)]
    for message in messages:
      role = message["role"]
      if role not in self.roles:
        raise ConfigError(f"Role {role!r} is not in the chat template "
                          f"({sorted(self.roles)}).")
      if role == "assistant":
        out += [(self.roles[role], False), (message["content"], True),
                (None, True)]
      else:
        out.append((self.roles[role].format(content=message["content"]),
                    False))
    return out

  def encode(self, tokenizer, messages: list[dict]
             ) -> tuple[np.ndarray, np.ndarray]:
    """(ids, trained) of a conversation; each piece encoded on its own."""
    ids, trained = [], []
    for text, train in self.pieces(messages):
      piece = [tokenizer.eos_id] if text is None else tokenizer.encode(text)
      ids.extend(int(i) for i in piece)
      trained.extend([train] * len(piece))
    return np.array(ids, np.int32), np.array(trained, bool)

  def prompt_ids(self, tokenizer, messages: list[dict]) -> np.ndarray:
    """The ids that ask the model for the assistant's next turn."""
    ids, _ = self.encode(tokenizer, messages + [
        {"role": "assistant", "content": ""}])
    return ids[:-1]  # Without the closing token.

  def save(self, workdir: str) -> None:
    with open(os.path.join(workdir, FILE), "w") as f:
      json.dump(self.roles, f, indent=2)


def load(workdir: str) -> Template | None:
  """The run's template, or None for runs not trained on conversations."""
  path = os.path.join(workdir, FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return Template(json.load(f))
