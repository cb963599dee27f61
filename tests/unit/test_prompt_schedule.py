"""A1111 prompt editing, alternation and AND: the schedules and parts A1111 v1.7 computes.

Every expected value is A1111's; the comment beside it names the function in A1111's
modules/prompt_parser.py that yields it: ``get_learned_conditioning_prompt_schedules`` (the lark
grammar, ``collect_steps`` and ``at_step``; its docstring examples are the first table) and
``get_multicond_prompt_list`` (``re_AND`` and ``re_weight``). The values were also compared with
A1111's grammar run under lark 1.1.2 outside this repository, on about 14,000 random and
grammar-built prompts (7 to 30 steps), each under several hash seeds: every prompt Clarifier
does not warn about got A1111's schedule under every seed; the ones it warns about are those
for which A1111's result changes with Python's hash seed, Clarifier's being one of A1111's.
"""

from __future__ import annotations

import pytest

from pipeline.diffusion.prompt_syntax import parse_prompt, prompt_schedule, split_and
from pipeline.errors import ParamsError


def g(prompt: str, steps: int = 10) -> list[tuple[int, str]]:
    return prompt_schedule(prompt, steps)


# --- A1111's own examples -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "want"),
    [
        # get_learned_conditioning_prompt_schedules: its docstring, steps=10
        ("test", [(10, "test")]),
        ("a [b:3]", [(3, "a "), (10, "a b")]),
        ("a [b: 3]", [(3, "a "), (10, "a b")]),
        ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
        ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
        ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
        ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
        ("a [unbalanced", [(10, "a [unbalanced")]),
        ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
        ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
        ("[a|(b:1.1)]", [(s, "a" if s % 2 else "(b:1.1)") for s in range(1, 11)]),
        ("[fe|]male", [(s, "female" if s % 2 else "male") for s in range(1, 11)]),
        ("[fe|||]male", [(s, "female" if s % 4 == 1 else "male") for s in range(1, 11)]),
        # get_learned_conditioning_prompt_schedules: the docstring expects [[5, 'a  c'], ...]
        # ("not handling this right now"); lark 1.1.2 rejects the prompt, so it stays as it is
        ("a [{b|d{:.5] c", [(10, "a [{b|d{:.5] c")]),
    ],
)
def test_a1111_docstring_examples(prompt: str, want: list[tuple[int, str]]) -> None:
    assert g(prompt) == want


