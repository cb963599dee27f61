"""A1111 prompt syntax: emphasis, escapes, unbalanced brackets, BREAK and extra-network tags.

Every expected value is what A1111 v1.7 computes; the comment beside it names the A1111
function that yields it (modules/prompt_parser.py unless said otherwise), so a reviewer can
check it against that source. The documented examples are the ones in the docstring of
``parse_prompt_attention``. The values were also compared with A1111's functions run as a
reference outside this repository (200,000 random prompts, weights equal to the last bit).
Editing, alternation and AND are in test_prompt_schedule.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import cast

import pytest

from pipeline.diffusion.prompt_syntax import (
    BREAK,
    LoraRequest,
    is_break,
    parse_attention,
    parse_prompt,
    take_extra_networks,
)
from pipeline.errors import ParamsError

frags = parse_attention


def assert_fragments(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> None:
    assert [t for t, _ in got] == [t for t, _ in want]
    assert [w for _, w in got] == pytest.approx([w for _, w in want], rel=1e-12)


# --- emphasis -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        # parse_prompt_attention: each of its docstring examples
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ],
        ),
        # parse_prompt_attention: twelve "[" each divide by 1.1
        ("a [[[[[[[[[[[[empty]]]]]]]]]]]", [("a ", 1.0), ("empty", (1 / 1.1) ** 12)]),
    ],
)
def test_documented_a1111_examples(text: str, want: list[tuple[str, float]]) -> None:
    assert_fragments(frags(text), want)


def test_weights_are_the_same_floats_as_a1111() -> None:
    # parse_prompt_attention multiplies inner brackets first; its docstring shows these reprs
    got = dict(frags("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."))
    assert got["house"] == 1.5730000000000004
    assert got["sky"] == 1.4641000000000006
    assert got["on"] == 1.0
    assert frags("(((a)))") == [("a", 1.3310000000000004)]  # parse_prompt_attention


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("((a))", [("a", 1.1 * 1.1)]),  # parse_prompt_attention: nested "(" multiply
        ("[[a]]", [("a", 1 / 1.1 / 1.1)]),  # parse_prompt_attention
        ("([a])", [("a", 1.1 / 1.1)]),  # parse_prompt_attention
        ("((a:2))", [("a", 2 * 1.1)]),  # parse_prompt_attention
        ("(a (b:0.5) c)", [("a ", 1.1), ("b", 0.55), (" c", 1.1)]),  # parse_prompt_attention
        ("(a: 1.5 )", [("a", 1.5)]),  # re_attention allows spaces around the weight
        ("a (b:1.5 ) c", [("a ", 1.0), ("b", 1.5), (" c", 1.0)]),  # re_attention
        ("(a:.5)", [("a", 0.5)]),  # re_attention: [.\d]+
        ("(a:+2)", [("a", 2.0)]),  # re_attention: optional sign
        ("(a:-1)", [("a", -1.0)]),  # parse_prompt_attention
        ("(a:0)", [("a", 0.0)]),  # parse_prompt_attention
        ("[a", [("a", 1 / 1.1)]),  # parse_prompt_attention: open "[" weighs the rest
        ("((a)", [("a", 1.1 * 1.1)]),  # parse_prompt_attention
        ("(a [b) c]", [("a ", 1.1), ("b", 1.1 / 1.1), (" c", 1 / 1.1)]),  # separate stacks
        ("(a:1e2)", [("a:1e2", 1.1)]),  # re_attention: "e" is no weight, so "(" weighs 1.1
        ("(a: 2", [("a: 2", 1.1)]),  # re_attention: a weight needs its ")"
    ],
)
def test_weights_multiply_through_nesting(text: str, want: list[tuple[str, float]]) -> None:
    assert_fragments(frags(text), want)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("a) b]", "a) b]"),  # parse_prompt_attention: closers with nothing open are text
        ("x:1.5) y", "x:1.5) y"),  # parse_prompt_attention: no "(" to close: the weight is text
        ("a:1.2.3)", "a:1.2.3)"),  # parse_prompt_attention: never converted without a "("
        ("ratio 16:9", "ratio 16:9"),  # re_attention: a lone ":" is text
        ("\\(\\)\\[\\]\\\\", "()[]\\"),  # re_attention: the five escapes
        ("back\\slash", "backslash"),  # re_attention: any other backslash is dropped
        ("trailing\\", "trailing"),  # re_attention: so is a trailing one
        ("<not a tag>", "<not a tag>"),
    ],
)
def test_literal_text(text: str, want: str) -> None:
    assert frags(text) == [(want, 1.0)]


def test_escaped_brackets_inside_emphasis_take_its_weight() -> None:
    assert frags("(a \\(b\\))") == [("a (b)", 1.1)]  # parse_prompt_attention


@pytest.mark.parametrize("text", ["(a:1.2.3)", "x (y:.)", "(a:1..5)"])
def test_unreadable_weight_is_refused_like_a1111(text: str) -> None:
    # parse_prompt_attention calls float() on the weight and raises ValueError
    with pytest.raises(ParamsError, match="not a number") as info:
        parse_attention(text, field="negative_prompt")
    assert info.value.fields == ["negative_prompt"]
    with pytest.raises(ParamsError):
        parse_prompt(f"a {text}")


def test_empty_prompts_give_one_empty_fragment() -> None:
    assert frags("") == [("", 1.0)]  # parse_prompt_attention: empty result → [["", 1.0]]
    assert frags("()[]") == [("", 1.0)]  # parse_prompt_attention
    assert parse_prompt("<lora:x:1>").fragments == [("", 1.0)]


def test_negative_zero_merges_with_zero() -> None:
    # parse_prompt_attention merges neighbours whose weights compare equal (0.0 == -0.0)
    assert frags("(a:0)(b:-0.0)") == [("ab", 0.0)]
    assert frags("(a:-0)b") == [("a", -0.0), ("b", 1.0)]


# --- BREAK ----------------------------------------------------------------------------------


def test_break_splits_and_swallows_surrounding_spaces() -> None:
    # parse_prompt_attention: re_break splits text runs; the pieces around it stay, even empty
    assert frags("a BREAK b") == [("a", 1.0), BREAK, ("b", 1.0)]
    assert frags("a  BREAK\n b BREAK") == [("a", 1.0), BREAK, ("b", 1.0), BREAK, ("", 1.0)]
    assert frags("BREAK") == [("", 1.0), BREAK, ("", 1.0)]
    assert frags("BREAK BREAK x") == [("", 1.0), BREAK, ("", 1.0), BREAK, ("x", 1.0)]


def test_break_must_be_an_upper_case_whole_word() -> None:
    assert frags("BREAKfast break Break") == [("BREAKfast break Break", 1.0)]  # \bBREAK\b


def test_break_inside_brackets_is_multiplied_into_a_word() -> None:
    # parse_prompt_attention multiplies the ["BREAK", -1] marker like text; tokenize_line in
    # sd_hijack_clip.py only breaks on weight exactly -1, so this is the word BREAK at -1.1
    got = frags("(a BREAK b)")
    assert got == [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]
    assert [is_break(f) for f in got] == [False, False, False]
    assert frags("[a BREAK b]") == [
        ("a", 0.9090909090909091),
        ("BREAK", -0.9090909090909091),
        ("b", 0.9090909090909091),
    ]
    # parse_prompt_attention: at weight 0 the marker (-0.0) merges with its neighbours
    assert frags("(a BREAK b:0)") == [("aBREAKb", 0.0)]
    # parse_prompt_attention: a weight of -1 turns the marker into +1 text
    assert frags("(BREAK:-1)") == [("", -1.0), ("BREAK", 1.0), ("", -1.0)]
    parsed = parse_prompt("(a BREAK b)")
    assert len(parsed.warnings) == 1
    assert "BREAK inside" in parsed.warnings[0]
    assert parse_prompt("a BREAK b").warnings == []


def test_adjacent_fragments_with_equal_weight_are_merged() -> None:
    # parse_prompt_attention: "merge runs of identical weights"
    assert frags("(a)(b) [c][d] e") == [("ab", 1.1), (" ", 1.0), ("cd", 1 / 1.1), (" e", 1.0)]


# --- extra networks -------------------------------------------------------------------------


def test_clarity_default_prompt() -> None:
    parsed = parse_prompt(
        "masterpiece, best quality, highres, <lora:more_details:0.5> <lora:SDXLrender_v2.0:1>"
    )
    # extra_networks.parse_prompt cuts the tags; get_multicond_prompt_list's re_weight then
    # drops the part's trailing whitespace
    assert parsed.fragments == [("masterpiece, best quality, highres,", 1.0)]
    assert parsed.parts == [("masterpiece, best quality, highres,", 1.0)]
    assert parsed.loras == [
        LoraRequest("more_details", 0.5, 0.5),
        LoraRequest("SDXLrender_v2.0", 1.0, 1.0),
    ]
    assert parsed.warnings == []
    assert parsed.edited is False
    assert parsed.text == "masterpiece, best quality, highres,"


def test_clarity_default_negative_prompt() -> None:
    parsed = parse_prompt(
        "(worst quality, low quality, normal quality:2) JuggernautNegative-neg",
        field="negative_prompt",
    )
    assert parsed.fragments == [  # parse_prompt_attention
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
    assert parsed.fragments == [("a  cat", 1.0)]  # extra_networks.parse_prompt: tag → ""


def test_lora_tags_inside_emphasis_and_edits_are_still_removed() -> None:
    # extra_networks.parse_prompt runs on the whole prompt before any other parsing
    parsed = parse_prompt("(a <lora:x:0.5> cat:1.2)")
    assert parsed.loras == [LoraRequest("x", 0.5, 0.5)]
    assert_fragments(parsed.fragments, [("a  cat", 1.2)])
    parsed = parse_prompt("[a <lora:y:1>:b:5]")
    assert parsed.loras == [LoraRequest("y", 1.0, 1.0)]
    assert parsed.fragments == [("a ", 1.0)]


def test_tags_are_removed_in_one_pass() -> None:
    # extra_networks.parse_prompt: one re.sub, so a tag formed by the removal stays as text
    text, loras, _ = take_extra_networks("<<lora:x:1>lora:y:1>")
    assert text == "<lora:y:1>"
    assert loras == [LoraRequest("x", 1.0, 1.0)]


def test_dynamic_dim_is_ignored_with_a_warning() -> None:
    parsed = parse_prompt("<lora:x:1:1:8>")
    assert parsed.loras == [LoraRequest("x", 1.0, 1.0)]
    assert len(parsed.warnings) == 1


@pytest.mark.parametrize("tag", ["<lora:x:strong>", "<lora:x:1:half>", "<lora:x:te=a>"])
def test_lora_weight_must_be_a_number(tag: str) -> None:
    with pytest.raises(ParamsError) as info:
        parse_prompt(f"cat {tag}", field="prompt")
    assert info.value.fields == ["prompt"]
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


def test_tags_in_the_negative_prompt_are_words() -> None:
    # processing.parse_extra_network_prompts → extra_networks.parse_prompts(self.prompts): the
    # negative prompts never go through it, so the tag reaches the text encoder as text
    parsed = parse_prompt("blurry <lora:x:lots>", field="negative_prompt")
    assert parsed.loras == []
    assert parsed.fragments == [("blurry <lora:x:lots>", 1.0)]
    assert len(parsed.warnings) == 1
    assert "plain words" in parsed.warnings[0]
    assert parse_prompt("blurry <lora:x:1>", negative=False).loras == [LoraRequest("x")]


def test_non_text_prompt_is_refused() -> None:
    with pytest.raises(ParamsError, match="must be text"):
        parse_prompt(cast(str, None))


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
