"""Spelling: the prompt's quoted word, letter by letter, in front of the text encoder's tokens.

Word-piece encoders cannot spell: MiniLM (or T5) turns "ZAP" into one or two sub-word pieces whose
embeddings say little about the letters, so a model conditioned on them can only draw words it saw
(Liu et al. 2022, "Character-Aware Models Improve Visual Text Rendering": character-aware text
encoders spell, word-piece ones do not). `SpelledEncoder` wraps any encoder and puts `max_chars` tokens
before its output, token k a fixed one-hot code of letter k of the prompt's quoted word:

    embeds (B, K + L, D) = [letters (B, K, D) ; base embeds (B, L, D)]
    mask   (B, K + L)    = [letter k exists ; base mask]
    letter code: channel 0 is unused (so an all-zero token is no letter), channels 1..26 = A..Z

Nothing is learned here, so the embedding cache stores it like any encoder's output. A U-Net reads the
letter tokens through its spelling extra (nn/spelling.py), which splits them off before its text path;
a U-Net without that extra sees them as ordinary text tokens (the SR stages of the shapes-128 recipe do,
and may learn to use them). Why a fixed code and a U-Net extra
rather than a learned character encoder in the text path: docs/decisions.md#character-encoding.

The word is, in order: text in double quotes; else the word after says / saying / reading / reads /
word / text; else a standalone all-capitals token of two or more letters. Only A-Z are spelled (others
dropped), up to max_chars letters.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import Tensor

from .text import SpelledEncoderConfig, check_prompts, text_encoder_config

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
CODE_WIDTH = 1 + len(LETTERS)   # channel 0 unused, then A..Z
_QUOTED = re.compile(r"[\"\u201c]([^\"\u201d]+)[\"\u201d]")
_AFTER_KEYWORD = re.compile(r"\b(?:says|saying|reading|reads|word|text)\s+([A-Za-z]+)\b")
_CAPITALS = re.compile(r"\b([A-Z]{2,})\b")


def quoted_word(prompt: str) -> str:
    """The word a prompt asks to be written, upper-cased, letters only ("" if none)."""
    m = _QUOTED.search(prompt) or _AFTER_KEYWORD.search(prompt) or _CAPITALS.search(prompt)
    return "".join(ch for ch in (m.group(1).upper() if m else "") if ch in LETTERS)


def letter_tokens(prompts: Sequence[str], max_chars: int, dim: int) -> tuple[Tensor, Tensor]:
    """(tokens (B, max_chars, dim), mask (B, max_chars)): the one-hot letters of each prompt's word."""
    if dim < CODE_WIDTH:
        raise ValueError(f"spelling needs text embeddings at least {CODE_WIDTH} wide, got {dim}")
    tokens = torch.zeros(len(prompts), max_chars, dim)
    mask = torch.zeros(len(prompts), max_chars, dtype=torch.bool)
    for i, p in enumerate(prompts):
        for k, ch in enumerate(quoted_word(p)[:max_chars]):
            tokens[i, k, 1 + LETTERS.index(ch)] = 1.0
            mask[i, k] = True
    return tokens, mask


class SpelledEncoder:
    """`base`'s (embeds, mask) after `max_chars` letter tokens of the prompt's quoted word."""

    def __init__(self, base, max_chars: int = 8):
        self.base = base
        self.config = SpelledEncoderConfig(text_encoder_config(base.spec()), max_chars)
        self.max_chars = max_chars
        self.dim = base.dim
        self.max_length = max_chars + base.max_length
        if self.dim < CODE_WIDTH:
            raise ValueError(f"spelling needs an encoder at least {CODE_WIDTH} wide; {base.spec()} is {self.dim}")

    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        prompts = check_prompts(prompts)
        embeds, mask = self.base.encode(prompts)
        letters, letter_mask = letter_tokens(prompts, self.max_chars, self.dim)
        return (torch.cat([letters.to(embeds), embeds], dim=1),            # (B, K + L, D)
                torch.cat([letter_mask.to(mask.device), mask.bool()], dim=1))  # (B, K + L)

    def to(self, device) -> "SpelledEncoder":
        if hasattr(self.base, "to"):
            self.base.to(device)
        return self

    def spec(self) -> dict:
        from .config import to_dict

        return to_dict(self.config)
