"""Turn A1111-syntax prompts into CLIP conditioning exactly as A1111 does for SD 1.5.

diffusers' own ``encode_prompt`` truncates at 77 tokens and knows no emphasis, so Clarity's
prompts (``(… :2)`` weights, a textual-inversion negative, sometimes more than 75 tokens) would
condition the UNet differently from the reference. :class:`PromptEncoder` reproduces A1111's
conditioning for CLIP skip 1 (Clarity's setting):

1. :func:`pipeline.diffusion.prompt_syntax.parse_prompt` gives weighted fragments; each is
   tokenised on its own, without BOS/EOS.
2. Tokens fill chunks of 75. ``BREAK`` starts a new chunk; a chunk that overflows is cut after its
   last comma when that comma lies within ``comma_backtrack`` (A1111: 20) tokens of the end.
   Textual-inversion names are found among the tokens (so case-insensitively, as whole tokens)
   and replaced by their vectors, which never straddle two chunks.
3. Each chunk becomes BOS + 75 + EOS, padded with EOS (SD 1.5 pads with EOS), and goes through
   the text encoder; embedding vectors replace the token embeddings of their slots during that
   call only, so nothing in the tokenizer or the model changes.
4. ``z *= weights``, then ``z *= mean(z_before) / mean(z_after)`` per chunk, and the chunks are
   concatenated: ``[1, 77·k, hidden]``.

Encodings are cached by prompt text; the cache notices LoRA adapters being added, re-weighted,
merged or fused into the text encoder, so a stale encoding is never returned.
"""

from __future__ import annotations

import pickle
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from pipeline.diffusion.prompt_syntax import is_break, parse_prompt
from pipeline.errors import FieldError, ModelError, ParamsError

if TYPE_CHECKING:
    from transformers import CLIPTextModel, PreTrainedTokenizerBase

__all__ = ["EMBEDDING_SUFFIXES", "PromptChunk", "PromptEncoder", "load_embedding"]

EMBEDDING_SUFFIXES: tuple[str, ...] = (".pt", ".safetensors", ".bin", ".pth", ".ckpt")
_CACHE_SIZE = 64
_PLACEHOLDER_ID = 0  # token id under an embedding vector; its own embedding is replaced


@dataclass
class PromptChunk:
    """One 77-token window as fed to CLIP.

    ``vectors`` maps a position in the window to ``(embedding name, row)`` for
    textual-inversion slots; ``ids`` holds a placeholder there.
    """

    ids: list[int]
    weights: list[float]
    vectors: dict[int, tuple[str, int]] = field(default_factory=dict)


# --- textual-inversion files ----------------------------------------------------------------


