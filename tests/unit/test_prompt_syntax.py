"""A1111 prompt syntax: emphasis, escapes, unbalanced brackets, BREAK and extra-network tags.

Expected values follow A1111's documented examples (also listed in the docstring of diffusers'
community ``lpw_stable_diffusion.py``), where each weight is the product of the brackets around
the text: ( ) = 1.1, [ ] = 1/1.1, (x:w) = w.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.diffusion.prompt_syntax import BREAK, LoraRequest, is_break, parse_prompt
from pipeline.errors import ParamsError


def frags(text: str) -> list[tuple[str, float]]:
    return parse_prompt(text).fragments


def assert_fragments(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> None:
    assert [t for t, _ in got] == [t for t, _ in want]
    assert [w for _, w in got] == pytest.approx([w for _, w in want], rel=1e-12)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.3 * 1.1 * 1.1),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.5 * 1.1),
                (", sun, ", 1.1),
                ("sky", 1.1**4),
                (".", 1.1),
            ],
        ),
        ("a [[[[[[[[[[[[empty]]]]]]]]]]]", [("a ", 1.0), ("empty", (1 / 1.1) ** 12)]),
    ],
)
def test_documented_a1111_examples(text: str, want: list[tuple[str, float]]) -> None:
    assert_fragments(frags(text), want)


def test_documented_float_values_are_reproduced_exactly() -> None:
    # A1111 multiplies inner brackets first; the documented repr shows the float rounding.
    got = dict(frags("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."))
    assert got["house"] == 1.5730000000000004
    assert got["sky"] == 1.4641000000000006
    assert got["on"] == 1.0


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("((a))", [("a", 1.1 * 1.1)]),
        ("[[a]]", [("a", 1 / 1.1 / 1.1)]),
        ("([a])", [("a", 1.1 / 1.1)]),
        ("((a:2))", [("a", 2 * 1.1)]),
        ("(a (b:0.5) c)", [("a ", 1.1), ("b", 0.55), (" c", 1.1)]),
        ("(a: 1.5 )", [("a", 1.5)]),
        ("(a:.5)", [("a", 0.5)]),
        ("(a:-1)", [("a", -1.0)]),
        ("(a:0)", [("a", 0.0)]),
        ("[a", [("a", 1 / 1.1)]),
        ("((a)", [("a", 1.1 * 1.1)]),
        ("(a [b) c]", [("a ", 1.1), ("b", 1.1 / 1.1), (" c", 1 / 1.1)]),
    ],
)
def test_weights_multiply_through_nesting(text: str, want: list[tuple[str, float]]) -> None:
    assert_fragments(frags(text), want)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("a) b]", "a) b]"),  # closers with nothing open are text
        ("x:1.5) y", "x:1.5) y"),  # a weight with no "(" to close is text
        ("ratio 16:9", "ratio 16:9"),
        ("\\(\\)\\[\\]\\\\", "()[]\\"),
        ("back\\slash", "back\\slash"),  # a backslash before anything else stays
        ("trailing\\", "trailing\\"),
        ("<not a tag>", "<not a tag>"),
    ],
)
def test_literal_text(text: str, want: str) -> None:
    assert frags(text) == [(want, 1.0)]


def test_escaped_brackets_inside_emphasis_take_its_weight() -> None:
    assert_fragments(frags("(a \\(b\\))"), [("a (b)", 1.1)])


def test_bad_explicit_weight_is_text_with_a_warning() -> None:
    parsed = parse_prompt("(a:1.2.3)")
    assert parsed.fragments == [("a:1.2.3)", 1.1)]
    assert any("not a valid weight" in w for w in parsed.warnings)


def test_empty_and_tag_only_prompts_give_one_empty_fragment() -> None:
    assert frags("") == [("", 1.0)]
    assert frags("()[]") == [("", 1.0)]
    assert parse_prompt("<lora:x:1>").fragments == [("", 1.0)]


def test_break_splits_and_swallows_surrounding_spaces() -> None:
    assert frags("a BREAK b") == [("a", 1.0), BREAK, ("b", 1.0)]
    assert frags("a  BREAK\n b BREAK") == [("a", 1.0), BREAK, ("b", 1.0), BREAK]
    assert frags("BREAK") == [BREAK]
    assert frags("BREAK BREAK x") == [BREAK, BREAK, ("x", 1.0)]  # markers never merge


def test_break_must_be_an_upper_case_whole_word() -> None:
    assert frags("BREAKfast break Break") == [("BREAKfast break Break", 1.0)]


def test_break_inside_brackets_stays_a_marker() -> None:
    got = frags("(a BREAK b)")
    assert got == [("a", 1.1), BREAK, ("b", 1.1)]
    assert [is_break(f) for f in got] == [False, True, False]


def test_adjacent_fragments_with_equal_weight_are_merged() -> None:
    assert frags("(a)(b) [c][d] e") == [("ab", 1.1), (" ", 1.0), ("cd", 1 / 1.1), (" e", 1.0)]


def test_clarity_default_prompt() -> None:
    parsed = parse_prompt(
        "masterpiece, best quality, highres, <lora:more_details:0.5> <lora:SDXLrender_v2.0:1>"
    )
    assert parsed.fragments == [("masterpiece, best quality, highres,  ", 1.0)]
    assert parsed.loras == [
        LoraRequest("more_details", 0.5, 0.5),
        LoraRequest("SDXLrender_v2.0", 1.0, 1.0),
    ]
    assert parsed.warnings == []
    assert parsed.text.strip() == "masterpiece, best quality, highres,"


def test_clarity_default_negative_prompt() -> None:
    parsed = parse_prompt("(worst quality, low quality, normal quality:2) JuggernautNegative-neg")
    assert parsed.fragments == [
        ("worst quality, low quality, normal quality", 2.0),
        (" JuggernautNegative-neg", 1.0),
    ]
    assert parsed.loras == []
    assert parsed.warnings == []


@pytest.mark.parametrize(
    ("tag", "want"),
    [
        ("<lora:name>", LoraRequest("name", 1.0, 1.0)),
        ("<lora:name:0.7>", LoraRequest("name", 0.7, 0.7)),
        ("<lora:name:0.7:0.2>", LoraRequest("name", 0.7, 0.2)),
        ("<lora:name:te=0.3:unet=0.9>", LoraRequest("name", 0.3, 0.9)),
        ("<lora:name:0.5:unet=0>", LoraRequest("name", 0.5, 0.0)),
        ("<lora:name: -1 >", LoraRequest("name", -1.0, -1.0)),
        ("<lyco:name:0.4>", LoraRequest("name", 0.4, 0.4)),
        ("<LoRA:my lora v2.1:1.5>", LoraRequest("my lora v2.1", 1.5, 1.5)),
    ],
)
def test_lora_tags(tag: str, want: LoraRequest) -> None:
    parsed = parse_prompt(f"a {tag} cat")
    assert parsed.loras == [want]
    assert parsed.fragments == [("a  cat", 1.0)]


def test_lora_tags_inside_emphasis_are_still_removed() -> None:
    parsed = parse_prompt("(a <lora:x:0.5> cat:1.2)")
    assert parsed.loras == [LoraRequest("x", 0.5, 0.5)]
    assert_fragments(parsed.fragments, [("a  cat", 1.2)])


def test_dynamic_dim_is_ignored_with_a_warning() -> None:
    parsed = parse_prompt("<lora:x:1:1:8>")
    assert parsed.loras == [LoraRequest("x", 1.0, 1.0)]
    assert len(parsed.warnings) == 1


@pytest.mark.parametrize("tag", ["<lora:x:strong>", "<lora:x:1:half>", "<lora:x:te=a>"])
def test_lora_weight_must_be_a_number(tag: str) -> None:
    with pytest.raises(ParamsError) as info:
        parse_prompt(f"cat {tag}", field="negative_prompt")
    assert info.value.fields == ["negative_prompt"]
    assert "not a number" in str(info.value)


def test_lora_tag_needs_a_name() -> None:
    with pytest.raises(ParamsError, match="needs a name"):
        parse_prompt("<lora::0.5>")


def test_hypernetwork_and_unknown_tags_are_removed_with_warnings() -> None:
    parsed = parse_prompt("a <hypernet:anime:0.5> b <wildcard:colours> c")
    assert parsed.fragments == [("a  b  c", 1.0)]
    assert parsed.loras == []
    assert len(parsed.warnings) == 2
    assert "hypernet" in parsed.warnings[0]
    assert "<wildcard:colours>" in parsed.warnings[1]


def test_unsupported_prompt_editing_and_and_are_kept_with_warnings() -> None:
    parsed = parse_prompt("a [cat:dog:0.5] and [red|blue] AND tree", field="prompt")
    assert len(parsed.warnings) == 2
    assert all(w.startswith("prompt:") for w in parsed.warnings)
    assert "cat:dog:0.5" in parsed.text
    assert parse_prompt("a [cat] and (dog:1.2)").warnings == []


def test_non_text_prompt_is_refused() -> None:
    with pytest.raises(ParamsError, match="must be text"):
        parse_prompt(None)  # type: ignore[arg-type]


def test_module_imports_no_torch() -> None:
    code = "import sys, pipeline.diffusion.prompt_syntax; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == "False"
