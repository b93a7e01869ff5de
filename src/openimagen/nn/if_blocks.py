"""Building blocks of the DeepFloyd IF U-Net, named so diffusers' state-dict keys load unchanged.

Every attribute name below is a key fragment of a diffusers `UNet2DConditionModel` checkpoint
(`norm1`, `conv1`, `time_emb_proj`, `to_q`, `add_k_proj`, `to_out.0`, ...); see
docs/reference/deepfloyd_if.md §2 for the math these modules reproduce.

The architecture is the guided-diffusion U-Net (Dhariwal & Nichol 2021, "Diffusion Models Beat
GANs", §3) with scale-shift (FiLM) time conditioning, resnet up/down-sampling, and IF's
"added-KV" attention in which every image position attends over the text tokens and the
image positions in one softmax (text keys first).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ----------------------------------------------------------------------------- embeddings


class TimestepEmbedding(nn.Module):
    """MLP on the sinusoid: linear_1 -> GELU -> linear_2 (keys `time_embedding.*`, `class_embedding.*`)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.gelu(self.linear_1(x)))


class AttentionPooling(nn.Module):
    """One learned query (the token mean plus a position vector) attends over [query; tokens]."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"text width {dim} is not divisible by addition_embed_type_num_heads={num_heads}")
        self.num_heads = num_heads
        self.positional_embedding = nn.Parameter(torch.randn(1, dim) / dim**0.5)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:  # x (B, L, D) -> (B, D)
        B, _, D = x.shape
        cls = x.mean(dim=1, keepdim=True) + self.positional_embedding.to(x.dtype)  # (B, 1, D); all L tokens, no mask
        x = torch.cat([cls, x], dim=1)  # (B, 1+L, D)
        q = self.q_proj(cls).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # (B, h, 1, d)
        if type(self.k_proj) is nn.Linear and type(self.v_proj) is nn.Linear:  # not wrapped by an adapter
            return self._one_query(q, x)
        k = self.k_proj(x).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # (B, h, 1+L, d)
        v = self.v_proj(x).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, h, 1, d); scale 1/sqrt(d) as in IF
        return a.reshape(B, D)  # heads concatenated head-major

    def _one_query(self, q: Tensor, x: Tensor) -> Tensor:
        """The same attention without projecting every token to keys and values (2 x (1+L) x D x D multiply-adds,
        ~10 GFLOP per forward at IF's D = 4096). With one query, q . (W_k x + b_k) = (W_k^T q) . x + q . b_k, where
        q . b_k is the same for every token; and sum_j a_j (W_v x_j + b_v) = W_v (sum_j a_j x_j) + b_v because the
        weights a_j sum to 1. Equal to the projected form up to float rounding."""
        B, _, D = x.shape
        h = self.num_heads
        d = D // h
        q = q[:, :, 0]  # (B, h, d)
        qk = torch.einsum("bhd,hdD->bhD", q, self.k_proj.weight.view(h, d, D))  # (B, h, D): W_k^T q per head
        scores = torch.einsum("bhD,blD->bhl", qk, x)  # (B, h, 1+L)
        if self.k_proj.bias is not None:
            # q . b_k: one constant per head, so no effect on the softmax; added so that b_k stays in the graph
            # (multi-process training wants every trained parameter used)
            scores = scores + (q * self.k_proj.bias.view(h, d)).sum(-1, keepdim=True)
        scores = scores * d**-0.5
        a = scores.float().softmax(dim=-1).to(x.dtype)
        pooled = torch.einsum("bhl,blD->bhD", a, x)  # (B, h, D): the attention-weighted token per head
        out = torch.einsum("bhD,hdD->bhd", pooled, self.v_proj.weight.view(h, d, D))  # (B, h, d)
        if self.v_proj.bias is not None:
            out = out + self.v_proj.bias.view(h, d)
        return out.reshape(B, D)  # heads concatenated head-major


class TextTimeEmbedding(nn.Module):
    """IF's pooled-text embedding added to the time embedding (key `add_embedding.*`), §2.2."""

    def __init__(self, text_dim: int, time_dim: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(text_dim)
        self.pool = AttentionPooling(text_dim, num_heads)
        self.proj = nn.Linear(text_dim, time_dim)
        self.norm2 = nn.LayerNorm(time_dim)

    def forward(self, text: Tensor) -> Tensor:  # (B, L, Dt) -> (B, T)
        return self.norm2(self.proj(self.pool(self.norm1(text))))


# ----------------------------------------------------------------------------- resnet


class ResnetBlock(nn.Module):
    """Pre-norm residual block with FiLM time conditioning; optionally resamples by 2 (§2.3).

    `emb` arrives already passed through GELU when the config says so (`resnet_skip_time_act=False`):
    the U-Net applies it once instead of once per block.
    """

    def __init__(self, cin: int, cout: int, temb: int, *, groups: int, eps: float, out_scale: float = 1.0,
                 dropout: float = 0.0, resample: str | None = None):
        super().__init__()
        assert resample in (None, "up", "down")
        self.resample = resample
        self.out_scale = out_scale
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, 2 * cout)  # -> (scale, shift)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None
        nn.init.zeros_(self.conv2.weight)  # start as identity (guided-diffusion's zero_module); checkpoints overwrite
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, emb: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        # Without autograd (sampling) the activations, the FiLM and the residual add run in place on buffers
        # this block owns: the same values, one full-size temporary fewer per step (work-peak memory).
        inplace = not torch.is_grad_enabled()
        # conv1 sees 4x the pixels after "up", a quarter after "down"
        x = sampling_layout(x, self.conv1.weight, {"up": 4.0, "down": 0.25}.get(self.resample, 1.0))
        h = _gelu(self.norm1(x), inplace)  # (B, Cin, H, W)
        if self.resample == "up":  # nearest x2, or to `size` so odd skip sizes still line up
            x = _upsample(x, size)
            h = _upsample(h, size)
        elif self.resample == "down":
            x = F.avg_pool2d(x, 2)
            h = F.avg_pool2d(h, 2)
        h = self.conv1(h)  # (B, Cout, H', W')
        scale, shift = self.time_emb_proj(emb)[:, :, None, None].chunk(2, dim=1)  # (B, Cout, 1, 1) each
        h = self.norm2(h)
        h = h.mul_(1 + scale).add_(shift) if inplace else h * (1 + scale) + shift  # diffusers' order of operations
        h = self.conv2(self.dropout(_gelu(h, inplace)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        out = h.add_(x) if inplace else x + h
        if self.out_scale != 1.0:  # IF-II: skip-scaled residuals, written as a division like the checkpoints' config
            out = out.div_(self.out_scale)
        return out


def sampling_layout(x: Tensor, weight: Tensor, scale: float = 1.0) -> Tensor:
    """x in the memory layout whose convolution with `weight` copies less, when sampling on the CPU (no autograd);
    x as it is otherwise (training keeps NCHW: docs/decisions.md#nchw).

    oneDNN convolves blocked tensors. From NCHW it first copies the input into its blocked layout; from
    channels_last (NHWC) it reads the input as it is, but PyTorch first copies the NCHW weight to NHWC. So
    high-resolution levels (activations larger than the weights) run channels_last and the deep levels NCHW:
    the largest temporary of a forward goes, and the work-peak memory with it
    (docs/decisions.md#if-memory-layout). Values agree with NCHW to float rounding."""
    if x.device.type != "cpu" or torch.is_grad_enabled():
        return x
    if x.numel() * scale > weight.numel():  # scale: the conv's input size over x's (resampling in between)
        return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()


def _gelu(x: Tensor, inplace: bool) -> Tensor:
    return torch.ops.aten.gelu_(x) if inplace else F.gelu(x)


def _upsample(x: Tensor, size: tuple[int, int] | None) -> Tensor:
    if size is None:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    return F.interpolate(x, size=size, mode="nearest")


# ----------------------------------------------------------------------------- attention


class AddedKVAttention(nn.Module):
    """Self-attention over image positions with text keys/values prepended (§2.4).

    q from the image; K = [add_k_proj(text); to_k(image)], V likewise (text first). With
    `only_cross_attention` the image contributes no keys and `to_k`/`to_v` do not exist.
    """

    def __init__(self, dim: int, text_dim: int, head_dim: int, *, groups: int, only_cross: bool,
                 text_norm: bool):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"attention width {dim} is not divisible by attention_head_dim={head_dim}")
        self.heads = dim // head_dim
        self.group_norm = nn.GroupNorm(groups, dim, eps=1e-5)  # diffusers' Attention keeps eps 1e-5 whatever norm_eps
        self.norm_cross = nn.GroupNorm(32, text_dim, eps=1e-5) if text_norm else None  # always 32 groups
        self.to_q = nn.Linear(dim, dim)
        self.to_k = None if only_cross else nn.Linear(dim, dim)
        self.to_v = None if only_cross else nn.Linear(dim, dim)
        self.add_k_proj = nn.Linear(text_dim, dim)
        self.add_v_proj = nn.Linear(text_dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        nn.init.zeros_(self.to_out[0].weight)
        nn.init.zeros_(self.to_out[0].bias)

    def forward(self, x: Tensor, ctx: Tensor) -> Tensor:  # x (B, C, H, W), ctx (B, L, Dc)
        B, C, H, W = x.shape
        if self.norm_cross is not None:  # GroupNorm over text channels, per token
            ctx = self.norm_cross(ctx.transpose(1, 2)).transpose(1, 2)
        # (B, HW, C) made contiguous once: a view of NCHW is strided, and each projection below would copy it
        # again (three copies per call); from channels_last it is contiguous already and nothing is copied
        h = self.group_norm(x).flatten(2).transpose(1, 2).contiguous()
        q = self.to_q(h)
        k = self.add_k_proj(ctx)  # (B, L, C)
        v = self.add_v_proj(ctx)
        if self.to_k is not None:
            k = torch.cat([k, self.to_k(h)], dim=1)  # (B, L+HW, C)
            v = torch.cat([v, self.to_v(h)], dim=1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))  # (B, h, N, d)
        o = F.scaled_dot_product_attention(q, k, v)  # (B, h, HW, d)
        o = self.to_out[0](o.transpose(1, 2).flatten(2))  # (B, HW, C)
        # residual add straight from the (B, HW, C) layout: one pass, no separate transpose copy
        return x + o.transpose(1, 2).unflatten(2, (H, W))


# ----------------------------------------------------------------------------- U-Net levels


class DownBlock(nn.Module):
    """One encoder level: resnets (each followed by attention when `attn`), then a downsampling resnet.

    Keys: `resnets.i`, `attentions.i` (SimpleCrossAttnDownBlock2D only), `downsamplers.0`.
    Pushes a skip after every resnet(+attention) and after the downsampler.
    """

    def __init__(self, cin: int, cout: int, n: int, *, attn: bool, downsample: bool, temb: int,
                 groups: int, eps: float, out_scale: float, dropout: float, text_dim: int, head_dim: int,
                 only_cross: bool, text_norm: bool):
        super().__init__()
        res = dict(temb=temb, groups=groups, eps=eps, out_scale=out_scale, dropout=dropout)
        self.resnets = nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout, **res) for i in range(n)])
        self.attentions = nn.ModuleList(
            [AddedKVAttention(cout, text_dim, head_dim, groups=groups, only_cross=only_cross, text_norm=text_norm)
             for _ in range(n)]) if attn else None
        self.downsamplers = nn.ModuleList([ResnetBlock(cout, cout, resample="down", **res)]) if downsample else None

    def forward(self, h: Tensor, emb: Tensor, ctx: Tensor) -> tuple[Tensor, list[Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            h = resnet(h, emb)
            if self.attentions is not None:
                h = self.attentions[i](h, ctx)
            skips.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h, emb)
            skips.append(h)
        return h, skips


class MidBlock(nn.Module):
    """resnet -> attention -> resnet at the lowest resolution (UNetMidBlock2DSimpleCrossAttn)."""

    def __init__(self, c: int, *, temb: int, groups: int, eps: float, out_scale: float, dropout: float,
                 text_dim: int, head_dim: int, only_cross: bool, text_norm: bool):
        super().__init__()
        res = dict(temb=temb, groups=groups, eps=eps, out_scale=out_scale, dropout=dropout)
        self.resnets = nn.ModuleList([ResnetBlock(c, c, **res), ResnetBlock(c, c, **res)])
        self.attentions = nn.ModuleList(
            [AddedKVAttention(c, text_dim, head_dim, groups=groups, only_cross=only_cross, text_norm=text_norm)])

    def forward(self, h: Tensor, emb: Tensor, ctx: Tensor) -> Tensor:
        h = self.resnets[0](h, emb)
        h = self.attentions[0](h, ctx)
        return self.resnets[1](h, emb)


class UpBlock(nn.Module):
    """One decoder level: n resnets over cat([h, skip]) (+attention), then an upsampling resnet.

    `skip_channels[i]` is the width of the skip consumed by resnet i (popped from the end).
    Keys: `resnets.i`, `attentions.i` (SimpleCrossAttnUpBlock2D only), `upsamplers.0`.
    """

    def __init__(self, cin: int, cout: int, skip_channels: list[int], *, attn: bool, upsample: bool, temb: int,
                 groups: int, eps: float, out_scale: float, dropout: float, text_dim: int, head_dim: int,
                 only_cross: bool, text_norm: bool):
        super().__init__()
        res = dict(temb=temb, groups=groups, eps=eps, out_scale=out_scale, dropout=dropout)
        self.resnets = nn.ModuleList(
            [ResnetBlock((cin if i == 0 else cout) + s, cout, **res) for i, s in enumerate(skip_channels)])
        self.attentions = nn.ModuleList(
            [AddedKVAttention(cout, text_dim, head_dim, groups=groups, only_cross=only_cross, text_norm=text_norm)
             for _ in skip_channels]) if attn else None
        self.upsamplers = nn.ModuleList([ResnetBlock(cout, cout, resample="up", **res)]) if upsample else None

    def forward(self, h: Tensor, skips: list[Tensor], emb: Tensor, ctx: Tensor,
                size: tuple[int, int] | None = None) -> Tensor:
        """`skips` is consumed: each skip is popped as it is used, so its memory is freed right away."""
        for i, resnet in enumerate(self.resnets):
            h = torch.cat([h, skips.pop()], dim=1)  # (B, C + Cskip, H, W); rebinding h frees the old one now
            h = resnet(h, emb)  # -> (B, Cout, H, W)
            if self.attentions is not None:
                h = self.attentions[i](h, ctx)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h, emb, size)
        return h
