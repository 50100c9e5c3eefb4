"""The HTTP API: OpenAI's routes, metered calls, JSON errors.

  app = api.create_app({"shakespeare": served}, ledger, config)

Routes: POST /v1/completions, /v1/chat/completions, /v1/embeddings,
/v1/classify, /v1/images/generations; GET /v1/models (key required, free),
/healthz, /metrics (Prometheus; no key: keep them on a private network) and
/openapi.json; the console's page and usage routes (console.py). A metered
call is authenticated, rate-limited, parsed, checked against the model,
holds what it may use in the ledger (or replays the answer of a billed call
with the same X-Request-Id), is served, and is written to the ledger before
its last bytes leave. Every error is {"error": {"message", "type", "code"}} with its
status, never a traceback. Parsing large bodies and tokenizing run off the
event loop, so no request stalls the others.
"""
import asyncio
import base64
import contextlib
import json
import logging
import time

import numpy as np
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from bigmodel_jax.serving import bodies, console, openapi, schemas, settings
from bigmodel_jax.serving.completions import (Generation, check_length,
                                              replayed_events)
from bigmodel_jax.serving.gate import ApiError, Gate
from bigmodel_jax.serving.meter import Call
from bigmodel_jax.serving.metrics import Metrics
from bigmodel_jax.serving.models import BadInput
from bigmodel_jax.serving.writes import Billed

ENDPOINT_NAMES = {"completions": "/v1/completions",
                  "chat": "/v1/chat/completions",
                  "embeddings": "/v1/embeddings", "classify": "/v1/classify",
                  "images": "/v1/images/generations"}


def _error(status: int, message: str, kind: str, code=None, headers=None):
  return JSONResponse({"error": {"message": message, "type": kind,
                                 "param": None, "code": code}},
                      status_code=status, headers=headers)