def load_embedding(path: Path, hidden_size: int) -> torch.Tensor:
    """The ``[n, hidden_size]`` float32 vectors of a textual-inversion file, on the CPU.

    Reads A1111 ``.pt`` (``string_to_param``), A1111 ``.safetensors`` (``emb_params``) and the
    diffusers format (``{token: tensor}``). Pickles are opened with ``weights_only=True``, so a
    file can never run code.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: the embedding file does not exist")
    suffix = path.suffix.lower()
    if suffix not in EMBEDDING_SUFFIXES:
        raise ModelError(
            f"{path}: unsupported embedding file type (use {', '.join(EMBEDDING_SUFFIXES)}; "
            "embeddings stored inside images are not supported)"
        )
    data = _read_safetensors(path) if suffix == ".safetensors" else _read_pickle(path)
    vectors = _vectors_of(data, path)
    if vectors.ndim == 1:
        vectors = vectors.unsqueeze(0)
    if vectors.ndim != 2 or not vectors.is_floating_point() or vectors.shape[0] == 0:
        raise ModelError(
            f"{path}: not a textual-inversion embedding (tensor shape {list(vectors.shape)})"
        )
    if vectors.shape[1] != hidden_size:
        raise ModelError(
            f"{path}: the embedding's vectors have size {vectors.shape[1]}, but this text "
            f"encoder needs size {hidden_size}; it was made for another model family "
            "(SD 1.5 uses 768, SD 2 uses 1024); use an SD 1.5 embedding"
        )
    return vectors.detach().to("cpu", torch.float32).contiguous()


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise ModelError(f"{path}: not a readable safetensors file ({exc})") from exc


def _read_pickle(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
            raise ModelError(
                f"{path}: the embedding file contains Python objects beyond plain tensors and "
                "is refused because loading it could run code; convert it to .safetensors "
                "with a tool you trust"
            ) from exc
        raise ModelError(f"{path}: not a valid PyTorch embedding file (corrupt?)") from exc
    except Exception as exc:
        raise ModelError(f"{path}: not a readable PyTorch embedding file ({exc})") from exc


def _vectors_of(data: object, path: Path) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        return data
    if not isinstance(data, Mapping):
        raise ModelError(f"{path}: not a textual-inversion embedding")
    if "string_to_param" in data:  # A1111 .pt
        params = data["string_to_param"]
        if not isinstance(params, Mapping) or len(params) != 1:
            raise ModelError(f"{path}: an A1111 embedding must hold exactly one token")
        data = params
    elif "emb_params" in data:  # A1111 .safetensors
        data = {"emb_params": data["emb_params"]}
    elif "clip_l" in data or "clip_g" in data:
        raise ModelError(f"{path}: this is an SDXL embedding; use an SD 1.5 embedding")
    tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
    if len(data) != 1 or len(tensors) != 1:
        raise ModelError(
            f"{path}: not a textual-inversion embedding (expected one tensor, found keys "
            f"{sorted(map(str, data))[:5]})"
        )
    return tensors[0]


# --- the encoder ----------------------------------------------------------------------------


class PromptEncoder:
    """A1111-faithful prompt conditioning for one tokenizer + CLIP text encoder pair.

    ``embeddings`` maps textual-inversion names (as written in prompts; matched
    case-insensitively) to files; a file is read only when its name first appears in a prompt.
    ``clip_skip`` 1 uses the last layer (Clarity); n > 1 uses the n-th layer from the end followed
    by the final layer norm, as A1111 does.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        text_encoder: CLIPTextModel,
        embeddings: Mapping[str, Path] | None = None,
        *,
        clip_skip: int = 1,
        comma_backtrack: int = 20,
    ) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        config = text_encoder.config
        self.hidden_size = int(config.hidden_size)
        self.chunk_length = int(config.max_position_embeddings) - 2
        layers = int(config.num_hidden_layers)
        if not 1 <= clip_skip <= layers:
            raise ParamsError(FieldError("clip_skip", clip_skip, f"an integer from 1 to {layers}"))
        self.clip_skip = clip_skip
        self.comma_backtrack = comma_backtrack
        self.bos_id = _special_id(tokenizer, "bos")
        self.eos_id = _special_id(tokenizer, "eos")
        self.comma_id = tokenizer.get_vocab().get(",</w>")
        self._files = {name: Path(path) for name, path in dict(embeddings or {}).items()}
        self._by_first_id = self._index_embedding_names()
        self._vectors: dict[str, torch.Tensor] = {}
        self._used: list[str] = []
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_state: tuple | None = None
        self._lock = threading.RLock()

    @property
    def used_embeddings(self) -> list[str]:
        """Names (keys of ``embeddings``) of the embeddings prompts have used so far."""
        return list(self._used)

    def clear_cache(self) -> None:
        """Forget cached encodings (they are also dropped when the text encoder changes)."""
        with self._lock:
            self._cache.clear()

    # -- public encoding API --

    def encode(self, prompt: str, *, field: str = "prompt") -> torch.Tensor:
        """``[1, 77·k, hidden]`` conditioning for ``prompt``, in the text encoder's dtype.

        ``field`` names the parameter in a :class:`~pipeline.errors.ParamsError` for bad syntax.
        """
        with self._lock:
            state = self._state_key()
            if state != self._cache_state:
                self._cache.clear()
                self._cache_state = state
            cached = self._cache.get(prompt)
            if cached is None:
                cached = self._encode_chunks(self.chunks(prompt, field=field))
                self._cache[prompt] = cached
                if len(self._cache) > _CACHE_SIZE:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(prompt)
            return cached.clone()

    def encode_pair(
        self, prompt: str, negative: str, *, pad: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cond, uncond)``; with ``pad`` the shorter is extended with empty-prompt chunks.

        A1111 pads this way when ``pad_cond_uncond`` is on, so cond and uncond can share one UNet
        batch; with ``pad=False`` lengths may differ (A1111's default then runs them apart).
        """
        cond = self.encode(prompt)
        uncond = self.encode(negative, field="negative_prompt")
        if pad and cond.shape[1] != uncond.shape[1]:
            empty = self.encode("")
            missing = abs(cond.shape[1] - uncond.shape[1]) // empty.shape[1]
            filler = empty.repeat(1, missing, 1)
            if cond.shape[1] < uncond.shape[1]:
                cond = torch.cat([cond, filler], dim=1)
            else:
                uncond = torch.cat([uncond, filler], dim=1)
        return cond, uncond

    def chunks(self, prompt: str, *, field: str = "prompt") -> list[PromptChunk]:
        """How ``prompt`` is laid out into 77-token windows (ids, weights, embedding slots)."""
        fragments = parse_prompt(prompt, field=field).fragments
        texts = [text for text, _ in fragments]
        ids = self._tokenize(texts)
        builder = _ChunkBuilder(self)
        for fragment, tokens in zip(fragments, ids, strict=True):
            if is_break(fragment):
                builder.close()
            else:
                builder.add_fragment(list(tokens), fragment[1])
        return builder.finish()

    # -- internals --

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids without BOS/EOS; long texts are fine (chunking happens later, no warning)."""
        out = self.tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)
        return out["input_ids"]

    def _index_embedding_names(self) -> dict[int, list[tuple[tuple[int, ...], str]]]:
        index: dict[int, list[tuple[tuple[int, ...], str]]] = {}
        if not self._files:
            return index
        names = list(self._files)
        ids = self._tokenize(names)
        for name, tokens in zip(names, ids, strict=True):
            if tokens:
                index.setdefault(tokens[0], []).append((tuple(tokens), name))
        for entries in index.values():
            entries.sort(key=lambda entry: -len(entry[0]))  # longest name wins, as in A1111
        return index

    def _match_embedding(self, tokens: Sequence[int], pos: int) -> tuple[str, int] | None:
        """``(name, tokens consumed)`` of the embedding whose name starts at ``pos``."""
        for name_ids, name in self._by_first_id.get(tokens[pos], ()):
            if tuple(tokens[pos : pos + len(name_ids)]) == name_ids:
                return name, len(name_ids)
        return None

    def _embedding(self, name: str) -> torch.Tensor:
        vectors = self._vectors.get(name)
        if vectors is None:
            vectors = load_embedding(self._files[name], self.hidden_size)
            if vectors.shape[0] > self.chunk_length:
                raise ModelError(
                    f"{self._files[name]}: the embedding has {vectors.shape[0]} vectors; at most "
                    f"{self.chunk_length} fit in a prompt"
                )
            self._vectors[name] = vectors
        if name not in self._used:
            self._used.append(name)
        return vectors

    def _encode_chunks(self, chunks: list[PromptChunk]) -> torch.Tensor:
        weight = self._reference_weight()
        ids = torch.tensor([c.ids for c in chunks], dtype=torch.long, device=weight.device)
        slots = [
            (row, pos, self._embedding(name)[index])
            for row, chunk in enumerate(chunks)
            for pos, (name, index) in chunk.vectors.items()
        ]
        with torch.no_grad(), self._injected(slots):
            out = self.text_encoder(input_ids=ids, output_hidden_states=self.clip_skip > 1)
            if self.clip_skip == 1:
                z = out.last_hidden_state
            else:
                z = self._final_layer_norm()(out.hidden_states[-self.clip_skip])
            z = z.float()
            weights = torch.tensor([c.weights for c in chunks], device=z.device).unsqueeze(-1)
            before = z.mean(dim=(1, 2), keepdim=True)
            z = z * weights
            after = z.mean(dim=(1, 2), keepdim=True)
            z = z * torch.where(after == 0, torch.ones_like(after), before / after)
        return z.reshape(1, -1, z.shape[-1]).to(weight.dtype)

    @contextmanager
    def _injected(self, slots: list[tuple[int, int, torch.Tensor]]) -> Iterator[None]:
        """Swap token embeddings for embedding vectors during one forward pass only."""
        if not slots:
            yield
            return
        rows = torch.tensor([s[0] for s in slots])
        cols = torch.tensor([s[1] for s in slots])
        values = torch.stack([s[2] for s in slots])

        def replace(_module: nn.Module, _args: object, output: torch.Tensor) -> torch.Tensor:
            output = output.clone()
            dev = output.device
            output[rows.to(dev), cols.to(dev)] = values.to(dev, output.dtype)
            return output

        handle = self.text_encoder.get_input_embeddings().register_forward_hook(replace)
        try:
            yield
        finally:
            handle.remove()

    def _final_layer_norm(self) -> nn.Module:
        model = self.text_encoder
        norm = getattr(model, "final_layer_norm", None)
        if norm is None:
            norm = model.get_submodule("text_model.final_layer_norm")  # transformers 4.x nesting
        return norm

    def _reference_weight(self) -> torch.Tensor:
        weight = self.text_encoder.get_input_embeddings().weight
        assert isinstance(weight, torch.Tensor)  # an nn.Embedding's (peft's wrapper keeps it)
        return weight

    def _state_key(self) -> tuple:
        """What the encodings depend on besides the prompt: device, dtype, adapters, weights.

        Adapter settings are read from peft's LoRA layers; fusing rewrites base weights in
        place, so a few elements of every linear weight are sampled too (one small transfer).
        """
        reference = self._reference_weight()
        adapters = []
        samples = []
        for name, module in self.text_encoder.named_modules():
            scaling = getattr(module, "scaling", None)
            if isinstance(scaling, dict):
                adapters.append(
                    (
                        name,
                        tuple(sorted(scaling.items())),
                        tuple(getattr(module, "active_adapters", ()) or ()),
                        tuple(getattr(module, "merged_adapters", ()) or ()),
                        bool(getattr(module, "disable_adapters", False)),
                    )
                )
            elif isinstance(module, nn.Linear) and module.weight.device.type != "meta":
                samples.append(module.weight.detach().reshape(-1)[:16].float().sum())
        probe = tuple(torch.stack(samples).tolist()) if samples else ()
        return (str(reference.device), str(reference.dtype), tuple(adapters), probe)


