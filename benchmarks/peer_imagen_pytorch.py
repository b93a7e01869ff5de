"""The imagen-pytorch side of `bench_imagen_pytorch.py`; runs in the peer's own venv (torch 2.14).

    .peers/imagen-pytorch/bin/python-offline benchmarks/peer_imagen_pytorch.py '<setup json>'

The driver starts this once and talks to it line by line (one JSON object per line), so that the two
systems take turns on the CPU (ABAB) inside one command. Setup keys: threads, batch, resolution,
text_len, text_dim, target_params, seed, attn_levels (ours, mirrored so the layouts match).
Commands on stdin, one reply each on stdout:
    {"cmd": "train", "precision": "fp32"|"bf16", "warmup": w, "steps": n}  -> {"times": [s, ...]}
    {"cmd": "sample", "timesteps": K, "images": 4, "cond_scale": 3.0}       -> {"seconds": s}
    {"cmd": "flops"}                                                        -> {"train_step_flops": f}
    {"cmd": "quit"}
Everything imagen-pytorch prints goes to stderr; stdout carries only replies.
"""
from __future__ import annotations

import json
import os
import sys
import time

# Keep the reply channel clean: imagen-pytorch print()s advice (e.g. "dim should be >= 128").
_reply = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr

import torch  # noqa: E402


def reply(obj: dict) -> None:
    _reply.write(json.dumps(obj) + "\n")


# ------------------------------------------------------------------------------------------------
# a U-Net of the same size and layout as ours


def unet_kwargs(setup: dict, dim: int, mults: tuple, nrb: int) -> dict:
    attn = tuple(setup["attn_levels"])[: len(mults)]
    attn = attn + (attn[-1],) * (len(mults) - len(attn))
    # layer_attns: self-attention (+ text) blocks; layer_cross_attns: text cross-attention in the
    # first ResnetBlock of a level. Both at the levels where ours attends (ours does both in one).
    # max_text_len = the text length used: the Unet pads every prompt to it, so the peer's default
    # of 256 would make it attend over 240 padding tokens that ours never sees.
    return dict(dim=dim, dim_mults=mults, num_resnet_blocks=nrb, layer_attns=attn, layer_cross_attns=attn,
                text_embed_dim=setup["text_dim"], max_text_len=setup["text_len"])


def count_params(kwargs: dict) -> int:
    from imagen_pytorch import Unet

    with torch.device("meta"):  # sizes only, no init cost
        return sum(p.numel() for p in Unet(**kwargs).parameters())


def search(setup: dict) -> tuple[dict, list]:
    """The grid point (dim, dim_mults, num_resnet_blocks) whose parameter count is closest to ours.
    num_resnet_blocks=1 means two ResnetBlocks per level in imagen-pytorch (an init block plus one)."""
    target, rows = setup["target_params"], []
    n_levels = len(setup["attn_levels"])
    for dim in (32, 40, 48, 56, 64):
        for mults in ((1, 2, 2), (1, 2, 3), (1, 2, 4)):
            if len(mults) != n_levels:
                continue
            for nrb in (1, 2, 3):
                kw = unet_kwargs(setup, dim, mults, nrb)
                rows.append({"dim": dim, "dim_mults": list(mults), "num_resnet_blocks": nrb,
                             "params": count_params(kw)})
    best = min(rows, key=lambda r: abs(r["params"] - target))
    return unet_kwargs(setup, best["dim"], tuple(best["dim_mults"]), best["num_resnet_blocks"]), rows


