"""Read an AUTOMATIC1111 (v1.7) prompt the way A1111 reads it, corner cases included.

Clarity runs on A1111, so its users (and its default prompts) write A1111 syntax. This module is
pure Python (no torch), so the window can check a prompt on every keystroke. A1111 reads a
prompt in four stages, and so does Clarifier:

1. **Extra networks** (:func:`take_extra_networks`). In the prompt (never the negative prompt:
   A1111 v1.7 looks for them there only) every ``<kind:args>`` tag is cut out of the text before
   anything else. ``<lora:NAME>``, ``<lora:NAME:w>``, ``<lora:NAME:te:unet>`` and the
   ``te=``/``unet=`` forms (``lyco`` is an alias) become :class:`LoraRequest`; other kinds are
   dropped with a warning. In the negative prompt such a tag is plain words.
2. **Composition** (:func:`split_and`, the prompt only). The upper-case word ``AND`` splits the
   prompt into parts; a part ending in ``:number`` takes that weight, and a part's trailing
   whitespace is dropped.
3. **Editing and alternation** (:func:`prompt_schedule`). ``[from:to:when]`` shows ``from`` up
   to step ``when`` and ``to`` after it; ``[to:when]`` and ``[from::when]`` add or remove text.
   A number with a decimal point is a fraction of the steps (``0.5``, ``1.0``), one without is
   a step (``5``). ``[a|b|c]`` cycles one option per step; an option may be empty. Edits nest.
   Brackets that close nothing are text; a prompt that cannot be read as a whole (a ``|`` outside
   ``[a|b]``, a backslash that escapes nothing at the end) is used as it is, with no editing.
4. **Emphasis** (:func:`parse_attention`, on each text of the schedule). ``(x)`` multiplies
   ``x``'s weight by 1.1, ``[x]`` divides it by 1.1, ``(x:1.5)`` multiplies it by 1.5; nesting
   multiplies, in A1111's order (so the floats match). ``\\(``, ``\\)``, ``\\[``, ``\\]`` and
   ``\\\\`` are literal characters; any other backslash is dropped. A closer with no opener is
   text; an opener never closed weighs everything after it. ``(a:1.2.3)`` is refused (A1111
   fails on it). ``BREAK`` (upper case, a whole word) becomes the marker :data:`BREAK`, which
   ends a 75-token chunk; inside brackets its weight is multiplied like any text's, so it is
   then the word "BREAK" with a negative weight (A1111 does exactly that; a warning says so).

:func:`parse_prompt` runs all four for the window and the engine's checks: LoRA requests,
warnings and errors, naming the field. Where A1111 itself is not consistent (an edit right next
to a stray bracket or colon: A1111's parser then picks a reading by Python's hash seed, which
changes every time it starts), Clarifier keeps the edit and warns.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from pipeline.errors import FieldError, ParamsError

__all__ = [
    "BREAK",
    "LoraRequest",
    "ParsedPrompt",
    "is_break",
    "parse_attention",
    "parse_prompt",
    "prompt_schedule",
    "split_and",
    "take_extra_networks",
]

BREAK: Final[tuple[str, float]] = ("BREAK", -1.0)

ROUND_FACTOR = 1.1
SQUARE_FACTOR = 1 / 1.1

_CHECK_STEPS = 100  # schedule length parse_prompt checks when it is not told the real one
_MAX_DEPTH = 150  # deeper nesting is refused; A1111's parser runs out of stack not far beyond

# A1111 extra-network tag: a word, a colon, then anything up to the next ">".
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_LORA_KINDS = frozenset({"lora", "lyco"})
_BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*")
_AND_WORD = re.compile(r"\bAND\b")
# lark's SIGNED_NUMBER (A1111's step numbers): sign, digits with an optional point (or a point
# and digits), an optional exponent; ASCII digits only.
_STEP_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_ESCAPABLE = frozenset("()[]\\")
_EMPHASIS_SPECIAL = frozenset("\\()[]:")
_LOOSE = frozenset("[]():")  # characters the editing grammar keeps as text outside any rule
_NOT_PLAIN = frozenset("\\[]():|")


@dataclass(frozen=True)
class LoraRequest:
    """One ``<lora:…>`` tag: which network, and its strength on the text encoder and the UNet."""

    name: str
    te_weight: float = 1.0
    unet_weight: float = 1.0


@dataclass
class ParsedPrompt:
    """What :func:`parse_prompt` found in one prompt field.

    ``parts`` are the composable parts with their weights (one part, weight 1, for the negative
    prompt or a prompt without ``AND``). ``fragments`` are the weighted ``(text, weight)`` pairs
    of the first part's first scheduled text (the whole prompt when it has no editing or
    ``AND``), with :data:`BREAK` markers, neighbours of equal weight merged as A1111 merges them;
    an empty prompt gives ``[("", 1.0)]``. ``edited`` says whether any part uses editing or
    alternation. ``warnings`` are plain-language notes, each starting with the field name.
    """

    fragments: list[tuple[str, float]]
    loras: list[LoraRequest] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    parts: list[tuple[str, float]] = field(default_factory=list)
    edited: bool = False

    @property
    def text(self) -> str:
        """The prompt text without weights, tags and BREAKs (for display and logs)."""
        return "".join(t for t, w in self.fragments if not is_break((t, w)))


def is_break(fragment: tuple[str, float]) -> bool:
    """Whether a fragment is the BREAK marker (A1111: the text "BREAK" with weight exactly -1)."""
    return fragment[0] == BREAK[0] and fragment[1] == BREAK[1]


def parse_prompt(
    text: str, *, field: str = "prompt", negative: bool | None = None, steps: int | None = None
) -> ParsedPrompt:
    """Read a prompt field as A1111 v1.7 does and collect what a person should know about it.

    ``field`` names the parameter in messages; ``negative`` (by default: whether ``field`` is
    ``"negative_prompt"``) reads it as a negative prompt: no extra networks, no ``AND``.
    ``steps`` is the schedule length the edits are checked against (A1111's total steps; when
    not given, a long one, so that every text a run may use is checked).

    Raises :class:`~pipeline.errors.ParamsError` for what A1111 cannot run: a ``<lora:…>`` tag
    with no name or a weight that is not a number, an emphasis weight such as ``(a:1.2.3)``, a
    step number too large for a float, brackets nested too deep.
    """
    if not isinstance(text, str):
        raise ParamsError(FieldError(field, text, "a prompt must be text"))
    is_negative = field == "negative_prompt" if negative is None else negative
    warnings: list[str] = []
    if is_negative:
        loras: list[LoraRequest] = []
        parts = [(text, 1.0)]
        _note_negative_only_syntax(text, field, warnings)
    else:
        stripped, loras, tag_warnings = take_extra_networks(text, field=field)
        warnings.extend(tag_warnings)
        parts = split_and(stripped)
        if len(parts) == 1 and parts[0][0] != stripped.rstrip():
            tail = stripped.rstrip()[len(parts[0][0]) :].strip()
            warnings.append(
                f"{field}: the '{tail}' at the end is read as the weight of the whole prompt "
                f"(A1111's AND syntax: guidance × {parts[0][1]:g}), not as words; put a word or "
                "a comma after it to keep it as text"
            )
    check_steps = steps if steps is not None else _CHECK_STEPS
    fragments: list[tuple[str, float]] | None = None
    edited = False
    lost_breaks = 0
    for part, _weight in parts:
        reading = _read_edits(part, field)
        edited = edited or reading.edited
        warnings.extend(reading.warnings(field, check_steps))
        for scheduled in dict.fromkeys(t for _, t in reading.schedule(check_steps, field)):
            part_fragments, lost = _attention(scheduled, field)
            lost_breaks += lost
            if fragments is None:
                fragments = part_fragments
    if lost_breaks:
        warnings.append(
            f"{field}: BREAK inside ( ) or [ ] does not start a new chunk: A1111 multiplies its "
            "marker by the brackets' weight and then reads it as the word BREAK; put BREAK "
            "outside brackets"
        )
    return ParsedPrompt(
        fragments=fragments or [("", 1.0)],
        loras=loras,
        warnings=_unique(warnings),
        parts=parts,
        edited=edited,
    )


def _note_negative_only_syntax(text: str, field: str, warnings: list[str]) -> None:
    tags = [m.group(0) for m in _EXTRA_NETWORK.finditer(text)]
    if tags:
        warnings.append(
            f"{field}: {tags[0]} is read as plain words here: A1111 applies LoRAs and other "
            "extra networks from the prompt only"
        )
    if _AND_WORD.search(text):
        warnings.append(
            f"{field}: AND is read as a plain word here: A1111 composes the prompt only"
        )


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


# --- extra networks -------------------------------------------------------------------------


def take_extra_networks(
    text: str, *, field: str = "prompt"
) -> tuple[str, list[LoraRequest], list[str]]:
    """``(text without tags, LoRA requests, warnings)``: A1111's extra-network pass.

    Every ``<word:args>`` tag is removed in one pass, wherever it is (also inside brackets or
    edits). Only the prompt gets this pass; the negative prompt keeps its tags as text.
    """
    loras: list[LoraRequest] = []
    warnings: list[str] = []

    def replace(match: re.Match[str]) -> str:
        kind, args = match.group(1), match.group(2)
        if kind.lower() in _LORA_KINDS:
            loras.append(_lora_request(match.group(0), args, field, warnings))
        elif kind.lower() == "hypernet":
            warnings.append(f"{field}: hypernetworks are not supported; {match.group(0)} ignored")
        else:
            warnings.append(f"{field}: unknown extra network <{kind}:…>; {match.group(0)} ignored")
        return ""

    return _EXTRA_NETWORK.sub(replace, text), loras, warnings


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


# --- composition (AND) ----------------------------------------------------------------------


def split_and(prompt: str) -> list[tuple[str, float]]:
    """The ``AND`` parts of a prompt with their weights, in order (duplicates kept).

    A part is split at every upper-case whole word ``AND`` (also inside brackets). A part that
    ends in ``:`` and a number (``1``, ``1.``, ``.5``, ``-0.5``; spaces allowed around the colon)
    takes that weight and loses it from its text; otherwise its weight is 1. Trailing whitespace
    is dropped from every part, leading whitespace kept.
    """
    return [_weighted_part(part) for part in _AND_WORD.split(prompt)]


def _weighted_part(part: str) -> tuple[str, float]:
    text = part.rstrip()
    colon = text.rfind(":")
    if colon >= 0:
        number = text[colon + 1 :].lstrip()
        if _is_part_weight(number):
            return text[:colon].rstrip(), float(number)
    return text, 1.0


def _is_part_weight(number: str) -> bool:
    body = number[1:] if number[:1] in ("+", "-") else number
    digits = body.replace(".", "", 1)
    return bool(digits) and digits.isdecimal()


# --- emphasis -------------------------------------------------------------------------------


def parse_attention(text: str, *, field: str = "prompt") -> list[tuple[str, float]]:
    """A1111's emphasis reading of one text: ``(text, weight)`` pairs with :data:`BREAK` markers.

    This is what the text encoder tokenises, one pair at a time. Raises
    :class:`~pipeline.errors.ParamsError` naming ``field`` for a weight A1111 cannot read.
    """
    return _attention(text, field)[0]


def _attention(text: str, field: str) -> tuple[list[tuple[str, float]], int]:
    """The pairs, and how many BREAK markers brackets turned into the plain word."""
    parts: list[list] = []  # [text, weight, is_marker]
    rounds: list[int] = []
    squares: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for part in parts[start:]:
            part[1] *= factor

    def add_text(chunk: str) -> None:
        for n, piece in enumerate(_BREAK_WORD.split(chunk)):
            if n:
                parts.append([BREAK[0], BREAK[1], True])
            parts.append([piece, 1.0, False])

    i, end = 0, len(text)
    while i < end:
        char = text[i]
        if char == "\\":
            # An escape is its character at weight 1; any other backslash leaves nothing.
            escaped = i + 1 < end and text[i + 1] in _ESCAPABLE
            parts.append([text[i + 1] if escaped else "", 1.0, False])
            i += 2 if escaped else 1
        elif char == "(":
            rounds.append(len(parts))
            i += 1
        elif char == "[":
            squares.append(len(parts))
            i += 1
        elif char == ":":
            close = _weight_close(text, i)
            if close is None:
                add_text(":")
                i += 1
            elif rounds:
                multiply(rounds.pop(), _weight_value(text, i, close, field))
                i = close[0]
            else:
                add_text(text[i : close[0]])  # no "(" to close: the whole ":w)" is text
                i = close[0]
        elif char == ")" and rounds:
            multiply(rounds.pop(), ROUND_FACTOR)
            i += 1
        elif char == "]" and squares:
            multiply(squares.pop(), SQUARE_FACTOR)
            i += 1
        elif char in ")]":
            add_text(char)
            i += 1
        else:
            j = i + 1
            while j < end and text[j] not in _EMPHASIS_SPECIAL:
                j += 1
            add_text(text[i:j])
            i = j
    for start in rounds:
        multiply(start, ROUND_FACTOR)
    for start in squares:
        multiply(start, SQUARE_FACTOR)
    lost = sum(1 for part in parts if part[2] and part[1] != BREAK[1])
    if not parts:
        return [("", 1.0)], lost
    merged: list[list] = [parts[0][:2]]
    for text_part, weight, _marker in parts[1:]:
        if weight == merged[-1][1]:
            merged[-1][0] += text_part
        else:
            merged.append([text_part, weight])
    return [(t, w) for t, w in merged], lost


def _weight_close(text: str, i: int) -> tuple[int, int, int] | None:
    """For ``text[i] == ":"``: ``(end, number start, number end)`` of ``: w )``, or None.

    The number is a run of digits and points after optional spaces and a sign; spaces may
    follow it before the ``)``.
    """
    end = len(text)
    j = _skip_space(text, i + 1)
    k = j + 1 if j < end and text[j] in "+-" else j
    m = k
    while m < end and (text[m] == "." or text[m].isdecimal()):
        m += 1
    if m == k:
        return None
    e = _skip_space(text, m)
    if e < end and text[e] == ")":
        return e + 1, j, m
    return None


def _weight_value(text: str, i: int, close: tuple[int, int, int], field: str) -> float:
    number = text[close[1] : close[2]]
    try:
        return float(number)
    except ValueError:
        raise ParamsError(
            FieldError(
                field,
                text[max(0, i - 20) : close[0]],
                f"the emphasis weight {number!r} is not a number (write e.g. (word:1.2)); "
                "A1111 stops with an error on it too",
            )
        ) from None


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


# --- editing and alternation ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Edit:
    """``[before:after:number]``; ``before`` is empty for ``[after:number]``."""

    before: tuple[_Node, ...]
    after: tuple[_Node, ...]
    number: str


@dataclass(frozen=True, slots=True)
class _Alt:
    """``[a|b|…]``: one option per step, cycling."""

    options: tuple[tuple[_Node, ...], ...]


_Node = str | _Edit | _Alt
_Item = tuple[int, tuple[_Node, ...]]  # (end, nodes) of one grammar item


def prompt_schedule(prompt: str, steps: int, *, field: str = "prompt") -> list[tuple[int, str]]:
    """A1111's schedule for one prompt: ``(end_at_step, text)`` pairs, ascending.

    ``steps`` is A1111's total step count (``total_steps``: the sampling steps, doubled for
    second-order samplers). The texts still hold their emphasis syntax. A text is in force while
    the model-call index is at most its ``end_at_step``; the last one ends at ``steps``. A prompt
    with no editing (or one that cannot be read as a whole) gives ``[(steps, prompt)]``. Raises
    :class:`~pipeline.errors.ParamsError` naming ``field`` for a step number too large for a
    float or brackets nested too deep, and ``ValueError`` for ``steps`` below 1.
    """
    return _read_edits(prompt, field).schedule(steps, field)


class _Reading:
    """One prompt read for editing: its nodes, or why it could not be read."""

    def __init__(self, text: str, parser: _EditParser) -> None:
        self.text = text
        self.parser = parser
        self.nodes, self.failed_at = parser.greedy()

    @property
    def edited(self) -> bool:
        return self.nodes is not None and _has_schedule(self.nodes)

    def schedule(self, steps: int, field: str) -> list[tuple[int, str]]:
        if self.nodes is None:
            return [(_check_steps(steps), self.text)]
        return _schedule_of(self.nodes, steps, field)

    def warnings(self, field: str, steps: int) -> list[str]:
        if self.nodes is None:
            assert self.failed_at is not None
            if "[" not in self.text:
                return []  # nothing in it could have been editing either way
            char = self.text[self.failed_at]
            why = (
                f"the '|' at character {self.failed_at + 1} is outside any [a|b]"
                if char == "|"
                else f"the backslash at character {self.failed_at + 1} escapes nothing"
            )
            return [
                f"{field}: prompt editing and alternation are off in this prompt, as in A1111, "
                f"because {why}; its [ ] are read as weights only"
            ]
        if not _has_edit(self.nodes) or not _has_loose(self.nodes):
            return []
        least = self.parser.least_structure()
        if _schedule_of(least, steps, field) == _schedule_of(self.nodes, steps, field):
            return []
        return [
            f"{field}: A1111 reads an edit next to a stray bracket or colon as editing in some "
            "runs and as plain text in others (its parser decides by Python's hash seed); "
            "Clarifier applies the edit. Remove the stray character or escape it (\\], \\), "
            "\\:) to make both agree"
        ]


def _read_edits(text: str, field: str) -> _Reading:
    try:
        return _Reading(text, _EditParser(text))
    except _TooDeep:
        raise ParamsError(
            FieldError(field, text[:40] + "…", f"brackets are nested more than {_MAX_DEPTH} deep")
        ) from None


def _check_steps(steps: int) -> int:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"a schedule needs a whole number of steps >= 1, not {steps!r}")
    return steps


def _schedule_of(nodes: tuple[_Node, ...], steps: int, field: str) -> list[tuple[int, str]]:
    steps = _check_steps(steps)
    whens: dict[int, int] = {}
    points = {steps}
    for node in _walk(nodes):
        if isinstance(node, _Edit):
            when = _edit_step(node.number, steps, field)
            whens[id(node)] = when
            if when >= 1:
                points.add(when)
        elif isinstance(node, _Alt):
            points.update(range(1, steps + 1))
    return [(point, _text_at(nodes, point, whens)) for point in sorted(points)]


def _edit_step(number: str, steps: int, field: str) -> int:
    """The last step that shows an edit's ``before`` (A1111: fraction if the number has a '.')."""
    value = float(number)
    if "." in number:
        value *= steps
    if math.isinf(value):
        raise ParamsError(
            FieldError(field, number, "the step of a prompt edit is too large a number")
        )
    return min(steps, int(value))


