"""Prompt encoding the A1111 way, on a tiny random CLIP text model with the real CLIP tokenizer.

The tokenizer files are the ones shipped in resources/sd15/tokenizer, so token ids are the real
SD 1.5 ids; the text model is random (hidden 32, 2 layers), which is enough to check the maths:
emphasis and mean restoration, chunking, textual inversion and cond/uncond padding.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from pipeline.diffusion.text_encoder import PromptEncoder, load_embedding
from pipeline.errors import ModelError, ParamsError

TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "resources" / "sd15" / "tokenizer"
HIDDEN = 32
BOS, EOS, COMMA, CAT, DOG, A = 49406, 49407, 267, 2368, 1929, 320


class NotATensor:
    """Pickled into an 'embedding' to stand for a file that needs arbitrary code to load."""


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)


@pytest.fixture(scope="module")
def text_encoder() -> CLIPTextModel:
    return build_text_encoder(seed=0)


def build_text_encoder(seed: int) -> CLIPTextModel:
    """A tiny random CLIP text model on SD 1.5's vocabulary, with layer norms that matter."""
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=EOS,
    )
    model = CLIPTextModel(config).eval()
    with torch.no_grad():  # fresh layer norms (weight 1, bias 0) would make every mean ~0
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.3, 0.5)
    return model