def unzero_(module: torch.nn.Module, seed: int) -> None:
    """Give all-zero weights small random values: random weights must not make any work trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.numel() and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


# ------------------------------------------------------------------------------------------------
# the work


class Peer:
    def __init__(self, setup: dict):
        from imagen_pytorch import Imagen, Unet

        self.setup = setup
        torch.manual_seed(setup["seed"])
        self.kwargs, self.grid = search(setup)
        self.unet = Unet(**self.kwargs)
        unzero_(self.unet, setup["seed"])
        # Imagen's defaults: continuous cosine schedule, 1000 sampling steps, eps objective, min-SNR
        # weighting, cond_drop_prob 0.1, dynamic thresholding. It may rebuild the unet it is given
        # (from captured locals); the optimiser must see the unet it actually trains.
        self.imagen = Imagen(unets=(self.unet,), image_sizes=(setup["resolution"],), cond_drop_prob=0.1,
                             text_embed_dim=setup["text_dim"])
        self.unet = self.imagen.unets[0]
        unzero_(self.unet, setup["seed"])
        self.imagen.train()
        # ImagenTrainer's defaults: Adam(lr=1e-4, eps=1e-8, betas=(0.9, 0.99)), no gradient clipping.
        # (EMA is left out on both sides of the benchmark.)
        self.opt = torch.optim.Adam(self.unet.parameters(), lr=1e-4, eps=1e-8, betas=(0.9, 0.99))
        g = torch.Generator().manual_seed(setup["seed"] + 1)
        B, L, D, R = setup["batch"], setup["text_len"], setup["text_dim"], setup["resolution"]
        self.images = torch.rand(B, 3, R, R, generator=g)  # [0, 1]: Imagen normalises to [-1, 1] itself
        self.embeds = torch.randn(B, L, D, generator=g)
        lengths = torch.randint(L // 2, L + 1, (B,), generator=g)
        self.mask = torch.arange(L)[None, :] < lengths[:, None]  # (B, L) True = real token
        self.embeds = self.embeds * self.mask[:, :, None]  # imagen-pytorch's contract: zero-padded

    def info(self) -> dict:
        import imagen_pytorch

        params = sum(p.numel() for p in self.unet.parameters())
        return {"torch": torch.__version__, "imagen_pytorch": getattr(imagen_pytorch, "__version__", None)
                or _dist_version("imagen-pytorch"), "threads": torch.get_num_threads(), "params": params,
                "unet_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in self.kwargs.items()},
                "grid": self.grid}

    def train_step(self, precision: str) -> None:
        # What ImagenTrainer does per step: forward under the accelerator's autocast, backward, update.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = self.imagen(self.images, text_embeds=self.embeds, text_masks=self.mask, unet_number=1)
            loss.backward()
        self.opt.step()
        self.opt.zero_grad()

    def train(self, precision: str, warmup: int, steps: int) -> dict:
        for _ in range(warmup):
            self.train_step(precision)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            self.train_step(precision)
            times.append(time.perf_counter() - t0)
        return {"times": times}

    def flops(self) -> dict:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self.train_step("fp32")
        return {"train_step_flops": counter.get_total_flops()}

    @torch.no_grad()
    def sample(self, timesteps: int, images: int, cond_scale: float) -> dict:
        from imagen_pytorch import Imagen

        imagen = self.imagen
        if timesteps != 1000:  # same unet, shorter loop: the per-step work is identical
            imagen = Imagen(unets=(self.unet,), image_sizes=(self.setup["resolution"],), cond_drop_prob=0.1,
                            text_embed_dim=self.setup["text_dim"], timesteps=timesteps)
            unzero_(imagen.unets[0], self.setup["seed"])
            imagen.unets[0].load_state_dict(self.unet.state_dict())
        imagen.eval()
        torch.manual_seed(0)
        t0 = time.perf_counter()
        out = imagen.sample(text_embeds=self.embeds[:images], text_masks=self.mask[:images], cond_scale=cond_scale,
                            use_tqdm=False)
        seconds = time.perf_counter() - t0
        self.imagen.train()
        assert out.shape == (images, 3, self.setup["resolution"], self.setup["resolution"])
        return {"seconds": seconds, "timesteps": timesteps, "finite": bool(torch.isfinite(out).all())}


def _dist_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - metadata is optional
        return None


def main() -> None:
    setup = json.loads(sys.argv[1])
    torch.set_num_threads(setup["threads"])
    peer = Peer(setup)
    reply({"ready": True, **peer.info()})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        if cmd["cmd"] == "train":
            reply(peer.train(cmd["precision"], cmd["warmup"], cmd["steps"]))
        elif cmd["cmd"] == "sample":
            reply(peer.sample(cmd["timesteps"], cmd["images"], cmd["cond_scale"]))
        elif cmd["cmd"] == "flops":
            reply(peer.flops())
        else:
            reply({"error": f"unknown command {cmd['cmd']!r}"})


if __name__ == "__main__":
    main()
