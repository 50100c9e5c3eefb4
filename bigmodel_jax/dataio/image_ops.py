"""Image preprocessing ops, composed by a config string as in big_vision.

  "resize(36)|random_crop(32)|flip_lr|value_range(-1, 1)"

Each name is a function here that takes the op's arguments and returns
`op(image, rng) -> image` on one float32 HWC image in [0, 255] (numpy).
"""
import ast
import io

import numpy as np
from PIL import Image

from bigmodel_jax.errors import ConfigError


def resize(size: int | tuple[int, int]):
  """Bilinear resize to `size` (an int for square)."""
  height, width = (size, size) if isinstance(size, int) else size

  def op(image, rng):
    if image.shape[:2] == (height, width):
      return image
    channels = [Image.fromarray(image[..., c]).resize((width, height),
                                                      Image.BILINEAR)
                for c in range(image.shape[-1])]
    return np.stack([np.asarray(c, np.float32) for c in channels], -1)

  return op


def resize_small(size: int):
  """Resizes so that the shorter side is `size`, keeping the aspect ratio."""
  def op(image, rng):
    height, width = image.shape[:2]
    scale = size / min(height, width)
    return resize((round(height * scale), round(width * scale)))(image, rng)

  return op


def central_crop(size: int):
  def op(image, rng):
    top = (image.shape[0] - size) // 2
    left = (image.shape[1] - size) // 2
    return image[top:top + size, left:left + size]

  return op


def random_crop(size: int, pad: int = 0):
  """A random `size` x `size` crop, after zero-padding each side by `pad`."""
  def op(image, rng):
    if pad:
      image = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    top = rng.integers(0, image.shape[0] - size + 1)
    left = rng.integers(0, image.shape[1] - size + 1)
    return image[top:top + size, left:left + size]

  return op


def inception_crop(size: int, min_area: float = 0.08):
  """Random crop of 8%-100% of the area, aspect 3/4-4/3, resized to `size`."""
  def op(image, rng):
    height, width = image.shape[:2]
    for _ in range(10):
      area = height * width * rng.uniform(min_area, 1.0)
      aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
      h = int(round(np.sqrt(area / aspect)))
      w = int(round(np.sqrt(area * aspect)))
      if 0 < h <= height and 0 < w <= width:
        top = rng.integers(0, height - h + 1)
        left = rng.integers(0, width - w + 1)
        image = image[top:top + h, left:left + w]
        break
    return resize(size)(image, rng)

  return op


def random_rotate(max_degrees: float):
  """Rotates by a uniform angle in [-max_degrees, max_degrees] (bilinear)."""
  def op(image, rng):
    angle = rng.uniform(-max_degrees, max_degrees)
    return np.stack([np.asarray(Image.fromarray(image[..., c]).rotate(
        angle, Image.BILINEAR), np.float32) for c in range(image.shape[-1])],
                    -1)

  return op


def flip_lr(p: float = 0.5):
  def op(image, rng):
    return image[:, ::-1] if rng.uniform() < p else image

  return op


def value_range(low: float, high: float):
  """Maps [0, 255] linearly to [low, high]."""
  def op(image, rng):
    return low + image * ((high - low) / 255.0)

  return op


def normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
  """(x / 255 - mean) / std per channel (ImageNet statistics by default)."""
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)

  def op(image, rng):
    return (image / 255.0 - mean) / std

  return op


def value_bounds(spec: str, size: int, channels: int) -> tuple:
  """(low, high): what preprocessing `spec` makes of black (0) and white
  (255) pixels, per channel; maps pixels between preprocessings."""
  pp, rng = parse(spec), np.random.default_rng(0)
  return tuple(pp(np.full((size, size, channels), value, np.float32),
                  rng).mean((0, 1)) for value in (0.0, 255.0))


def rescaled(source: tuple, target: tuple):
  """Pixels in one (low, high) range -> another's (`value_bounds`)."""
  (low, high), (to_low, to_high) = source, target
  return lambda x: to_low + (x - low) * (to_high - to_low) / (high - low)


def decoded(data: bytes, channels: int) -> np.ndarray:
  """Encoded image bytes (PNG, JPEG, ...) -> (H, W, channels) float32
  0..255; ValueError naming what is wrong."""
  try:
    image = Image.open(io.BytesIO(data))
    image = image.convert("L" if channels == 1 else "RGB")
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f"Not a readable image: {e}") from None
  return np.asarray(image, np.float32).reshape(image.height, image.width,
                                               channels)


def parse(spec: str):
  """The composed op of a "name(args)|name|..." string."""
  ops = []
  for part in filter(None, (p.strip() for p in spec.split("|"))):
    call = ast.parse(part if "(" in part else part + "()", mode="eval").body
    name = getattr(call.func, "id", None)
    fn = globals().get(name) if name not in ("parse", "np", "ast") else None
    if not isinstance(call, ast.Call) or not callable(fn):
      known = sorted(n for n, f in globals().items() if callable(f) and
                     getattr(f, "__module__", None) == __name__ and
                     n != "parse")
      raise ConfigError(f"Unknown preprocessing op {part!r}; have {known}.")
    ops.append(fn(*[ast.literal_eval(a) for a in call.args],
                  **{k.arg: ast.literal_eval(k.value) for k in call.keywords}))

  def composed(image, rng):
    image = np.asarray(image, np.float32)
    for op in ops:
      image = op(image, rng)
    return image

  return composed