def _text_at(nodes: tuple[_Node, ...], step: int, whens: dict[int, int]) -> str:
    out: list[str] = []

    def emit(seq: tuple[_Node, ...]) -> None:
        for node in seq:
            if isinstance(node, str):
                out.append(node)
            elif isinstance(node, _Edit):
                emit(node.before if step <= whens[id(node)] else node.after)
            else:
                emit(node.options[(step - 1) % len(node.options)])

    emit(nodes)
    return "".join(out)


def _walk(nodes: tuple[_Node, ...]) -> Iterator[_Node]:
    stack = list(reversed(nodes))
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, _Edit):
            stack.extend(reversed(node.before + node.after))
        elif isinstance(node, _Alt):
            for option in reversed(node.options):
                stack.extend(reversed(option))


def _has_schedule(nodes: tuple[_Node, ...]) -> bool:
    return any(not isinstance(node, str) for node in _walk(nodes))


def _has_edit(nodes: tuple[_Node, ...]) -> bool:
    return any(isinstance(node, _Edit) for node in _walk(nodes))


def _has_loose(nodes: tuple[_Node, ...]) -> bool:
    return any(isinstance(node, _Loose) for node in nodes)


class _Loose(str):
    """A top-level bracket or colon that belongs to no construct (kept as text)."""

    __slots__ = ()


