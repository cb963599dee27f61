"""Read an AUTOMATIC1111-style prompt: emphasis weights, BREAK, and ``<lora:…>`` tags.

Clarity runs on A1111, so its users (and its default prompts) write A1111 syntax. This module
turns such a prompt into what the text encoder needs: text fragments with an emphasis weight
each, chunk breaks, and the LoRA networks the prompt asks for. It is pure Python (no torch), so
the GUI can use it to show warnings and LoRA names without loading the engine.

The semantics follow A1111's documentation:

* ``(x)`` multiplies the weight of ``x`` by 1.1, ``[x]`` divides it by 1.1, ``(x:1.5)`` multiplies
  it by 1.5; nesting multiplies. ``\\(``, ``\\)``, ``\\[``, ``\\]`` and ``\\\\`` are literal
  characters. A closing bracket with no opening one is literal text; an opening bracket that is
  never closed applies to the rest of the prompt.
* ``BREAK`` (upper case, a whole word) ends the current 75-token chunk. It appears in
  :attr:`ParsedPrompt.fragments` as the marker :data:`BREAK` = ``("BREAK", -1.0)``; test with
  :func:`is_break`. Unlike A1111, brackets around a ``BREAK`` do not change the marker (A1111
  then encodes the word "BREAK" with a negative weight, which is a bug, not a feature).
* ``<lora:NAME>``, ``<lora:NAME:w>``, ``<lora:NAME:te:unet>`` (and ``te=``/``unet=`` named
  forms; ``lyco`` is an alias) are removed from the text and returned as :class:`LoraRequest`.
  Every other ``<kind:…>`` tag (``hypernet``…) is removed with a warning, as A1111 does.
* Prompt editing (``[a:b:0.5]``, ``[a|b]``) and ``AND`` are not supported: the text is kept as
  it is and a warning says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from pipeline.errors import FieldError, ParamsError

__all__ = [
    "BREAK",
    "LoraRequest",
    "ParsedPrompt",
    "is_break",
    "parse_prompt",
]

BREAK: Final[tuple[str, float]] = ("BREAK", -1.0)

ROUND_FACTOR = 1.1
SQUARE_FACTOR = 1 / 1.1

# A1111 extra-network tag: a word, a colon, then anything up to the next ">".
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_LORA_KINDS = frozenset({"lora", "lyco"})
# An explicit weight closing a round bracket, e.g. ":1.5)" or ": -0.3 )".
_WEIGHT_CLOSE = re.compile(r":\s*([+-]?[\d.]+)\s*\)")
_BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*")
_ESCAPABLE = frozenset("()[]\\")
# Square brackets holding a ":" or "|" are A1111 prompt editing / alternation.
_PROMPT_EDITING = re.compile(r"(?<!\\)\[[^\[\]]*[:|][^\[\]]*(?<!\\)\]")
_AND_WORD = re.compile(r"\bAND\b")


@dataclass(frozen=True)
class LoraRequest:
    """One ``<lora:…>`` tag: which network, and its strength on the text encoder and the UNet."""

    name: str
    te_weight: float = 1.0
    unet_weight: float = 1.0


@dataclass
class ParsedPrompt:
    """A prompt split into weighted text fragments, with the LoRA tags taken out.

    ``fragments`` holds ``(text, weight)`` pairs in prompt order; neighbours with equal weights
    are merged, and :data:`BREAK` markers sit between them. An empty prompt gives
    ``[("", 1.0)]``. ``warnings`` are plain-language notes on syntax that was ignored.
    """

    fragments: list[tuple[str, float]]
    loras: list[LoraRequest] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The prompt text without weights, tags and BREAKs (for display and logs)."""
        return "".join(t for t, w in self.fragments if (t, w) != BREAK)


def is_break(fragment: tuple[str, float]) -> bool:
    """Whether a fragment is the BREAK marker rather than text."""
    return fragment[0] == BREAK[0] and fragment[1] == BREAK[1]


def parse_prompt(text: str, *, field: str = "prompt") -> ParsedPrompt:
    """Parse A1111 prompt syntax; ``field`` names the parameter in error messages.

    Raises :class:`~pipeline.errors.ParamsError` for a ``<lora:…>`` tag whose weight is not a
    number or whose name is empty.
    """
    if not isinstance(text, str):
        raise ParamsError(FieldError(field, text, "a prompt must be text"))
    warnings: list[str] = []
    stripped, loras = _take_extra_networks(text, field, warnings)
    if _PROMPT_EDITING.search(stripped):
        warnings.append(
            f"{field}: prompt editing and alternation ([a:b:when], [a|b]) are not supported; "
            "that text is read as plain words with a [ ] weight"
        )
    if _AND_WORD.search(stripped):
        warnings.append(
            f"{field}: AND (composable prompts) is not supported; the word is kept as plain text"
        )
    fragments = _Emphasis(field, warnings).parse(stripped)
    return ParsedPrompt(fragments=fragments, loras=loras, warnings=warnings)


# --- extra networks -------------------------------------------------------------------------