def test_a1111_module_example_at_100_steps() -> None:
    # prompt_parser.py's opening comment (a [from:to:when] of each kind), steps=100
    prompt = (
        "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
        "[ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]"
    )
    assert g(prompt, 100) == [
        (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
        (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
        (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
        (75, "fantasy landscape with a lake and an oak in background masterful"),
        (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
    ]


# --- when an edit switches ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "want"),
    [
        # collect_steps: a number with "." is a fraction of the steps, one without is a step
        ("[a:b:0.5]", [(5, "a"), (10, "b")]),
        ("[a:b:5]", [(5, "a"), (10, "b")]),
        ("[a:b:1.0]", [(10, "a")]),  # collect_steps: 1.0 × 10 = 10, the whole run
        ("[a:b:1]", [(1, "a"), (10, "b")]),  # collect_steps: step 1
        ("[a:b:2.]", [(10, "a")]),  # collect_steps: 2.0 × 10, capped at the steps
        ("[a:b:15]", [(10, "a")]),  # collect_steps: min(steps, 15)
        ("[a:b:1e1]", [(10, "a")]),  # collect_steps: no "." so 10 is a step
        ("[a:b:.5e1]", [(10, "a")]),  # collect_steps: "." so 5 × 10, capped
        ("[a:b:1.e1]", [(10, "a")]),  # NUMBER (lark SIGNED_NUMBER) takes "1.e1"
        ("[a:b:0.15]", [(1, "a"), (10, "b")]),  # collect_steps: int(1.5) = 1
        ("[a:b:0.05]", [(10, "b")]),  # collect_steps: int(0.5) = 0 < 1 is no step; at_step
        ("[a:b:0]", [(10, "b")]),  # at_step: step <= 0 never holds, so "b" throughout
        ("[a:b:-1]", [(10, "b")]),  # at_step
        ("[a:b:+3]", [(3, "a"), (10, "b")]),  # NUMBER is signed
        ("[a:b: 3 ]", [(3, "a"), (10, "b")]),  # scheduled: [WHITESPACE] NUMBER [WHITESPACE]
        ("[a:b:\t3\n]", [(3, "a"), (10, "b")]),  # WHITESPACE is \s+
        ("[a:b:1.5.]", [(10, "[a:b:1.5.]")]),  # NUMBER must be followed by "]": not an edit
        ("[ a : b : 3 ]", [(3, " a "), (10, " b ")]),  # plain keeps the spaces
    ],
)
def test_when_an_edit_switches(prompt: str, want: list[tuple[int, str]]) -> None:
    assert g(prompt) == want


@pytest.mark.parametrize(
    ("prompt", "want"),
    [
        ("[a:0.5]", [(5, ""), (10, "a")]),  # scheduled without "before": added at the step
        ("[:b:0.5]", [(5, ""), (10, "b")]),  # an empty "before" is the same
        ("[a::0.5]", [(5, "a"), (10, "")]),  # an empty "after": removed at the step
        ("[[a:b:2]:c:5]", [(2, "a"), (5, "b"), (10, "c")]),  # nested edits
        ("(a [b:c:5]:1.2)", [(5, "(a b:1.2)"), (10, "(a c:1.2)")]),  # edits inside emphasis
        ("(a:[1.5:2:5])", [(5, "(a:1.5)"), (10, "(a:2)")]),  # an edited weight
        ("[a BREAK b:c:5]", [(5, "a BREAK b"), (10, "c")]),  # BREAK is text to the grammar
        ("[a\\:b:c:5]", [(5, "a\\:b"), (10, "c")]),  # plain keeps escapes, of any character
        ("[a AND b:c:5]", [(5, "a AND b"), (10, "c")]),  # AND is not the grammar's business
    ],
)
def test_edit_forms(prompt: str, want: list[tuple[int, str]]) -> None:
    assert g(prompt) == want


def test_alternation_cycles_per_step() -> None:
    # at_step: alternate yields args[(step - 1) % len(args)]; collect_steps adds every step
    assert g("[a|b|c]", 4) == [(1, "a"), (2, "b"), (3, "c"), (4, "a")]
    assert g("x [a|b] [y:z:2]", 4) == [(1, "x a y"), (2, "x b y"), (3, "x a z"), (4, "x b z")]
    # collect_steps visits every node, also an alternation inside a branch not yet shown
    assert g("[[a|b]:c:2]", 4) == [(1, "a"), (2, "b"), (3, "c"), (4, "c")]
    assert g("[|a]", 3) == [(1, ""), (2, "a"), (3, "")]  # an empty first option


# --- brackets that close nothing, and prompts A1111 cannot read -----------------------------


@pytest.mark.parametrize(
    ("prompt", "want"),
    [
        ("[a:b:5", [(10, "[a:b:5")]),  # start: "[" is a loose character
        ("((a [b:c:5]", [(5, "((a b"), (10, "((a c")]),  # stray openers before an edit
        ("[b:c:5] ((", [(5, "b (("), (10, "c ((")]),  # stray openers after it
        ("x)[a:b:5]", [(5, "x)a"), (10, "x)b")]),  # a stray closer before it
        ("\\[a:b:5\\]", [(10, "\\[a:b:5\\]")]),  # escaped brackets are plain text
        ("[cat:dog:0.5]\\: high", [(5, "cat\\: high"), (10, "dog\\: high")]),
        # get_schedule: a LarkError (a "|" outside [a|b], a backslash escaping nothing at the
        # end) returns [[steps, prompt]]: no editing anywhere in the prompt
        ("a | [b:c:5]", [(10, "a | [b:c:5]")]),
        ("[b:c:5] x\\", [(10, "[b:c:5] x\\")]),
        ("[b:c:5]\\\nx", [(10, "[b:c:5]\\\nx")]),  # "\\." does not match a line break
    ],
)
def test_unbalanced_and_unreadable(prompt: str, want: list[tuple[int, str]]) -> None:
    assert g(prompt) == want


def test_unreadable_prompt_with_brackets_warns() -> None:
    parsed = parse_prompt("a | [b:c:5]")
    assert parsed.edited is False
    assert len(parsed.warnings) == 1
    assert "'|' at character 3" in parsed.warnings[0]
    assert parse_prompt("a | b").warnings == []  # nothing could have been an edit anyway


@pytest.mark.parametrize(
    ("prompt", "a1111_readings"),
    [
        # A1111's Earley parser breaks ties between equal derivations by hash order, which
        # Python randomises per process (PYTHONHASHSEED): both readings occur, run to run
        ("a [b:c:5]]", ([(10, "a [b:c:5]]")], [(5, "a b]"), (10, "a c]")])),
        (
            "[cat:dog:0.5]: high",
            ([(10, "[cat:dog:0.5]: high")], [(5, "cat: high"), (10, "dog: high")]),
        ),
        ("[a:3](", ([(10, "[a:3](")], [(3, "("), (10, "a(")])),
    ],
)
def test_hash_dependent_prompts_keep_the_edit_and_warn(
    prompt: str, a1111_readings: tuple[list[tuple[int, str]], list[tuple[int, str]]]
) -> None:
    assert g(prompt) == a1111_readings[1]
    parsed = parse_prompt(prompt, steps=10)
    assert parsed.edited is True
    assert any("hash seed" in w for w in parsed.warnings)


def test_unambiguous_stray_characters_do_not_warn() -> None:
    for prompt in ("((a [b:c:5]", "a [b:c:5] ]", "ratio 16:9, [a:b:5] x", "[a|b]]"):
        assert not any("hash seed" in w for w in parse_prompt(prompt, steps=10).warnings)


def test_step_number_too_large_is_refused() -> None:
    # collect_steps: int(float("1e999")) raises OverflowError in A1111
    with pytest.raises(ParamsError, match="too large") as info:
        prompt_schedule("[a:b:1e999]", 10, field="negative_prompt")
    assert info.value.fields == ["negative_prompt"]


def test_deep_nesting_is_read_and_too_deep_is_refused() -> None:
    # lark reads 150 nested brackets around an edit (and runs out of stack at 300)
    left, right = "(" * 149, ")" * 149
    assert prompt_schedule(f"{left}[a:b:3]{right}", 10) == [
        (3, f"{left}a{right}"),
        (10, f"{left}b{right}"),
    ]
    with pytest.raises(ParamsError, match="nested"):
        prompt_schedule("(" * 300 + "a" + ")" * 300, 10)


def test_steps_must_be_positive() -> None:
    with pytest.raises(ValueError, match="steps"):
        prompt_schedule("[a:b:5]", 0)


# --- AND ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "want"),
    [
        # get_multicond_prompt_list: re_AND splits, re_weight takes a trailing ":number"
        ("a cat AND a dog", [("a cat", 1.0), (" a dog", 1.0)]),
        ("a AND b:1.5", [("a", 1.0), (" b", 1.5)]),
        ("a:0.5 AND b : -2 ", [("a", 0.5), (" b", -2.0)]),
        ("a AND", [("a", 1.0), ("", 1.0)]),
        (" AND ", [("", 1.0), ("", 1.0)]),
        ("a AND a", [("a", 1.0), (" a", 1.0)]),  # duplicates are separate parts
        ("ANDROID and", [("ANDROID and", 1.0)]),  # \bAND\b, upper case only
        ("(a AND b)", [("(a", 1.0), (" b)", 1.0)]),  # brackets do not protect
        ("ratio 16:9", [("ratio 16", 9.0)]),  # a prompt ending in ":9" weighs 9
        ("x:1.", [("x", 1.0)]),  # re_weight: \d+\.?
        ("x:.5", [("x", 0.5)]),  # re_weight: \d*\.\d+
        ("a:+1", [("a", 1.0)]),
        ("x:1e2", [("x:1e2", 1.0)]),  # re_weight: no exponent
        ("a :1.5.", [("a :1.5.", 1.0)]),
        ("x: 5\n", [("x", 5.0)]),
        ("a:b:2", [("a:b", 2.0)]),  # the last colon
        ("a\n:2", [("a", 2.0)]),
    ],
)
def test_split_and(prompt: str, want: list[tuple[str, float]]) -> None:
    assert split_and(prompt) == want


def test_and_parts_are_scheduled_one_by_one() -> None:
    parsed = parse_prompt("a [cat:dog:5] AND [red|blue] car:0.5", steps=10)
    assert parsed.parts == [("a [cat:dog:5]", 1.0), (" [red|blue] car", 0.5)]
    assert parsed.edited is True
    assert parsed.warnings == []  # editing, alternation and AND are all honoured now
    assert parsed.fragments == [("a cat", 1.0)]  # the first part's first text


def test_a_whole_prompt_weight_warns() -> None:
    parsed = parse_prompt("a photo, ratio 16:9")
    assert parsed.parts == [("a photo, ratio 16", 9.0)]
    assert len(parsed.warnings) == 1
    assert "':9'" in parsed.warnings[0]
    assert parse_prompt("a photo AND ratio 16:9").warnings == []  # weights meant as such


def test_negative_prompt_is_scheduled_but_not_split() -> None:
    # processing.setup_conds: the negative prompts go to get_learned_conditioning (schedules)
    # and not to get_multicond_learned_conditioning (AND)
    parsed = parse_prompt("[blurry:noisy:5] AND ugly:2", field="negative_prompt", steps=10)
    assert parsed.parts == [("[blurry:noisy:5] AND ugly:2", 1.0)]
    assert parsed.edited is True
    assert any("AND is read as a plain word" in w for w in parsed.warnings)