@pytest.fixture(scope="module")
def vectors() -> torch.Tensor:
    return torch.randn(3, HIDDEN, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def emb_files(tmp_path_factory: pytest.TempPathFactory, vectors: torch.Tensor) -> dict[str, Path]:
    """The same 3 vectors in every supported format, plus broken files."""
    root = tmp_path_factory.mktemp("embeddings")
    files = {
        "a1111_pt": root / "JuggernautNegative-neg.pt",
        "a1111_st": root / "a1111.safetensors",
        "diffusers_bin": root / "learned_embeds.bin",
        "diffusers_st": root / "learned_embeds.safetensors",
        "wrong_size": root / "sd2.pt",
        "unsafe": root / "unsafe.pt",
        "sdxl": root / "sdxl.safetensors",
        "two_tensors": root / "two.safetensors",
    }
    a1111 = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": torch.nn.Parameter(vectors.clone())},
        "name": "JuggernautNegative-neg",
        "step": 1000,
        "sd_checkpoint": "abcdef12",
        "sd_checkpoint_name": "juggernaut_reborn",
    }
    torch.save(a1111, files["a1111_pt"])
    save_file({"emb_params": vectors.clone()}, files["a1111_st"])
    torch.save({"<jug>": vectors.clone()}, files["diffusers_bin"])
    save_file({"<jug>": vectors.clone()}, files["diffusers_st"])
    torch.save({"string_to_param": {"*": torch.zeros(2, 1024)}, "name": "sd2"}, files["wrong_size"])
    torch.save({"string_to_param": {"*": vectors.clone()}, "extra": NotATensor()}, files["unsafe"])
    save_file({"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(2, 1280)}, files["sdxl"])
    save_file({"a": torch.zeros(1, HIDDEN), "b": torch.zeros(1, HIDDEN)}, files["two_tensors"])
    return files


@pytest.fixture(scope="module")
def encoder(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel) -> PromptEncoder:
    return PromptEncoder(tokenizer, text_encoder)


def plain(text_encoder: CLIPTextModel, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return text_encoder(input_ids=torch.tensor([ids])).last_hidden_state[0]


def words(word: str, n: int) -> str:
    return " ".join([word] * n)


# --- the tokenizer files --------------------------------------------------------------------


def test_shipped_tokenizer_is_the_real_clip_tokenizer(tokenizer: CLIPTokenizer) -> None:
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == 49408
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        49406,
        49407,
        49407,
    )
    assert tokenizer.model_max_length == 77
    merges = (TOKENIZER_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2"
    assert len(merges) - 1 == 49152 - 256 - 2
    # lower-cased, like A1111's CLIP: embedding names match case-insensitively
    assert (
        tokenizer("JuggernautNegative-neg").input_ids
        == tokenizer("juggernautnegative-neg")["input_ids"]
    )


# --- emphasis -------------------------------------------------------------------------------


def test_unweighted_prompt_equals_the_plain_text_encoder(
    encoder: PromptEncoder, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel
) -> None:
    prompt = "masterpiece, best quality, highres"
    ids = tokenizer(prompt, padding="max_length", max_length=77).input_ids
    z = encoder.encode(prompt)
    assert z.shape == (1, 77, HIDDEN)
    assert torch.equal(z[0], plain(text_encoder, ids))


def test_emphasis_multiplies_then_restores_the_mean(
    encoder: PromptEncoder, text_encoder: CLIPTextModel
) -> None:
    prompt = "a (photo:1.5) of [cat], ((dog))"
    (chunk,) = encoder.chunks(prompt)
    assert chunk.ids[:9] == [BOS, A, 1125, 539, CAT, COMMA, DOG, EOS, EOS]
    assert chunk.weights[:8] == pytest.approx([1, 1, 1.5, 1, 1 / 1.1, 1, 1.21, 1])
    z_plain = plain(text_encoder, chunk.ids)
    weights = torch.tensor(chunk.weights).unsqueeze(-1)
    weighted = z_plain * weights
    expected = weighted * (z_plain.mean() / weighted.mean())
    z = encoder.encode(prompt)[0]
    torch.testing.assert_close(z, expected, rtol=1e-5, atol=1e-6)
    assert abs(float(z_plain.mean())) > 0.05  # a mean worth restoring
    torch.testing.assert_close(z.mean(), z_plain.mean(), rtol=1e-5, atol=0)
    assert not torch.allclose(z, z_plain)


def test_mean_is_restored_per_chunk(encoder: PromptEncoder, text_encoder: CLIPTextModel) -> None:
    prompt = "(cat:2) BREAK [dog]"
    chunks = encoder.chunks(prompt)
    z = encoder.encode(prompt)[0]
    for k, chunk in enumerate(chunks):
        part = z[77 * k : 77 * (k + 1)]
        reference = plain(text_encoder, chunk.ids)
        assert not torch.allclose(part, reference)
        torch.testing.assert_close(part.mean(), reference.mean(), rtol=1e-5, atol=0)


def test_lora_tags_do_not_reach_the_text(encoder: PromptEncoder) -> None:
    assert torch.equal(encoder.encode("a cat <lora:x:0.5>"), encoder.encode("a cat "))


def test_clip_skip_uses_an_earlier_layer_and_the_final_norm(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel
) -> None:
    enc = PromptEncoder(tokenizer, text_encoder, clip_skip=2)
    ids = tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        out = text_encoder(input_ids=ids, output_hidden_states=True)
        expected = text_encoder.final_layer_norm(out.hidden_states[-2])
    torch.testing.assert_close(enc.encode("a cat"), expected)
    with pytest.raises(ParamsError, match="clip_skip"):
        PromptEncoder(tokenizer, text_encoder, clip_skip=3)


# --- chunking -------------------------------------------------------------------------------


def test_75_tokens_fit_one_chunk_and_76_need_two(encoder: PromptEncoder) -> None:
    (chunk,) = encoder.chunks(words("cat", 75))
    assert chunk.ids == [BOS, *[CAT] * 75, EOS]
    first, second = encoder.chunks(words("cat", 76))
    assert first.ids == [BOS, *[CAT] * 75, EOS]
    assert second.ids == [BOS, CAT, *[EOS] * 75]
    assert encoder.encode(words("cat", 76)).shape == (1, 154, HIDDEN)


def test_chunks_are_encoded_independently(
    encoder: PromptEncoder, text_encoder: CLIPTextModel
) -> None:
    z = encoder.encode(words("cat", 76))[0]
    for k, chunk in enumerate(encoder.chunks(words("cat", 76))):
        torch.testing.assert_close(z[77 * k : 77 * (k + 1)], plain(text_encoder, chunk.ids))


def test_break_starts_a_new_chunk(encoder: PromptEncoder) -> None:
    first, second = encoder.chunks("a cat BREAK dog")
    assert first.ids[:4] == [BOS, A, CAT, EOS]
    assert second.ids[:3] == [BOS, DOG, EOS]
    assert len(encoder.chunks("BREAK")) == 1
    assert len(encoder.chunks("cat BREAK")) == 1
    assert len(encoder.chunks("BREAK cat")) == 2
    assert len(encoder.chunks("cat BREAK BREAK dog")) == 3


def test_empty_prompt_is_one_padded_chunk(encoder: PromptEncoder) -> None:
    (chunk,) = encoder.chunks("")
    assert chunk.ids == [BOS, *[EOS] * 76]
    assert chunk.weights == [1.0] * 77


def test_overflow_breaks_after_a_comma_within_20_tokens(encoder: PromptEncoder) -> None:
    prompt = f"{words('cat', 60)}, {words('dog', 20)}"
    first, second = encoder.chunks(prompt)
    assert first.ids == [BOS, *[CAT] * 60, COMMA, *[EOS] * 14, EOS]
    assert second.ids[:22] == [BOS, *[DOG] * 20, EOS]


def test_overflow_splits_hard_when_the_comma_is_too_far(encoder: PromptEncoder) -> None:
    prompt = f"{words('cat', 40)}, {words('dog', 40)}"
    first, second = encoder.chunks(prompt)
    assert first.ids == [BOS, *[CAT] * 40, COMMA, *[DOG] * 34, EOS]
    assert second.ids[:8] == [BOS, *[DOG] * 6, EOS]


def test_moved_tokens_keep_their_weights(encoder: PromptEncoder) -> None:
    prompt = f"{words('cat', 70)}, ({words('dog', 10)}:1.3)"
    first, second = encoder.chunks(prompt)
    assert first.ids[71] == COMMA
    assert second.ids[1:11] == [DOG] * 10
    assert second.weights[1:11] == pytest.approx([1.3] * 10)


def test_comma_backtrack_can_be_switched_off(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel
) -> None:
    enc = PromptEncoder(tokenizer, text_encoder, comma_backtrack=0)
    first, _ = enc.chunks(f"{words('cat', 60)}, {words('dog', 20)}")
    assert first.ids[-2] == DOG


# --- textual inversion ----------------------------------------------------------------------


def _inputs_embeds(text_encoder: CLIPTextModel, enc: PromptEncoder, prompt: str) -> torch.Tensor:
    """The token embeddings CLIP actually saw (position embeddings taken off again)."""
    seen: list[torch.Tensor] = []

    def grab(_module: object, args: tuple, kwargs: dict) -> None:
        seen.append(kwargs.get("inputs_embeds", args[0] if args else None).detach().clone())

    handle = text_encoder.encoder.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        enc.clear_cache()
        enc.encode(prompt)
    finally:
        handle.remove()
    return seen[0] - text_encoder.embeddings.position_embedding.weight


def test_embedding_adds_its_vectors_in_place_of_its_name(
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    emb_files: dict[str, Path],
    vectors: torch.Tensor,
) -> None:
    enc = PromptEncoder(tokenizer, text_encoder, {"JuggernautNegative-neg": emb_files["a1111_pt"]})
    (chunk,) = enc.chunks("a juggernautNEGATIVE-neg cat")
    assert chunk.ids[:7] == [BOS, A, 0, 0, 0, CAT, EOS]
    assert chunk.vectors == {2 + i: ("JuggernautNegative-neg", i) for i in range(3)}
    seen = _inputs_embeds(text_encoder, enc, "a juggernautNEGATIVE-neg cat")[0]
    torch.testing.assert_close(seen[2:5], vectors)
    token_rows = text_encoder.embeddings.token_embedding.weight
    torch.testing.assert_close(seen[1], token_rows[A])
    torch.testing.assert_close(seen[5], token_rows[CAT])
    assert enc.used_embeddings == ["JuggernautNegative-neg"]


def test_embedding_equals_a_model_with_the_vectors_added_to_its_vocabulary(
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    emb_files: dict[str, Path],
    vectors: torch.Tensor,
) -> None:
    enc = PromptEncoder(tokenizer, text_encoder, {"jug": emb_files["a1111_pt"]})
    grown = copy.deepcopy(text_encoder)
    grown.resize_token_embeddings(49408 + 3)
    with torch.no_grad():
        grown.get_input_embeddings().weight[49408:] = vectors
    ids = [BOS, A, 49408, 49409, 49410, CAT, *[EOS] * 71]
    torch.testing.assert_close(enc.encode("a jug cat")[0], plain(grown, ids))


def test_embedding_takes_the_weight_of_its_fragment(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, emb_files: dict[str, Path]
) -> None:
    enc = PromptEncoder(tokenizer, text_encoder, {"jug": emb_files["a1111_pt"]})
    (chunk,) = enc.chunks("(worst quality:2) (jug:1.5)")
    assert chunk.weights[1:6] == pytest.approx([2, 2, 1.5, 1.5, 1.5])


def test_embedding_never_straddles_two_chunks(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, emb_files: dict[str, Path]
) -> None:
    enc = PromptEncoder(tokenizer, text_encoder, {"jug": emb_files["a1111_pt"]})
    first, second = enc.chunks(f"{words('cat', 73)} jug")
    assert first.ids == [BOS, *[CAT] * 73, EOS, EOS, EOS]
    assert first.vectors == {}
    assert second.vectors == {1: ("jug", 0), 2: ("jug", 1), 3: ("jug", 2)}


def test_longest_embedding_name_wins(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, emb_files: dict[str, Path]
) -> None:
    enc = PromptEncoder(
        tokenizer, text_encoder, {"bad": emb_files["a1111_st"], "bad-hands": emb_files["a1111_pt"]}
    )
    (chunk,) = enc.chunks("bad-hands")
    assert set(name for name, _ in chunk.vectors.values()) == {"bad-hands"}


def test_all_formats_give_the_same_vectors(
    emb_files: dict[str, Path], vectors: torch.Tensor
) -> None:
    for kind in ("a1111_pt", "a1111_st", "diffusers_bin", "diffusers_st"):
        torch.testing.assert_close(load_embedding(emb_files[kind], HIDDEN), vectors)


def test_diffusers_single_vector_format(tmp_path: Path) -> None:
    path = tmp_path / "one.bin"
    torch.save({"<tok>": torch.ones(HIDDEN)}, path)
    assert load_embedding(path, HIDDEN).shape == (1, HIDDEN)


def test_encoding_is_idempotent_and_leaves_the_model_unchanged(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, emb_files: dict[str, Path]
) -> None:
    weights_before = text_encoder.get_input_embeddings().weight.clone()
    enc = PromptEncoder(tokenizer, text_encoder, {"jug": emb_files["a1111_st"]})
    first = enc.encode("cat jug")
    enc.clear_cache()
    second = enc.encode("cat jug")
    assert torch.equal(first, second)
    assert len(tokenizer) == 49408
    assert torch.equal(text_encoder.get_input_embeddings().weight, weights_before)
    assert not text_encoder.get_input_embeddings()._forward_hooks
    assert torch.equal(enc.encode("cat"), PromptEncoder(tokenizer, text_encoder).encode("cat"))


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("wrong_size", "size 1024"),
        ("unsafe", "refused"),
        ("sdxl", "SDXL"),
        ("two_tensors", "expected one tensor"),
    ],
)
def test_bad_embedding_files_are_refused_when_used(
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    emb_files: dict[str, Path],
    kind: str,
    message: str,
) -> None:
    enc = PromptEncoder(tokenizer, text_encoder, {"broken": emb_files[kind]})
    assert enc.encode("a cat").shape == (1, 77, HIDDEN)  # unused: never read
    with pytest.raises(ModelError, match=message) as info:
        enc.encode("a broken cat")
    assert emb_files[kind].name in str(info.value)


def test_wrong_size_names_both_sizes(emb_files: dict[str, Path]) -> None:
    with pytest.raises(ModelError) as info:
        load_embedding(emb_files["wrong_size"], HIDDEN)
    assert "1024" in str(info.value)
    assert str(HIDDEN) in str(info.value)


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_embedding(tmp_path / "nope.pt", HIDDEN)
    image = tmp_path / "emb.png"
    image.write_bytes(b"\x89PNG")
    with pytest.raises(ModelError, match="unsupported embedding file type"):
        load_embedding(image, HIDDEN)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"nonsense")
    with pytest.raises(ModelError, match="not a readable safetensors"):
        load_embedding(corrupt, HIDDEN)


