"""Label Studio's JSON formats: tasks to import, annotations exported back.

  tasks(examples, class_names, kind)  -> [{"data": ..., "predictions": ...}]
  labeling_config(class_names, kind)  -> the project's XML labeling config
  corrections(exported)               -> {example id: label name}

A task's data holds "example_id" (the input's id) and "text" or "image"
(a data: URI PNG); its prediction pre-selects the model's label, with the
given label and the model's confidence in the task's "meta". The export
read back is Label Studio's JSON export of the project: each task's latest
annotation that was not cancelled gives its label.
"""
import base64
import html
import io

import numpy as np

from bigmodel_jax.errors import ConfigError

CHOICES = "label"  # The Choices control's name in the labeling config.


def png_uri(image: np.ndarray) -> str:
  """A data: URI of an (H, W, C) float image, its range stretched to 0..255."""
  from PIL import Image
  low, high = float(image.min()), float(image.max())
  pixels = np.uint8(np.round((image - low) / max(high - low, 1e-8) * 255))
  buffer = io.BytesIO()
  Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(
      buffer, format="PNG")
  return "data:image/png;base64," + base64.b64encode(
      buffer.getvalue()).decode("ascii")


def labeling_config(class_names: list[str], kind: str) -> str:
  """The XML labeling config of a project of `kind` "text" or "image"."""
  shown = ('<Text name="text" value="$text"/>' if kind == "text" else
           '<Image name="image" value="$image"/>')
  choices = "".join(f'<Choice value="{html.escape(n, quote=True)}"/>'
                    for n in class_names)
  return (f'<View>{shown}<Choices name="{CHOICES}" toName="{kind}" '
          f'choice="single" showInline="true">{choices}</Choices></View>')


def tasks(examples: list[dict], kind: str) -> list[dict]:
  """Tasks of `examples` ({"id", "content", "given", "predicted", "score",
  "reason"}; content: text, or a data: URI for images)."""
  return [{
      "data": {"example_id": e["id"], kind: e["content"]},
      "meta": {"given_label": e["given"], "reason": e["reason"]},
      "predictions": [{
          "model_version": "audit_labels", "score": round(e["score"], 6),
          "result": [{"from_name": CHOICES, "to_name": kind,
                      "type": "choices",
                      "value": {"choices": [e["predicted"]]}}]}],
  } for e in examples]


def corrections(exported) -> dict:
  """{example id: label} of a Label Studio JSON export."""
  if not isinstance(exported, list):
    raise ConfigError("A Label Studio export is a JSON list of tasks.")
  out = {}
  for number, task in enumerate(exported):
    example = (task.get("data") or {}).get("example_id") if isinstance(
        task, dict) else None
    if example is None:
      raise ConfigError(f"Task {number} of the export has no "
                        "data.example_id: it was not made by audit_labels.")
    done = [a for a in task.get("annotations") or []
            if not a.get("was_cancelled")]
    choices = [r["value"]["choices"] for a in done[-1:]
               for r in a.get("result") or []
               if r.get("type") == "choices" and r.get("value", {}).get(
                   "choices")]
    if choices:
      out[str(example)] = choices[-1][0]
  return out
