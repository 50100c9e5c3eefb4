"""/v1/completions and /v1/chat/completions: requests to the generator,
tokens back as text, whole or as server-sent events.

Each choice is one generator request (its own slot and seed). New ids are
decoded after the ids before them, so a multi-byte character split over
tokens comes out whole and a word keeps its leading space; text that could
be the start of a `stop` string is held back until it is not, and a stop
string ends the choice (not included in the text).
"""
import asyncio
import copy
import json
import secrets
import threading
import time
import weakref

import numpy as np

from bigmodel_jax.serving.gate import ApiError
from bigmodel_jax.serving.generation import Request


class Inbox:
  """Hands the generator's tokens to the event loop: one wake-up per
  decode step for every stream, not one per stream."""
  _of_loop = weakref.WeakKeyDictionary()

  def __init__(self, loop):
    self.loop, self.items, self.lock = loop, [], threading.Lock()

  @classmethod
  def of(cls, loop) -> "Inbox":
    if loop not in cls._of_loop:
      cls._of_loop[loop] = cls(loop)
    return cls._of_loop[loop]

  def put(self, queue: asyncio.Queue, item) -> None:
    with self.lock:
      self.items.append((queue, item))
      if len(self.items) > 1:  # A wake-up is on its way.
        return
    self.loop.call_soon_threadsafe(self._drain)

  def _drain(self) -> None:
    with self.lock:
      items, self.items = self.items, []
    for queue, item in items:
      queue.put_nowait(item)


class Choice:
  """The text of one choice, as its tokens arrive."""

  def __init__(self, served, stops: list[str]):
    self.served, self.stops = served, StopMatcher(stops)
    self.ids, self.text, self.shown = [], "", 0
    self.whole, self.whole_ids = "", 0  # Text of ids that end a character.
    self.finish = None
    self.sent_tokens = 0  # Tokens whose text has left (abandoned streams).

  def add(self, tokens: list, finish: str | None) -> str:
    """New text to show; sets `finish` when the choice is done."""
    self.ids.extend(tokens)
    tail = self._tail()
    text = self.whole + tail
    if tail.endswith("\ufffd"):  # A character is still incomplete.
      stops = self.stops.copy()
      cut = stops.feed(tail)
    else:
      stops, cut = self.stops, self.stops.feed(tail)
      self.whole, self.whole_ids = text, len(self.ids)
    if cut is not None:
      text, finish = text[:cut], "stop"
    self.text, self.finish = text, finish
    end = len(text)
    if not finish:  # Hold back a possible start of a stop string or char.
      end -= stops.held + text.endswith("\ufffd")
    delta, self.shown = text[self.shown:max(end, self.shown)], max(end,
                                                                 self.shown)
    return delta

  def _tail(self) -> str:
    """The text of the ids after `whole_ids`, decoded after the few ids
    before them: a SentencePiece word's leading space is dropped at the
    start of a text only."""
    start = max(0, self.whole_ids - 4)
    before = self.served.decode(self.ids[start:self.whole_ids])
    text = self.served.decode(self.ids[start:])
    if text.startswith(before):
      return text[len(before):]
    return self.served.decode(self.ids[self.whole_ids:])


class StopMatcher:
  """Finds stop strings in a text fed piece by piece: one Knuth-Morris-
  Pratt automaton per string, so each character costs O(1) amortised work
  whatever the strings' lengths."""

  def __init__(self, stops: list[str]):
    self.stops, self.back = stops, [_failure(s) for s in stops]
    self.states, self.fed = [0] * len(stops), 0

  def copy(self) -> "StopMatcher":
    """The same matcher, to feed without changing this one."""
    other = copy.copy(self)
    other.states = list(self.states)
    return other

  @property
  def held(self) -> int:
    """How many characters at the end could begin a stop string."""
    return max(self.states, default=0)

  def feed(self, text: str) -> int | None:
    """Where the first stop string to end in `text` starts (an index into
    everything fed so far), or None."""
    for char in text:
      self.fed += 1
      for j, (stop, back) in enumerate(zip(self.stops, self.back)):
        state = self.states[j]
        while state and stop[state] != char:
          state = back[state - 1]
        state += stop[state] == char
        if state == len(stop):
          self.states[j] = back[state - 1]
          return self.fed - len(stop)
        self.states[j] = state
    return None