# --- cond / uncond --------------------------------------------------------------------------


def test_pair_pads_the_shorter_with_empty_prompt_chunks(encoder: PromptEncoder) -> None:
    long_prompt = words("cat", 100)
    cond, uncond = encoder.encode_pair(long_prompt, "dog")
    assert cond.shape == uncond.shape == (1, 154, HIDDEN)
    assert torch.equal(cond, encoder.encode(long_prompt))
    assert torch.equal(uncond[:, :77], encoder.encode("dog"))
    assert torch.equal(uncond[:, 77:], encoder.encode(""))
    cond, uncond = encoder.encode_pair("dog", words("cat", 160))
    assert cond.shape == uncond.shape == (1, 231, HIDDEN)
    assert torch.equal(cond[:, 154:], encoder.encode(""))
    cond, uncond = encoder.encode_pair(long_prompt, "dog", pad=False)
    assert (cond.shape[1], uncond.shape[1]) == (154, 77)


def test_bad_syntax_names_the_prompt_it_is_in(encoder: PromptEncoder) -> None:
    with pytest.raises(ParamsError) as info:
        encoder.encode_pair("a cat", "blurry (eyes:1.2.3)")
    assert info.value.fields == ["negative_prompt"]
    with pytest.raises(ParamsError) as info:
        encoder.encode_pair("a cat <lora:x:lots>", "blurry")
    assert info.value.fields == ["prompt"]


