"""Request bodies of the API, in OpenAI's schema (unknown fields ignored).

Every number is bounded by what the engine can represent (int32 counts,
uint32 seeds) and stop strings by OpenAI's limits (at most 4), so a value
the engine cannot take is a 400 here, never an error inside a batch.
"""
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

INT32 = 2**31 - 1
MAX_STOPS, MAX_STOP_CHARS = 4, 256
Stop = Annotated[str, Field(max_length=MAX_STOP_CHARS)]


class _Body(BaseModel):
  model_config = ConfigDict(extra="ignore")
  model: str = Field(max_length=200)


class StreamOptions(BaseModel):
  include_usage: bool = False


class _Sampling(_Body):
  max_tokens: int | None = Field(None, ge=1, le=INT32)
  temperature: float = Field(1.0, ge=0, le=2)
  top_p: float = Field(1.0, gt=0, le=1)
  top_k: int = Field(0, ge=0, le=INT32)  # Not OpenAI's; 0: no limit.
  n: int = Field(1, ge=1, le=INT32)
  stream: bool = False
  stream_options: StreamOptions | None = None
  stop: Stop | Annotated[list[Stop], Field(max_length=MAX_STOPS)] | None = None
  seed: int | None = Field(None, ge=0, lt=2**32)

  def stops(self) -> list[str]:
    stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
    return [s for s in stops if s]


class Completion(_Sampling):
  prompt: str | list[str]


class TextPart(BaseModel):
  type: Literal["text"]
  text: str


class ImageUrl(BaseModel):
  url: str  # data:image/png;base64,... (no fetching of remote URLs).
  detail: str | None = None


class ImagePart(BaseModel):
  type: Literal["image_url"]
  image_url: ImageUrl


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(BaseModel):
  """OpenAI's message: text, or content parts (text and images)."""
  role: Literal["system", "user", "assistant"]
  content: str | list[Part]

  def text(self) -> str:
    if isinstance(self.content, str):
      return self.content
    return "\n".join(p.text for p in self.content if p.type == "text")

  def images(self) -> list[str]:
    if isinstance(self.content, str):
      return []
    return [p.image_url.url for p in self.content if p.type == "image_url"]


class ChatCompletion(_Sampling):
  messages: list[Message] = Field(min_length=1)
  max_completion_tokens: int | None = Field(None, ge=1, le=INT32)


class Embeddings(_Body):
  """Texts (`input`), or base64 `images` for a model of two towers."""
  input: str | list[str] | None = None
  images: list[str] | None = None
  encoding_format: Literal["float", "base64"] = "float"


class Classify(_Body):
  """Texts (`input`) for text classifiers, base64 `images` for image ones."""
  input: str | list[str] | None = None
  images: list[str] | None = None


class ImageGeneration(_Body):
  """OpenAI's image generation: `n` base64 PNGs; the prompt names the class
  of a class-conditional model."""
  prompt: str = Field("", max_length=4000)
  n: int = Field(1, ge=1, le=10)
  size: str | None = Field(None, pattern=r"^\d{1,4}x\d{1,4}$")
  response_format: Literal["b64_json"] = "b64_json"  # No hosted URLs.
  seed: int | None = Field(None, ge=0, lt=2**32)  # Not OpenAI's.