def create_app(served: dict, ledger, config) -> FastAPI:
  gate = Gate(ledger, settings.prices(config), config)

  @contextlib.asynccontextmanager
  async def lifespan(_):
    leases = asyncio.create_task(gate.keep_leases(config.replay_hours))
    yield
    leases.cancel()

  app = FastAPI(title="bigmodel_jax", docs_url=None, redoc_url=None,
                lifespan=lifespan)
  routes = [("/v1/completions", schemas.Completion),
            ("/v1/chat/completions", schemas.ChatCompletion),
            ("/v1/embeddings", schemas.Embeddings),
            ("/v1/classify", schemas.Classify),
            ("/v1/images/generations", schemas.ImageGeneration)]
  app.openapi = lambda: openapi.schema(app, [path for path, _ in routes],
                                       sorted(served))
  extra = {path: openapi.body_schema(schema) for path, schema in routes}
  metrics = Metrics(served)
  limit, max_inputs = config.max_body_bytes, config.max_inputs

  @app.exception_handler(ApiError)
  async def api_error(request, e: ApiError):
    return _error(e.status, e.message, e.kind, e.code, e.headers)

  @app.exception_handler(HTTPException)
  async def http_error(request, e: HTTPException):
    return _error(e.status_code, f"{request.method} {request.url.path}: "
                  f"{e.detail}.", "invalid_request_error")

  @app.exception_handler(Exception)
  async def server_error(request, e: Exception):
    logging.exception("Unhandled error in %s", request.url.path)
    return _error(500, "Internal server error; nothing was charged.",
                  "server_error")

  def model_of(name: str, endpoint: str):
    if name not in served:
      raise ApiError(404, f"The model {name!r} does not exist; this server "
                     f"has {sorted(served)}.", "invalid_request_error",
                     "model_not_found")
    model = served[name]
    if endpoint not in model.endpoints:
      raise ApiError(400, f"Model {name!r} does not serve "
                     f"{ENDPOINT_NAMES[endpoint]}; it serves "
                     f"{[ENDPOINT_NAMES[e] for e in model.endpoints]}.",
                     "invalid_request_error", "unsupported_endpoint")
    return model

  def replay(e: Billed, call: Call, body):
    """The stored answer of a billed call with this request id, or 409."""
    row, request_id = e.row, call.request_id
    if row["answer"] is None:
      why = (f"for a stream its client left after {row['output_units']} "
             "tokens" if row["status"] == 499 else
             f"and its answer, kept {config.replay_hours:g} h, is gone")
      raise ApiError(409, f"The call with X-Request-Id {request_id!r} was "
                     f"billed {why}; send a new id.",
                     "invalid_request_error", "request_id_billed")
    if row["request_hash"] != call.request_hash:
      raise ApiError(409, f"X-Request-Id {request_id!r} was used for a "
                     "different request; send a new id.",
                     "invalid_request_error", "request_id_reused")
    answer = json.loads(row["answer"])
    headers = {"x-request-id": request_id, "x-replayed": "true"}
    if getattr(body, "stream", False):
      return StreamingResponse(replayed_events(answer, bool(
          body.stream_options and body.stream_options.include_usage)),
                               media_type="text/event-stream", headers=headers)
    return JSONResponse(answer, headers=headers)

  async def metered(request: Request, endpoint: str, schema, handler):
    """Auth, rate, body, model, then `handler(model, body, call)`."""
    started, status, name = time.monotonic(), 500, "-"
    call = None
    try:
      key = await gate.authenticate(request.headers.get("authorization"))
      client_id = bodies.request_id(request.headers.get("x-request-id"))
      await gate.check_rate(key)
      body = await bodies.read_body(request, schema, limit,
                                    config.body_timeout_seconds)
      name = body.model if body.model in served else "unknown"
      model = model_of(body.model, endpoint)
      call = Call(gate, metrics, key, model.name, endpoint,
                  bodies.request_hash(endpoint, body))
      if client_id:
        call.request_id, call.client_id = client_id, True
      try:
        response = await handler(model, body, call)
      except Billed as e:
        response = replay(e, call, body)
      response.headers["x-request-id"] = call.request_id
      status = response.status_code
      if isinstance(response, StreamingResponse):
        call = None  # The stream closes it when it ends.
      return response
    except ApiError as e:
      status = e.status
      raise
    except BadInput as e:
      status = 400
      raise ApiError(400, str(e), "invalid_request_error",
                     "invalid_input") from None
    except sa.exc.IntegrityError:
      status = 409
      raise ApiError(409, "This X-Request-Id was used before; nothing was "
                     "charged.", "invalid_request_error",
                     "duplicate_request_id") from None
    finally:
      if call is not None:
        call.close()
      metrics.requests.labels(name, endpoint, str(status)).inc()
      metrics.latency.labels(name, endpoint).observe(
          time.monotonic() - started)

  async def generate(request, model, body, call, prompts, max_tokens, chat,
                     image_units=0):
    """Generates for `prompts` (models.Prompt) and bills `image_units` more
    input units."""
    if len(prompts) * body.n > max_inputs or body.n > config.max_n:
      raise ApiError(400, f"n={body.n} x {len(prompts)} prompts is over the "
                     f"limit (n <= {config.max_n}, {max_inputs} choices).",
                     "invalid_request_error", "too_many_choices")
    for prompt in prompts:
      check_length(model, prompt.ids, max_tokens)
    units = sum(p.units for p in prompts) + image_units
    call.hold = await gate.hold(call, units, len(prompts) * body.n *
                                max_tokens)
    generation = Generation(model, body, prompts, max_tokens, chat=chat,
                            call=call, prompt_units=units)
    generation.start()
    if body.stream:
      async def events():
        try:
          async for event in generation.stream(
              metrics.first_token.labels(model.name).observe):
            yield event
        finally:
          call.close()
      return StreamingResponse(events(), media_type="text/event-stream")
    try:
      return JSONResponse(await generation.whole(request.is_disconnected))
    finally:
      generation.cancel()

  @app.post("/v1/completions", openapi_extra=extra["/v1/completions"])
  async def completions(request: Request):
    async def handle(model, body, call):
      texts = bodies.texts(body.prompt, max_inputs)
      prompts = await asyncio.to_thread(lambda: [model.prompt(p)
                                                 for p in texts])
      longest = max(len(p.ids) for p in prompts)
      max_tokens = body.max_tokens or max(1, min(
          config.default_max_tokens, model.context - longest))
      return await generate(request, model, body, call, prompts, max_tokens,
                            chat=False)
    return await metered(request, "completions", schemas.Completion, handle)

  @app.post("/v1/chat/completions", openapi_extra=extra[
      "/v1/chat/completions"])
  async def chat(request: Request):
    async def handle(model, body, call):
      images = [bodies.image_bytes(url) for m in body.messages
                for url in m.images()]
      prompt = await asyncio.to_thread(model.chat_prompt, [
          {"role": m.role, "content": m.text()} for m in body.messages],
          images)
      max_tokens = (body.max_completion_tokens or body.max_tokens or
                    max(1, model.context - len(prompt.ids)))
      return await generate(request, model, body, call, [prompt], max_tokens,
                            chat=True,
                            image_units=len(images) * config.image_tokens)
    return await metered(request, "chat", schemas.ChatCompletion, handle)

  async def encode(model, call, batcher, inputs, most_units, answer,
                   output=False):
    """Encodes `inputs`, bills them (as input units, or as output units
    when they are made: images) and returns `answer(outputs, units)`."""
    units = (0, most_units) if output else (most_units, 0)
    call.hold = await gate.hold(call, *units)
    results = await asyncio.gather(*(asyncio.wrap_future(batcher.submit(x))
                                     for x in inputs))
    units = sum(count for _, count in results)
    body = answer([output for output, _ in results], units)
    await call.commit(*((0, units) if output else (units, 0)), body)
    return JSONResponse(body)

  async def images_of(model, body) -> list:
    """The request's base64 `images`, decoded and preprocessed."""
    if body.images is None:
      raise ApiError(400, f"Model {model.name!r} reads images: send base64 "
                     "images in \"images\".", "invalid_request_error",
                     "missing_images")
    images = bodies.texts(body.images, max_inputs)
    return await asyncio.to_thread(lambda: [
        model.image_input(bodies.image_bytes(i)) for i in images])

  def texts_of(model, body) -> list:
    """The request's texts (`input`)."""
    if body.input is None:
      raise ApiError(400, f"Model {model.name!r} reads text: send "
                     "\"input\".", "invalid_request_error", "missing_input")
    return bodies.texts(body.input, max_inputs)

  @app.post("/v1/embeddings", openapi_extra=extra["/v1/embeddings"])
  async def embeddings(request: Request):
    async def handle(model, body, call):
      if body.images is not None and body.input is not None:
        raise ApiError(400, "Send \"input\" (texts) or \"images\", not "
                       "both.", "invalid_request_error", "input_and_images")
      images = body.images is not None
      batcher = model.image_embedder if images else model.embedder
      if batcher is None:
        raise ApiError(400, f"Model {model.name!r} embeds "
                       f"{'text' if images else 'images'}: send "
                       f"{'input' if images else 'images'}.",
                       "invalid_request_error", "unsupported_input")
      if images:
        inputs = await images_of(model, body)
        call.unit, most = "images", len(inputs)
      else:
        inputs = texts_of(model, body)
        most = len(inputs) * model.run.config.input.seq_len

      def answer(vectors, units):
        data = [{"object": "embedding", "index": i, "embedding": (
            base64.b64encode(np.asarray(v, "<f4").tobytes()).decode()
            if body.encoding_format == "base64" else np.asarray(v).tolist())}
                for i, v in enumerate(vectors)]
        tokens = 0 if call.unit == "images" else units  # OpenAI's fields.
        usage = {"prompt_tokens": tokens, "total_tokens": tokens,
                 **({"images": units} if call.unit == "images" else {})}
        return {"object": "list", "data": data, "model": model.name,
                "usage": usage}
      return await encode(model, call, batcher, inputs, most, answer)
    return await metered(request, "embeddings", schemas.Embeddings, handle)

  @app.post("/v1/classify", openapi_extra=extra["/v1/classify"])
  async def classify(request: Request):
    async def handle(model, body, call):
      if model.image_input is not None:
        inputs = await images_of(model, body)
        call.unit, most = "images", len(inputs)
      else:
        inputs = texts_of(model, body)
        most = len(inputs) * model.run.config.input.seq_len
      names = model.class_names

      def answer(probabilities, units):
        data = [{"index": i, "label": names[int(np.argmax(p))],
                 "probabilities": {n: float(v) for n, v in zip(names, p)}}
                for i, p in enumerate(probabilities)]
        return {"object": "list", "data": data, "model": model.name,
                "usage": {call.unit: units}}
      return await encode(model, call, model.classifier, inputs, most, answer)
    return await metered(request, "classify", schemas.Classify, handle)

  @app.post("/v1/images/generations",
            openapi_extra=extra["/v1/images/generations"])
  async def images(request: Request):
    async def handle(model, body, call):
      items = model.image_requests(body.prompt, body.n, body.size, body.seed)
      call.unit = "images"

      def answer(pngs, units):
        return {"created": int(time.time()), "data": [
            {"b64_json": base64.b64encode(png).decode()} for png in pngs],
                "usage": {"images": units}}
      return await encode(model, call, model.image_generator, items,
                          len(items), answer, output=True)
    return await metered(request, "images", schemas.ImageGeneration, handle)

  @app.get("/v1/models")
  async def models(request: Request):
    await gate.authenticate(request.headers.get("authorization"))
    return {"object": "list", "data": [
        {"id": name, "object": "model", "owned_by": "bigmodel_jax",
         "created": 0, "endpoints": [ENDPOINT_NAMES[e] for e in m.endpoints],
         "context_length": m.context if m.generator else None,
         "input": m.inputs}
        for name, m in served.items()]}

  console.add_routes(app, gate)

  @app.get("/healthz")
  async def healthz():
    return {"status": "ok", "models": sorted(served)}

  @app.get("/metrics")
  async def prometheus():
    data, kind = metrics.exposition()
    return Response(data, media_type=kind)

  return app