def test_lora_tags_in_the_negative_prompt_are_text(encoder: PromptEncoder) -> None:
    # A1111 v1.7 (processing.parse_extra_network_prompts) parses tags from the prompt only
    _, uncond = encoder.encode_pair("a cat", "blurry <lora:x:lots>")
    assert not torch.equal(uncond, encoder.encode("blurry "))
    torch.testing.assert_close(
        uncond, encoder.encode("blurry <lora:x:lots>", field="negative_prompt")
    )


# --- cache ----------------------------------------------------------------------------------


def test_cached_result_cannot_be_changed_by_the_caller(encoder: PromptEncoder) -> None:
    first = encoder.encode("a red cat")
    first.zero_()
    assert encoder.encode("a red cat").abs().sum() > 0


def test_cache_follows_weight_changes_and_lora_adapters(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel
) -> None:
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer

    model = copy.deepcopy(text_encoder)
    enc = PromptEncoder(tokenizer, model)
    base = enc.encode("a cat")
    with torch.no_grad():  # a fused LoRA rewrites base weights in place
        model.encoder.layers[0].self_attn.q_proj.weight.add_(0.05)
    fused = enc.encode("a cat")
    assert not torch.equal(base, fused)
    with torch.no_grad():
        model.encoder.layers[0].self_attn.q_proj.weight.sub_(0.05)
    torch.testing.assert_close(enc.encode("a cat"), base)

    config = LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
    config.init_lora_weights = False  # random, non-zero update
    model.add_adapter(config, adapter_name="detail")
    with_lora = enc.encode("a cat")
    assert not torch.allclose(with_lora, base)
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert len(layers) == 8
    for layer in layers:
        layer.set_scale("detail", 0.0)
    torch.testing.assert_close(enc.encode("a cat"), base, rtol=1e-5, atol=1e-6)
    for layer in layers:
        layer.set_scale("detail", 1.0)
    torch.testing.assert_close(enc.encode("a cat"), with_lora)
