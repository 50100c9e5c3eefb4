"""Encoder tokenizers (BERT's WordPiece, RoBERTa's byte-level BPE, ALBERT's
SentencePiece Unigram) through the `tokenizers` package: any tokenizer.json
with start, end and padding tokens (SPECIALS, by role: a BERT, RoBERTa,
ALBERT or CLIP checkpoint's) is used the same way.

  tok = WordPiece.from_file("vocab.txt")          # or a tokenizer.json
  ids = tok.encode_batch(["a sentence", ...], max_len=64)  # (B, 64) int32
  tok = WordPiece.train(open("corpus.txt"), vocab_size=8000)  # a new vocabulary
  tok = WordPiece.train(texts, 8000, kind="unigram")  # ALBERT's kind ("bpe":
                                                      # RoBERTa's)
"""
import os

import numpy as np
import tokenizers
from tokenizers import decoders, normalizers, pre_tokenizers, processors
from tokenizers.implementations import BertWordPieceTokenizer

from bigmodel_jax.dataio import common
from bigmodel_jax.errors import ConfigError


# Special tokens by role, as vocabularies name them: BERT's, RoBERTa's,
# ALBERT's (<pad>, [CLS], [SEP]) and CLIP's (which pads with its end token).
SPECIALS = {"pad": ("[PAD]", "<pad>", "<|endoftext|>"),
            "start": ("[CLS]", "<s>", "<|startoftext|>"),
            "end": ("[SEP]", "</s>", "<|endoftext|>"),
            "mask": ("[MASK]", "<mask>"), "unknown": ("[UNK]", "<unk>")}
# tokenizer_config.json's name of each role.
HF_ROLES = {"pad": "pad_token", "start": "cls_token", "end": "sep_token",
            "mask": "mask_token", "unknown": "unk_token"}
# What `WordPiece.train` learns, by `kind`: its special tokens in id order
# (as the checkpoints of the family that uses it number them).
KINDS = {"wordpiece": ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
         "bpe": ("<s>", "<pad>", "</s>", "<unk>", "<mask>"),  # RoBERTa.
         "unigram": ("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]")}  # ALBERT.


def _find(tokenizer: tokenizers.Tokenizer, role: str) -> tuple | None:
  """(token, id) of the vocabulary's token for a role, or None."""
  for token in SPECIALS[role]:
    if tokenizer.token_to_id(token) is not None:
      return token, tokenizer.token_to_id(token)
  return None


def _special(tokenizer: tokenizers.Tokenizer, role: str) -> tuple[str, int]:
  found = _find(tokenizer, role)
  if found is None:
    raise ConfigError(f"The vocabulary has no {role} token (one of "
                      f"{list(SPECIALS[role])}).")
  return found