class _ChunkBuilder:
    """Fills 75-token chunks the A1111 way (comma backtracking, embeddings kept whole)."""

    def __init__(self, encoder: PromptEncoder) -> None:
        self.enc = encoder
        self.size = encoder.chunk_length
        self.done: list[PromptChunk] = []
        self.items: list[int | tuple[str, int]] = []
        self.weights: list[float] = []
        self.last_comma = -1

    def add_fragment(self, tokens: list[int], weight: float) -> None:
        pos = 0
        while pos < len(tokens):
            token = tokens[pos]
            if token == self.enc.comma_id:
                self.last_comma = len(self.items)
            elif self._should_backtrack():
                self._move_tail_after(self.last_comma + 1)
            if len(self.items) == self.size:
                self.close()
            match = self.enc._match_embedding(tokens, pos)
            if match is None:
                self.items.append(token)
                self.weights.append(weight)
                pos += 1
                continue
            name, consumed = match
            count = self.enc._embedding(name).shape[0]
            if len(self.items) + count > self.size:
                self.close()
            self.items.extend((name, row) for row in range(count))
            self.weights.extend([weight] * count)
            pos += consumed

    def _should_backtrack(self) -> bool:
        backtrack = self.enc.comma_backtrack
        full = len(self.items) == self.size
        near = self.last_comma != -1 and len(self.items) - self.last_comma <= backtrack
        return backtrack > 0 and full and near

    def _move_tail_after(self, cut: int) -> None:
        tail_items, tail_weights = self.items[cut:], self.weights[cut:]
        del self.items[cut:], self.weights[cut:]
        self.close()
        self.items, self.weights = tail_items, tail_weights

    def close(self) -> None:
        """End the current chunk: pad with EOS to 75, wrap in BOS … EOS."""
        pad = self.size - len(self.items)
        items = [self.enc.bos_id, *self.items, *[self.enc.eos_id] * pad, self.enc.eos_id]
        weights = [1.0, *self.weights, *[1.0] * pad, 1.0]
        chunk = PromptChunk(ids=[], weights=weights)
        for pos, item in enumerate(items):
            if isinstance(item, tuple):
                chunk.vectors[pos] = item
                chunk.ids.append(_PLACEHOLDER_ID)
            else:
                chunk.ids.append(item)
        self.done.append(chunk)
        self.items, self.weights, self.last_comma = [], [], -1

    def finish(self) -> list[PromptChunk]:
        if self.items or not self.done:
            self.close()
        return self.done


def _special_id(tokenizer: object, kind: str) -> int:
    value = getattr(tokenizer, f"{kind}_token_id", None)
    if value is None:
        raise ModelError(f"the tokenizer has no {kind.upper()} token; it is not a CLIP tokenizer")
    return int(value)
