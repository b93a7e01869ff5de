"""The CLIP text encoder of Stable Diffusion models (the x4 upscaler's), through `transformers`.

    clip = CLIPEncoder("stabilityai/stable-diffusion-x4-upscaler")   # or a local pipeline folder
    embeds, mask = clip.encode(["a cat"])                             # (1, 77, 1024), all-True mask

As diffusers' `encode_prompt` does it (stage3_and_editing.md §1.3): pad to 77 with the tokenizer's own
pad token and cut longer prompts (logged), run the model *without* an attention mask and take
`last_hidden_state` (which already includes the final LayerNorm). The U-Net attends to all 77 positions,
so the pad token changes the output: the x4 upscaler's tokenizer pads with "!" (id 0), because its
`special_tokens_map.json` overrides `tokenizer_config.json`; we use whatever `transformers` resolves from
the folder and never substitute our own.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from .text import _HFEncoder, check_prompts

log = logging.getLogger("openimagen")


class CLIPEncoder(_HFEncoder):
    pad_to_max_length = True

    def __init__(self, name_or_path: str | Path, *, dtype: torch.dtype | None = None,
                 device: str | torch.device = "cpu", long_prompts: str = "cut"):
        from transformers import CLIPTextModel, CLIPTokenizer

        from .io.hub import from_hub_or_dir

        if long_prompts not in ("cut", "refuse"):
            raise ValueError(f"long_prompts must be 'cut' (as diffusers) or 'refuse', got {long_prompts!r}")
        root = Path(str(name_or_path))
        enc_dir, tok_dir = (root / "text_encoder", root / "tokenizer") if (root / "text_encoder").is_dir() \
            else (root, root)
        tokenizer = from_hub_or_dir(CLIPTokenizer.from_pretrained, str(tok_dir), "CLIP tokenizer")
        kwargs = {"dtype": dtype} if dtype is not None else {}
        model = from_hub_or_dir(CLIPTextModel.from_pretrained, str(enc_dir), "CLIP text encoder", **kwargs)
        self.name_or_path = str(name_or_path)
        self.long_prompts = long_prompts
        self.dim = model.config.hidden_size
        self.max_length = min(int(tokenizer.model_max_length), int(model.config.max_position_embeddings))
        super().__init__(tokenizer, model, device)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        prompts = check_prompts(prompts)
        for p in prompts:
            n = len(self.tokenizer(p)["input_ids"])  # with the start and end tokens
            if n > self.max_length:
                msg = (f"the prompt has {n} CLIP tokens, more than the {self.max_length} the upscaler's text encoder "
                       f"reads")
                if self.long_prompts == "refuse":
                    raise ValueError(f"{msg}; shorten it: {p[:80]!r}")
                log.warning("%s; the end is cut off (as diffusers does): %r", msg, p[:80])
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt")["input_ids"].to(self.device)          # (B, 77)
        out = self.model(input_ids=ids).last_hidden_state                                # (B, 77, D), no mask
        return out.float().cpu(), torch.ones(ids.shape, dtype=torch.bool)

    def spec(self) -> dict:
        return {"kind": "clip", "name_or_path": self.name_or_path}