class WordPiece:
  """[CLS] text [SEP], truncated and padded to a fixed length (or a
  vocabulary's own start, end and padding tokens: SPECIALS)."""

  def __init__(self, tokenizer: tokenizers.Tokenizer):
    tokenizer.no_padding()
    tokenizer.no_truncation()
    self.tokenizer = tokenizer
    _, self.pad_id = _special(tokenizer, "pad")
    end, self.sep_id = _special(tokenizer, "end")
    start, cls_id = _special(tokenizer, "start")
    if tokenizer.post_processor is None:  # A newly trained vocabulary.
      tokenizer.post_processor = tokenizers.processors.BertProcessing(
          (end, self.sep_id), (start, cls_id))

  @classmethod
  def from_file(cls, path: str, lowercase: bool = True) -> "WordPiece":
    """From a BERT vocab.txt (one token per line) or a tokenizer.json."""
    if path.endswith(".json"):
      return cls(tokenizers.Tokenizer.from_file(path))
    return cls(BertWordPieceTokenizer(path, lowercase=lowercase)._tokenizer)

  @classmethod
  def train(cls, texts, vocab_size: int, lowercase: bool = True,
            min_frequency: int = 2, kind: str = "wordpiece") -> "WordPiece":
    """A new vocabulary learned from an iterable of texts (a local corpus):
    BERT's WordPiece, RoBERTa's byte-level BPE ("bpe": cased, every text
    encodes) or ALBERT's SentencePiece Unigram ("unigram": "▁" marks word
    starts), each with its family's special tokens (KINDS)."""
    if kind not in KINDS:
      raise ConfigError(f"Unknown tokenizer kind {kind!r}; use one of "
                        f"{list(KINDS)}.")
    if kind == "wordpiece":
      tokenizer = BertWordPieceTokenizer(lowercase=lowercase)
      tokenizer.train_from_iterator(texts, vocab_size=vocab_size,
                                    min_frequency=min_frequency,
                                    show_progress=False)
      return cls(tokenizer._tokenizer)
    specials = list(KINDS[kind])
    if kind == "bpe":
      tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
      tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
      tokenizer.decoder = decoders.ByteLevel()
      trainer = tokenizers.trainers.BpeTrainer(
          vocab_size=vocab_size, min_frequency=min_frequency,
          special_tokens=specials, show_progress=False,
          initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
      processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    else:
      tokenizer = tokenizers.Tokenizer(tokenizers.models.Unigram())
      tokenizer.normalizer = normalizers.Sequence(
          [normalizers.Replace("``", '"'), normalizers.Replace("''", '"'),
           normalizers.NFKD(), normalizers.StripAccents()] +
          [normalizers.Lowercase()] * lowercase)
      tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
      tokenizer.decoder = decoders.Metaspace()
      trainer = tokenizers.trainers.UnigramTrainer(
          vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>",
          show_progress=False)
      processor = processors.TemplateProcessing(
          single="[CLS]:0 $A:0 [SEP]:0",
          pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
          special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processor
    return cls(tokenizer)

  def special_id(self, role: str) -> int:
    """The id of a role's token (SPECIALS); ConfigError if there is none."""
    return _special(self.tokenizer, role)[1]

  def hf_special_tokens(self) -> dict:
    """tokenizer_config.json's special tokens: those the vocabulary has."""
    found = {key: _find(self.tokenizer, role) for role, key in
             HF_ROLES.items()}
    return {key: pair[0] for key, pair in found.items() if pair}

  @property
  def eos_id(self) -> int:
    """[SEP], which ends every encoded text (generation stops at it)."""
    return self.sep_id

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size()

  def encode(self, text: str) -> np.ndarray:
    """A prompt's ids: [CLS] and the text's tokens, open (no [SEP]): what a
    decoder trained on these texts continues."""
    return np.asarray(self.tokenizer.encode(text).ids[:-1], np.int32)

  def encode_batch(self, texts: list[str], max_len: int) -> np.ndarray:
    ids = np.full((len(texts), max_len), self.pad_id, np.int32)
    for row, encoding in enumerate(self.tokenizer.encode_batch(texts)):
      tokens = encoding.ids
      if len(tokens) > max_len:  # Keep the final [SEP].
        tokens = tokens[:max_len - 1] + [self.sep_id]
      ids[row, :len(tokens)] = tokens
    return ids

  def decode(self, ids) -> str:
    return self.tokenizer.decode([int(i) for i in ids if i != self.pad_id])

  def save(self, path: str) -> None:
    self.tokenizer.save(path)

  def to_hf(self) -> tokenizers.Tokenizer:
    """The Hugging Face tokenizer (for exported models)."""
    return self.tokenizer


def for_input(config, train_texts, process_count: int) -> WordPiece:
  """`input.vocab_file` if set, else a vocabulary of `input.vocab_size`
  and of the kind `input.tokenizer` (KINDS; default WordPiece) trained on
  the training texts (one process only: training is not
  deterministic across processes)."""
  if config.get("vocab_file"):
    return WordPiece.from_file(config.vocab_file)
  common.train_tokenizer_once(process_count, "vocab_file")
  return WordPiece.train(train_texts, config.vocab_size,
                         kind=config.get("tokenizer", "wordpiece"))


def load(workdir: str) -> WordPiece:
  """The vocabulary a run saved in its workdir."""
  return WordPiece.from_file(os.path.join(workdir, "tokenizer.json"))