class _TooDeep(Exception):
    pass


class _EditParser:
    """A1111's editing grammar, read by recursive descent.

    A *prompt* is a run of items: plain text (anything but ``\\ [ ] ( ) : |``, with backslash
    escapes of any character but a line break), ``(p)``, ``(p:p)``, ``[p]``, ``[p|p…]`` and the
    edits ``[p:p:N]`` / ``[p:N]``. Each item parses the same way wherever it starts, so items are
    memoised by position. Outside every item, ``[ ] ( ) :`` are text. :meth:`greedy` reads left
    to right and takes every item it can (the reading A1111 gives whenever its parser is
    consistent); :meth:`least_structure` resolves the grammar's ambiguities the other way
    A1111's parser may, to find prompts A1111 reads inconsistently.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.end = len(text)
        self._items: dict[int, _Item | None] = {}
        self._depth = 0
        self._plain_end = self._plain_runs()

    def _plain_runs(self) -> list[int]:
        text, end = self.text, self.end
        runs = list(range(end + 1))
        for i in range(end - 1, -1, -1):
            char = text[i]
            if char == "\\":
                if i + 1 < end and text[i + 1] != "\n":
                    runs[i] = runs[i + 2]
            elif char not in _NOT_PLAIN:
                runs[i] = runs[i + 1]
        return runs

    # -- items --

    def item(self, i: int) -> _Item | None:
        if i not in self._items:
            self._items[i] = self._parse_item(i)
        return self._items[i]

    def prompt(self, i: int) -> _Item:
        nodes: list[_Node] = []
        while (found := self.item(i)) is not None:
            i = found[0]
            nodes.extend(found[1])
        return i, tuple(nodes)

    def _char(self, i: int) -> str:
        return self.text[i] if i < self.end else ""

    def _parse_item(self, i: int) -> _Item | None:
        if i >= self.end:
            return None
        if self._plain_end[i] > i:
            return self._plain_end[i], (self.text[i : self._plain_end[i]],)
        char = self.text[i]
        if char not in "([":
            return None
        self._depth += 1
        if self._depth > _MAX_DEPTH:
            raise _TooDeep
        try:
            return self._round(i) if char == "(" else self._square(i)
        finally:
            self._depth -= 1

    def _round(self, i: int) -> _Item | None:
        end1, first = self.prompt(i + 1)
        if self._char(end1) == ")":
            return end1 + 1, ("(", *first, ")")
        if self._char(end1) == ":":
            end2, second = self.prompt(end1 + 1)
            if self._char(end2) == ")":
                return end2 + 1, ("(", *first, ":", *second, ")")
        return None

    def _square(self, i: int) -> _Item | None:
        end1, first = self.prompt(i + 1)
        char = self._char(end1)
        if char == "]":
            return end1 + 1, ("[", *first, "]")
        if char == "|":
            options = [first]
            pos = end1
            while self._char(pos) == "|":
                pos, option = self.prompt(pos + 1)
                options.append(option)
            if self._char(pos) == "]":
                return pos + 1, (_Alt(tuple(options)),)
            return None
        if char == ":":
            tail = self._step_tail(end1 + 1)
            if tail is not None:
                return tail[0], (_Edit((), first, tail[1]),)
            end2, second = self.prompt(end1 + 1)
            if self._char(end2) == ":":
                tail = self._step_tail(end2 + 1)
                if tail is not None:
                    return tail[0], (_Edit(first, second, tail[1]),)
        return None

    def _step_tail(self, i: int) -> tuple[int, str] | None:
        """``[space] NUMBER [space] ]`` from ``i``: (end, number) or None."""
        i = _skip_space(self.text, i)
        match = _STEP_NUMBER.match(self.text, i)
        if match is None:
            return None
        close = _skip_space(self.text, match.end())
        if self._char(close) != "]":
            return None
        return close + 1, match.group(0)

    # -- the whole prompt --

    def greedy(self) -> tuple[tuple[_Node, ...] | None, int | None]:
        """Left to right, every item that parses: ``(nodes, None)``, or ``(None, position)`` of
        a character that fits nowhere (which makes A1111 give up on editing)."""
        nodes: list[_Node] = []
        i = 0
        while i < self.end:
            found = self.item(i)
            if found is not None:
                i = found[0]
                nodes.extend(found[1])
            elif self.text[i] in _LOOSE:
                nodes.append(_Loose(self.text[i]))
                i += 1
            else:
                return None, i
        return tuple(nodes), None

    def least_structure(self) -> tuple[_Node, ...]:
        """The reading A1111's parser gives when each of its ties goes against the items.

        That parser resolves the top level from the right: the whole text as one prompt if it
        can, else all loose characters, else a prompt ending here, else a run of loose
        characters ending here; where a loose run could start at several places it picks one
        by hash order. Here it starts as early as it can, taking closers out of items.
        Only called on prompts :meth:`greedy` could read.
        """
        valid = self._valid_prefixes()
        ends_to_starts: dict[int, list[int]] = {}
        for start, found in self._items.items():
            if found is not None:
                ends_to_starts.setdefault(found[0], []).append(start)
        segments: list[tuple[int, int, bool]] = []
        e = self.end
        while e > 0:
            starts = self._starts_reaching(e, ends_to_starts)
            if 0 in starts:
                segments.append((0, e, True))
                break
            if all(char in _LOOSE for char in self.text[:e]):
                segments.append((0, e, False))
                break
            prompt_starts = [k for k in starts if valid[k]]
            if prompt_starts:
                k = min(prompt_starts)
                segments.append((k, e, True))
            else:
                run = e
                while run > 1 and self.text[run - 1] in _LOOSE:
                    run -= 1
                loose_starts = [k for k in range(run, e) if valid[k]]
                if not loose_starts:  # cannot happen for a prompt greedy() reads; be safe
                    return self.greedy()[0] or ()
                k = loose_starts[0]
                segments.append((k, e, False))
            e = k
        nodes: list[_Node] = []
        for start, stop, is_prompt in reversed(segments):
            if is_prompt:
                pos = start
                while pos < stop:
                    found = self.item(pos)
                    assert found is not None
                    pos = found[0]
                    nodes.extend(found[1])
            else:
                nodes.extend(_Loose(char) for char in self.text[start:stop])
        return tuple(nodes)

    def _valid_prefixes(self) -> list[bool]:
        """``valid[k]``: the first ``k`` characters split into prompts and loose characters."""
        valid = [False] * (self.end + 1)
        valid[0] = True
        chained = [False] * (self.end + 1)
        for i in range(self.end):
            if not valid[i]:
                continue
            if self.text[i] in _LOOSE:
                valid[i + 1] = True
            j = i
            while not chained[j]:
                chained[j] = True
                found = self.item(j)
                if found is None:
                    break
                j = found[0]
                valid[j] = True
        return valid

    @staticmethod
    def _starts_reaching(e: int, ends_to_starts: dict[int, list[int]]) -> set[int]:
        """Positions from which a run of items ends exactly at ``e``."""
        seen: set[int] = set()
        todo = list(ends_to_starts.get(e, ()))
        while todo:
            start = todo.pop()
            if start not in seen:
                seen.add(start)
                todo.extend(ends_to_starts.get(start, ()))
        return seen
