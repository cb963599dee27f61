"""A whole run's conditioning, A1111 v1.7's way: schedules, AND parts, the negative prompt.

A tiny random CLIP text model (hidden 32) with the real SD 1.5 tokenizer, as in
test_text_encoder.py. Expected tensors are built from the plain text model and the maths of
A1111's modules/sd_hijack_clip.py (``FrozenCLIPEmbedderWithCustomWordsBase.forward`` and
``process_tokens``) and modules/prompt_parser.py (``reconstruct_cond_batch``,
``reconstruct_multicond_batch``); each test names the function it follows.
"""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPTextModel, CLIPTokenizer

from pipeline.diffusion.text_encoder import Conditioning, PromptEncoder
from pipeline.errors import ParamsError
from tests.unit.test_text_encoder import HIDDEN, TOKENIZER_DIR, build_text_encoder

BOS, EOS, CAT, DOG = 49406, 49407, 2368, 1929


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)


@pytest.fixture(scope="module")
def text_encoder() -> CLIPTextModel:
    return build_text_encoder(seed=3)


@pytest.fixture
def encoder(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel) -> PromptEncoder:
    return PromptEncoder(tokenizer, text_encoder)


def plain(text_encoder: CLIPTextModel, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return text_encoder(input_ids=torch.tensor([ids])).last_hidden_state[0]


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# --- schedules ------------------------------------------------------------------------------


def test_edit_switches_after_its_step(encoder: PromptEncoder) -> None:
    c = encoder.encode_conditioning("a [cat:dog:2] photo", "", total_steps=5)
    ((schedule, weight),) = c.conds
    assert weight == 1.0
    assert schedule.end_steps == (2, 5)
    assert schedule.texts == ("a cat photo", "a dog photo")
    # reconstruct_cond_batch: the first entry with step <= end_at_step, entry 0 past the end;
    # CFGDenoiser.step starts at 0, so "cat" is used for model calls 0, 1 and 2
    assert [schedule.text_at(s) for s in range(7)] == ["a cat photo"] * 3 + ["a dog photo"] * 3 + [
        "a cat photo"
    ]
    assert schedule.switch_steps == (3, 6)
    close(schedule.at(0)[0], encoder.encode("a cat photo")[0])
    close(schedule.at(3)[0], encoder.encode("a dog photo")[0])
    assert schedule.at(2) is schedule.at(0)
    assert not torch.allclose(schedule.at(2), schedule.at(3))
    assert c.switch_steps == (3, 6)


def test_alternation_switches_every_call(encoder: PromptEncoder) -> None:
    c = encoder.encode_conditioning("[cat|dog]", "", total_steps=4)
    schedule = c.conds[0][0]
    assert schedule.end_steps == (1, 2, 3, 4)  # collect_steps: every step for an alternation
    assert [schedule.text_at(s) for s in range(5)] == ["cat", "cat", "dog", "cat", "dog"]
    assert schedule.switch_steps == (2, 3, 4, 5)
    close(schedule.at(2)[0], encoder.encode("dog")[0])


def test_schedule_is_one_batch_with_one_mean(
    encoder: PromptEncoder, text_encoder: CLIPTextModel
) -> None:
    # FrozenCLIPEmbedderWithCustomWordsBase.forward encodes the schedule's texts as one batch
    # and process_tokens restores z.mean() over the whole batch, so an emphasis in one text
    # changes the other text's embedding too
    schedule = encoder.encode_conditioning("[(cat:1.5):dog:2]", "", 4).conds[0][0]
    assert schedule.texts == ("(cat:1.5)", "dog")
    rows = [encoder.chunks("(cat:1.5)")[0], encoder.chunks("dog")[0]]
    z = torch.stack([plain(text_encoder, row.ids) for row in rows])
    w = torch.tensor([row.weights for row in rows]).unsqueeze(-1)
    assert w[0, 1, 0] == 1.5
    expected = z * w * (z.mean() / (z * w).mean())
    close(schedule.at(0)[0], expected[0])
    close(schedule.at(3)[0], expected[1])
    alone = encoder.encode("dog")[0]
    assert not torch.allclose(schedule.at(3)[0], alone, rtol=1e-4, atol=1e-5)


def test_texts_of_one_schedule_share_a_length(encoder: PromptEncoder) -> None:
    # forward pads a text with fewer chunks with empty_chunk() (BOS + 76 EOS, weights 1)
    long_text = " ".join(["cat"] * 76)
    schedule = encoder.encode_conditioning(f"[{long_text}:dog:1]", "", 3).conds[0][0]
    assert schedule.tokens == 154
    short = schedule.at(2)[0]
    close(short[:77], encoder.encode("dog")[0])
    close(short[77:], encoder.encode("")[0])
    close(schedule.at(0)[0], encoder.encode(long_text)[0])


# --- AND ------------------------------------------------------------------------------------


def test_and_parts_carry_their_weights(encoder: PromptEncoder) -> None:
    c = encoder.encode_conditioning("a cat AND a dog:0.5 AND a dog", "", 10)
    assert c.weights == (1.0, 0.5, 1.0)  # get_multicond_prompt_list
    assert c.conds[1][0] is c.conds[2][0]  # one schedule per distinct text, as A1111 indexes
    batch = c.cond_batch(0)
    assert batch.shape == (3, 77, HIDDEN)
    close(batch[0], encoder.encode("a cat")[0])
    close(batch[1], encoder.encode(" a dog")[0])
    assert torch.equal(batch[1], batch[2])


def test_parts_of_different_length_repeat_their_last_vector(encoder: PromptEncoder) -> None:
    # reconstruct_multicond_batch → stack_conds pads with the last vector, not empty chunks
    long_text = " ".join(["cat"] * 80)
    c = encoder.encode_conditioning(f"{long_text} AND dog", "", 10)
    batch = c.cond_batch(0)
    assert batch.shape == (2, 154, HIDDEN)
    dog = encoder.encode("dog")[0]
    close(batch[1, :77], dog)
    close(batch[1, 77:], dog[-1:].expand(77, -1))


def test_each_part_has_its_own_schedule(encoder: PromptEncoder) -> None:
    c = encoder.encode_conditioning("[cat:dog:2] AND [red|blue]:0.7", "", 4)
    first, second = c.conds[0][0], c.conds[1][0]
    assert first.end_steps == (2, 4)
    assert second.end_steps == (1, 2, 3, 4)
    assert c.switch_steps == (2, 3, 4, 5)
    close(c.cond_batch(3)[0], encoder.encode("dog")[0])
    close(c.cond_batch(3)[1], encoder.encode(" red")[0])


# --- the negative prompt --------------------------------------------------------------------


def test_negative_prompt_is_scheduled_not_split(encoder: PromptEncoder) -> None:
    # processing.setup_conds: get_learned_conditioning (schedules) for the negative prompts
    c = encoder.encode_conditioning("cat", "[blurry:noisy:1] AND ugly", 3)
    assert c.uncond.texts == ("blurry AND ugly", "noisy AND ugly")
    assert c.uncond.switch_steps == (2, 4)
    close(c.uncond_at(2)[0], encoder.encode("noisy AND ugly", field="negative_prompt")[0])


def test_negative_prompt_keeps_extra_network_tags_as_words(encoder: PromptEncoder) -> None:
    # processing.parse_extra_network_prompts only parses self.prompts, never the negatives
    c = encoder.encode_conditioning("cat <lora:x:1>", "<lora:x:1>", 3)
    assert c.conds[0][0].texts == ("cat",)
    assert c.uncond.texts == ("<lora:x:1>",)
    (chunk,) = encoder.chunks("<lora:x:1>", field="negative_prompt")
    assert chunk.ids.index(EOS) > 5  # "<", "lora", ":", "x", ":", "1", ">" are tokens
    close(c.uncond_at(0)[0], encoder.encode("<lora:x:1>", field="negative_prompt")[0])
    assert not torch.allclose(c.uncond_at(0), encoder.encode(""))


def test_cond_and_uncond_lengths_may_differ(encoder: PromptEncoder) -> None:
    c = encoder.encode_conditioning(" ".join(["cat"] * 80), "dog", 5)
    assert (c.conds[0][0].tokens, c.uncond.tokens) == (154, 77)
    assert isinstance(c, Conditioning)


def test_syntax_errors_name_the_field(encoder: PromptEncoder) -> None:
    with pytest.raises(ParamsError) as info:
        encoder.encode_conditioning("cat", "(a:1.2.3)", 5)
    assert info.value.fields == ["negative_prompt"]
    with pytest.raises(ParamsError) as info:
        encoder.encode_conditioning("[a:b:1e999]", "", 5)
    assert info.value.fields == ["prompt"]


# --- encoding work --------------------------------------------------------------------------


def test_each_distinct_chunk_goes_through_the_text_encoder_once(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel
) -> None:
    rows: list[int] = []

    def count(_module: object, args: tuple, kwargs: dict) -> None:
        rows.append(int(kwargs["input_ids"].shape[0]))

    handle = text_encoder.register_forward_pre_hook(count, with_kwargs=True)
    try:
        enc = PromptEncoder(tokenizer, text_encoder)
        c = enc.encode_conditioning("[cat|dog] AND dog", "dog", total_steps=30)
        assert len(c.conds[0][0].texts) == 30
        assert sum(rows) == 2  # "cat" and "dog" (the part and the negative reuse "dog")
        enc.encode_conditioning("[cat|dog] AND dog", "dog", total_steps=30)
        assert sum(rows) == 2  # cached
    finally:
        handle.remove()


def test_plain_prompts_match_the_pair_encoding(encoder: PromptEncoder) -> None:
    c = encoder.encode_conditioning("a cat", "blurry", 20)
    cond, uncond = encoder.encode_pair("a cat", "blurry")
    assert c.switch_steps == ()
    torch.testing.assert_close(c.cond_batch(7), cond)
    torch.testing.assert_close(c.uncond_at(19), uncond)