def _failure(stop: str) -> list[int]:
  """KMP: for each prefix of `stop`, its longest proper border."""
  back, k = [0] * len(stop), 0
  for i in range(1, len(stop)):
    while k and stop[i] != stop[k]:
      k = back[k - 1]
    k += stop[i] == stop[k]
    back[i] = k
  return back


def check_length(served, prompt_ids: np.ndarray, max_tokens: int) -> None:
  """400 for a prompt or max_tokens the context cannot hold."""
  context, prompt = served.context, len(prompt_ids)
  if prompt == 0:
    raise ApiError(400, "The prompt is empty.", "invalid_request_error",
                   "empty_prompt")
  if prompt >= context:
    raise ApiError(400, f"The prompt has {prompt} tokens; model "
                   f"{served.name!r} has a context of {context}, so at most "
                   f"{context - 1}.", "invalid_request_error",
                   "context_length_exceeded")
  if prompt + max_tokens > context:
    raise ApiError(400, f"max_tokens={max_tokens} with a {prompt}-token "
                   f"prompt exceeds the context of {context}; at most "
                   f"{context - prompt}.", "invalid_request_error",
                   "max_tokens_exceeded")


def _sse(payload) -> str:
  return f"data: {json.dumps(payload)}\n\n"


class Generation:
  """One API call: its choices in flight on the generator."""

  def __init__(self, served, body, prompts: list, max_tokens: int, *,
               chat: bool, call, prompt_units: int):
    """`prompts`: models.Prompt each; `prompt_units`: the input units
    billed."""
    self.served, self.body, self.chat, self.call = served, body, chat, call
    self.prompts, self.max_tokens = prompts, max_tokens
    self.id = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
    self.created = int(time.time())
    self.prompt_tokens = prompt_units
    self.choices = [Choice(served, body.stops())
                    for _ in range(len(prompts) * body.n)]
    self.requests = []
    self.events = asyncio.Queue()

  def start(self) -> None:
    inbox = Inbox.of(asyncio.get_running_loop())
    seed = (self.body.seed if self.body.seed is not None
            else secrets.randbits(32))
    eos = getattr(self.served.run.tokenizer, "eos_id", None)
    for i, choice in enumerate(self.choices):
      prompt = self.prompts[i // self.body.n]
      request = Request(
          prompt.ids, self.max_tokens,
          lambda tokens, finish, i=i: inbox.put(self.events,
                                                (i, tokens, finish)),
          temperature=self.body.temperature, top_k=self.body.top_k,
          top_p=self.body.top_p, seed=(seed + i) % 2**32, eos_id=eos,
          inputs=prompt.inputs)
      self.requests.append(request)
      self.served.generator.submit(request)

  def cancel(self) -> None:
    for request in self.requests:
      self.served.generator.cancel(request)

  async def next_text(self) -> tuple[int, str, str | None]:
    """(choice, new text, finish reason) of the next tokens: all that have
    arrived for that choice, so a slow reader gets fewer, longer chunks."""
    while True:
      i, tokens, finish = await self.events.get()
      waiting = []
      while not finish and not self.events.empty():
        item = self.events.get_nowait()
        if item[0] == i:
          tokens, finish = tokens + item[1], item[2]
        else:
          waiting.append(item)
      for item in waiting:  # Other choices' tokens keep their order.
        self.events.put_nowait(item)
      choice = self.choices[i]
      if choice.finish:  # Ended by a stop string already.
        continue
      delta = choice.add(tokens, finish)
      if choice.finish and not finish:
        self.served.generator.cancel(self.requests[i])
      if choice.finish == "error":
        raise ApiError(500, "Generation failed on the server; nothing was "
                       "charged.", "server_error")
      if choice.finish == "cancelled":
        raise ApiError(503, "The server is shutting down; nothing was "
                       "charged.", "server_error")
      return i, delta, choice.finish

  @property
  def done(self) -> bool:
    return all(c.finish for c in self.choices)

  def usage(self, completion_tokens: int | None = None) -> dict:
    completion = (sum(len(c.ids) for c in self.choices)
                  if completion_tokens is None else completion_tokens)
    return {"prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion}

  def _choice(self, i: int, text: str, finish: str | None) -> dict:
    finish = {"stop": "stop", "length": "length"}.get(finish, finish)
    if self.chat:
      return {"index": i, "message": {"role": "assistant", "content": text},
              "finish_reason": finish}
    return {"index": i, "text": text, "logprobs": None,
            "finish_reason": finish}

  def _head(self, chunk: bool) -> dict:
    kind = "chat.completion" if self.chat else "text_completion"
    return {"id": self.id, "object": kind + (".chunk" if chunk and self.chat
                                             else ""),
            "created": self.created, "model": self.served.name}

  async def whole(self, disconnected) -> dict:
    """Waits for every choice; commits the ledger row; the response."""
    while not self.done:
      await self.next_text()
    if await disconnected():  # Nothing was delivered: nothing is charged.
      raise ApiError(499, "The client left.", "client_closed")
    return await self._commit()

  async def _commit(self) -> dict:
    """Bills the call, keeping its whole answer; returns that answer."""
    usage = self.usage()
    answer = {**self._head(False), "usage": usage, "choices": [
        self._choice(i, c.text, c.finish) for i, c in enumerate(self.choices)]}
    await self.call.commit(usage["prompt_tokens"], usage["completion_tokens"],
                           answer)
    return answer

  def _delta(self, i: int, text: str | None, finish: str | None,
             role: bool = False) -> dict:
    if self.chat:
      delta = {"role": "assistant", "content": ""} if role else (
          {"content": text} if text else {})
      return {"index": i, "delta": delta, "finish_reason": finish}
    return {"index": i, "text": text or "", "logprobs": None,
            "finish_reason": finish}

  async def stream(self, first_token_seconds):
    """Server-sent events; the ledger row commits before the last event."""
    include_usage = bool(self.body.stream_options and
                         self.body.stream_options.include_usage)
    first, failed = True, False
    try:
      if self.chat:
        yield _sse({**self._head(True), "choices": [
            self._delta(i, None, None, role=True)
            for i in range(len(self.choices))]})
      while not self.done:
        i, delta, finish = await self.next_text()
        if not (delta or finish):
          continue
        if first:
          first_token_seconds(time.monotonic() - self.call.started)
          first = False
        yield _sse({**self._head(True),
                    "choices": [self._delta(i, delta, finish)]})
        self.choices[i].sent_tokens = len(self.choices[i].ids)
      usage = (await self._commit())["usage"]
      if include_usage:
        yield _sse({**self._head(True), "choices": [], "usage": usage})
      yield "data: [DONE]\n\n"
    except ApiError as e:  # A failed call is not charged.
      failed = True
      yield _sse({"error": {"message": e.message, "type": e.kind,
                            "code": e.code}})
    finally:
      self.cancel()
      sent = sum(c.sent_tokens for c in self.choices)
      if not (self.call.recorded or failed) and sent:  # The client left.
        self.call.commit_abandoned(self.prompt_tokens, sent)


def replayed_events(answer: dict, include_usage: bool):
  """A stored answer (as `Generation.whole` returned it) as the events of a
  stream: each choice's text in one chunk."""
  chat = answer["object"] == "chat.completion"
  head = {k: answer[k] for k in ("id", "created", "model")}
  head["object"] = "chat.completion.chunk" if chat else "text_completion"
  for choice in answer["choices"]:
    if chat:
      yield _sse({**head, "choices": [{"index": choice["index"], "delta": {
          "role": "assistant", "content": choice["message"]["content"]},
                                       "finish_reason": None}]})
      choice = {"index": choice["index"], "delta": {},
                "finish_reason": choice["finish_reason"]}
    yield _sse({**head, "choices": [choice]})
  if include_usage:
    yield _sse({**head, "choices": [], "usage": answer["usage"]})
  yield "data: [DONE]\n\n"