def _take_extra_networks(
    text: str, field: str, warnings: list[str]
) -> tuple[str, list[LoraRequest]]:
    loras: list[LoraRequest] = []

    def replace(match: re.Match[str]) -> str:
        kind, args = match.group(1), match.group(2)
        if kind.lower() in _LORA_KINDS:
            loras.append(_lora_request(match.group(0), args, field, warnings))
        elif kind.lower() == "hypernet":
            warnings.append(f"{field}: hypernetworks are not supported; {match.group(0)} ignored")
        else:
            warnings.append(f"{field}: unknown extra network <{kind}:…>; {match.group(0)} ignored")
        return ""

    return _EXTRA_NETWORK.sub(replace, text), loras


def _lora_request(tag: str, args: str, field: str, warnings: list[str]) -> LoraRequest:
    """``NAME[:te[:unet[:dyn]]]`` with optional ``te=``/``unet=``/``dyn=`` items (A1111)."""
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in args.split(":"):
        key, eq, value = item.partition("=")
        if eq:
            named[key.strip().lower()] = value.strip()
        else:
            positional.append(item.strip())
    if not positional or not positional[0]:
        raise ParamsError(FieldError(field, tag, "a LoRA tag needs a name: <lora:NAME:weight>"))
    name = positional[0]
    te = _number(positional[1], tag, field) if len(positional) > 1 else 1.0
    te = _number(named["te"], tag, field) if "te" in named else te
    unet = _number(positional[2], tag, field) if len(positional) > 2 else te
    unet = _number(named["unet"], tag, field) if "unet" in named else unet
    if len(positional) > 3 or "dyn" in named:
        warnings.append(f"{field}: the dynamic-dim setting of {tag} is not supported; ignored")
    return LoraRequest(name=name, te_weight=te, unet_weight=unet)


def _number(value: str, tag: str, field: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ParamsError(
            FieldError(field, tag, f"the LoRA weight {value!r} is not a number, e.g. <lora:x:0.8>")
        ) from None


# --- emphasis -------------------------------------------------------------------------------


class _Emphasis:
    """A single left-to-right scan that keeps the stack of open brackets.

    Text is collected into ``pending`` and flushed into ``parts`` whenever a bracket opens or
    closes, so each part has one weight; closing a bracket multiplies every part since its
    opening. Round and square brackets are tracked separately, as in A1111, so ``([)]`` overlap.
    """

    def __init__(self, field: str, warnings: list[str]) -> None:
        self.field = field
        self.warnings = warnings
        self.parts: list[list] = []  # [text, weight, is_break]
        self.pending: list[str] = []
        self.rounds: list[int] = []
        self.squares: list[int] = []

    def parse(self, text: str) -> list[tuple[str, float]]:
        i = 0
        while i < len(text):
            i = self._step(text, i)
        self._flush()
        for start in self.rounds:
            self._multiply(start, ROUND_FACTOR)
        for start in self.squares:
            self._multiply(start, SQUARE_FACTOR)
        return _merged(self.parts)

    def _step(self, text: str, i: int) -> int:
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPABLE:
            self.pending.append(text[i + 1])
            return i + 2
        if char in "([":
            self._flush()
            (self.rounds if char == "(" else self.squares).append(len(self.parts))
        elif char == ")" and self.rounds:
            self._flush()
            self._multiply(self.rounds.pop(), ROUND_FACTOR)
        elif char == "]" and self.squares:
            self._flush()
            self._multiply(self.squares.pop(), SQUARE_FACTOR)
        elif char == ":":
            return self._colon(text, i)
        else:
            self.pending.append(char)
        return i + 1

    def _colon(self, text: str, i: int) -> int:
        match = _WEIGHT_CLOSE.match(text, i)
        if match is None:
            self.pending.append(":")
            return i + 1
        if not self.rounds:
            self.pending.append(match.group(0))  # no "(" to close: A1111 keeps it as text
            return match.end()
        try:
            weight = float(match.group(1))
        except ValueError:
            self.warnings.append(
                f"{self.field}: {match.group(0)!r} is not a valid weight; read as plain text"
            )
            self.pending.append(match.group(0))
            return match.end()
        self._flush()
        self._multiply(self.rounds.pop(), weight)
        return match.end()

    def _flush(self) -> None:
        if not self.pending:
            return
        pieces = _BREAK_WORD.split("".join(self.pending))
        self.pending.clear()
        for n, piece in enumerate(pieces):
            if n:
                self.parts.append([BREAK[0], BREAK[1], True])
            if piece:
                self.parts.append([piece, 1.0, False])

    def _multiply(self, start: int, factor: float) -> None:
        for part in self.parts[start:]:
            if not part[2]:
                part[1] *= factor


def _merged(parts: list[list]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for text, weight, brk in parts:
        if brk:
            out.append(BREAK)
        elif out and not is_break(out[-1]) and out[-1][1] == weight:
            out[-1] = (out[-1][0] + text, weight)
        else:
            out.append((text, weight))
    return out or [("", 1.0)]
