"""Personal data scrubbed from kept documents: e-mail addresses, phone
numbers, IPv4 addresses and card-like numbers (13-19 digits passing the
Luhn check, so order numbers and ISBNs are left alone).

  text, counts = scrub(text)   # "write to <EMAIL>", {"email": 1, ...}
"""
import re

EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")
IPV4 = re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
                  r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b")
CARD = re.compile(r"\b\d(?:[ -]?\d){12,18}\b")
# +CC, (area) or area, then 3 and 4 digits; separators space, dot or dash.
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)|\d{2,4})"
                   r"[ .-]?\d{3}[ .-]?\d{3,4}(?!\w)")
KINDS = ("email", "card", "ip", "phone")


def luhn(digits: str) -> bool:
  total = 0
  for i, d in enumerate(int(c) for c in reversed(digits)):
    total += d if i % 2 == 0 else (2 * d - 9 if d > 4 else 2 * d)
  return total % 10 == 0


def _card(match) -> str:
  digits = re.sub(r"\D", "", match.group())
  return "<CARD>" if luhn(digits) else match.group()


def scrub(text: str) -> tuple[str, dict]:
  """`text` with personal data replaced by <EMAIL>, <CARD>, <IP>, <PHONE>,
  and how many of each were replaced."""
  counts = {}
  for kind, pattern, replace in (("email", EMAIL, "<EMAIL>"),
                                 ("card", CARD, _card),
                                 ("ip", IPV4, "<IP>"),
                                 ("phone", PHONE, "<PHONE>")):
    before = text.count(f"<{kind.upper()}>")
    text = pattern.sub(replace, text)
    if text.count(f"<{kind.upper()}>") > before:
      counts[kind] = text.count(f"<{kind.upper()}>") - before
  return text, counts
