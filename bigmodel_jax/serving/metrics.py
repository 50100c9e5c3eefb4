"""Prometheus metrics of one server (its own registry, served at /metrics)."""
import prometheus_client as prom

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                   30, 60)


class Metrics:

  def __init__(self, served: dict):
    self.registry = prom.CollectorRegistry()
    r = self.registry
    self.requests = prom.Counter(
        "bmj_requests", "API calls by model, endpoint and HTTP status",
        ["model", "endpoint", "status"], registry=r)
    self.latency = prom.Histogram(
        "bmj_request_seconds", "Time from request to last byte",
        ["model", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
    self.first_token = prom.Histogram(
        "bmj_time_to_first_token_seconds", "Time to the first streamed token",
        ["model"], buckets=LATENCY_BUCKETS, registry=r)
    self.tokens = prom.Counter(
        "bmj_tokens", "Tokens (images) served; rate() gives tokens/s",
        ["model", "direction"], registry=r)
    occupancy = prom.Gauge("bmj_batch_occupancy",
                           "Fraction of KV-cache slots decoding", ["model"],
                           registry=r)
    depth = prom.Gauge("bmj_queue_depth", "Requests waiting for a slot",
                       ["model"], registry=r)
    batch = prom.Histogram("bmj_encoder_batch_size",
                           "Inputs per encoder call", ["model", "route"],
                           buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
    for name, model in served.items():
      for route in ("embedder", "image_embedder", "classifier"):
        if getattr(model, route):
          getattr(model, route).on_batch = batch.labels(name, route).observe
      if model.generator:
        generator = model.generator
        occupancy.labels(name).set_function(
            lambda g=generator: g.active / g.slots)
        depth.labels(name).set_function(lambda g=generator: g.queued)

  def exposition(self) -> tuple[bytes, str]:
    return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST
