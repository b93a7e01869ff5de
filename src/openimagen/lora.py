"""LoRA adapters on a stage's U-Net, through `peft`: add, save, load (ours and diffusers' IF LoRAs), scale, merge.

LoRA (Hu et al. 2021): a frozen weight W gains a low-rank update, W x + (alpha / r) B A x, with A (r x in)
and B (out x r, zero at initialisation, so a fresh adapter changes nothing). peft owns the layers; this
file only chooses where they go, checks the request, and reads and writes the files.

On disk, beside the stage (`adapters/stage_K/` of a run, or any folder):
    adapter_model.safetensors   keys "unet.<module path>.lora_A.weight" / ".lora_B.weight" and the
                                safetensors metadata "lora_adapter_metadata" = {"unet.r", "unet.lora_alpha",
                                "unet.target_modules"}: the format diffusers' `load_lora_weights` reads
                                (IF U-Nets have diffusers' module names, so an IF adapter is a diffusers LoRA)
    adapter_config.json         peft's LoraConfig fields + an "openimagen" block naming the stage it was
                                trained on (index, resolution, a fingerprint of the U-Net config)
Loading also takes diffusers' `pytorch_lora_weights.safetensors` (its PEFT integration's output, and
the older attention-processor key names of its first IF DreamBooth-LoRA script).
"""
from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import ConfigError, to_dict

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"  # diffusers' safetensors metadata entry
PREFIX = "unet."

# What "attention projections" are in each U-Net kind: the leaf module names peft matches by suffix.
ATTENTION = {
    "efficient": ("to_q", "to_kv", "to_qkv", "to_out", "to_kv_text", "out_self", "out_cross"),
    "if": ("to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj"),  # diffusers' IF LoRA targets
}
CONVS = ("conv1", "conv2")  # the residual blocks' convolutions (both kinds)


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 4
    alpha: float | None = None          # None: alpha = rank (scale 1)
    dropout: float = 0.0
    targets: tuple[str, ...] | None = None  # module names (suffix match); None: the attention projections
    convs: bool = False                 # also the residual blocks' convolutions

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"lora.rank={self.rank!r} must be a positive integer")
        if self.alpha is not None and not self.alpha > 0:
            raise ConfigError(f"lora.alpha={self.alpha!r} must be positive (or null for alpha = rank)")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout={self.dropout!r} must be in [0, 1)")


# ----------------------------------------------------------------------------------------------
# where adapters go


def _layers(unet: nn.Module) -> dict[str, nn.Module]:
    """{path: Linear / Conv2d} of the U-Net itself; a layer that already holds adapters counts as its base."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = {}
    for n, m in unet.named_modules():
        if ".lora_" in n or n.endswith(".base_layer") or ".base_layer." in n:
            continue  # peft's own pieces
        m = m.get_base_layer() if isinstance(m, BaseTunerLayer) else m
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            out[n] = m
    return out


def _matches(path: str, target: str) -> bool:
    return path == target or path.endswith("." + target)


def _leaf_name(path: str) -> str:
    """"down.0.attn.to_q" -> "to_q"; "attn.to_out.0" -> "to_out.0" (a target name as users write it)."""
    parts = path.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]


def target_paths(unet: nn.Module, kind: str, cfg: LoraConfig) -> list[str]:
    """The module paths that get an adapter; every target must match something and fit the rank."""
    targets = tuple(cfg.targets) if cfg.targets is not None else ATTENTION[kind]
    if cfg.convs:
        targets += CONVS
    layers = _layers(unet)
    names = sorted({_leaf_name(p) for p in layers})
    found = []
    for t in targets:
        hit = [p for p in layers if _matches(p, t)]
        if not hit and cfg.targets is not None:  # the defaults name every variant's layers; a user's must all exist
            raise ValueError(f"LoRA target {t!r} matches no Linear or Conv2d layer of this {kind} U-Net; "
                             f"its layers are named {names}")
        found += hit
    if not found:
        raise ValueError(f"no layer of this {kind} U-Net is named {list(targets)}; its layers are named {names}")
    for p in found:
        m = layers[p]
        width = min(m.in_features, m.out_features) if isinstance(m, nn.Linear) else min(m.in_channels, m.out_channels)
        if cfg.rank > width:
            raise ValueError(f"LoRA rank {cfg.rank} is above the width {width} of layer {p!r}; "
                             f"choose rank <= {width} or leave that layer out of the targets")
    return sorted(set(found))


def add_lora(unet: nn.Module, kind: str, cfg: LoraConfig, name: str = "default") -> list[str]:
    """Put a fresh adapter named `name` on `unet` (in place); only its weights stay trainable.
    Returns the adapted module paths. The adapter's A matrices are drawn from torch's global RNG."""
    import peft

    paths = target_paths(unet, kind, cfg)
    pc = peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha if cfg.alpha is not None else cfg.rank,
                         lora_dropout=cfg.dropout, target_modules=paths)
    peft.inject_adapter_in_model(pc, unet, adapter_name=name)
    for n, p in unet.named_parameters():
        p.requires_grad_(f".lora_A.{name}." in n or f".lora_B.{name}." in n)
    return paths


def adapter_state(unet: nn.Module, name: str = "default") -> dict[str, torch.Tensor]:
    """{"<path>.lora_A.weight": tensor, ...} of one adapter (peft's own names less the adapter name)."""
    out = {}
    for n, p in unet.named_parameters():
        for part in ("lora_A", "lora_B"):
            tag = f".{part}.{name}."
            if tag in n:
                out[n.replace(tag, f".{part}.")] = p.detach()
    return out


def stage_fingerprint(stage_config) -> str:
    """Which U-Net an adapter belongs to: a hash of its architecture config (not of its weights)."""
    text = json.dumps(to_dict(stage_config.unet), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# files


def save_adapter(folder, state: dict[str, torch.Tensor], cfg: LoraConfig, paths: list[str], *, stage: int,
                 stage_config, base_model: str | None) -> Path:
    """Write `state` (adapter_state's names, or peft's with the adapter name) as WEIGHTS + CONFIG."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {PREFIX + re.sub(r"\.(lora_[AB])\.[^.]+\.weight$", r".\1.weight", k): v.detach().float().contiguous().cpu()
               for k, v in state.items()}
    alpha = cfg.alpha if cfg.alpha is not None else cfg.rank
    meta = {f"{PREFIX}r": cfg.rank, f"{PREFIX}lora_alpha": alpha, f"{PREFIX}target_modules": list(paths)}
    tmp = folder / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", METADATA_KEY: json.dumps(meta, sort_keys=True)})
    tmp.replace(folder / WEIGHTS)
    config = {"peft_type": "LORA", "r": cfg.rank, "lora_alpha": alpha, "lora_dropout": cfg.dropout,
              "target_modules": list(paths), "base_model_name_or_path": base_model,
              "openimagen": {"stage": stage, "resolution": stage_config.resolution,
                             "unet_kind": stage_config.unet.kind, "unet": stage_fingerprint(stage_config)}}
    (folder / CONFIG).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    return folder


@dataclass
class Adapter:
    """An adapter read from disk: {module path: (A, B)}, its rank and alpha, and what it was made for."""
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]]
    rank: int
    alpha: float
    source: Path
    made_for: dict | None = None        # the "openimagen" block of adapter_config.json, if any

    @property
    def stage(self) -> int | None:
        """The stage it was trained on; None for a foreign LoRA (the stage whose layers it fits is used)."""
        made = self.made_for or {}
        return int(made["stage"]) if "stage" in made else None


# diffusers' first IF DreamBooth-LoRA script saved attention-processor weights under these names
_OLD = re.compile(r"^(.*)\.processor\.(to_q|to_k|to_v|to_out|add_k_proj|add_v_proj)_lora\.(down|up)\.weight$")


def _standard_key(key: str) -> str | None:
    """A key in "<path>.lora_A.weight" form, or None for keys that are not LoRA matrices."""
    key = key[len(PREFIX):] if key.startswith(PREFIX) else key
    m = _OLD.match(key)
    if m:
        path, proj, which = m.groups()
        proj = "to_out.0" if proj == "to_out" else proj
        return f"{path}.{proj}.lora_{'A' if which == 'down' else 'B'}.weight"
    if re.search(r"\.lora_[AB]\.weight$", key):
        return key
    key = re.sub(r"\.lora\.(down|up)\.weight$", lambda m: f".lora_{'A' if m[1] == 'down' else 'B'}.weight", key)
    return key if re.search(r"\.lora_[AB]\.weight$", key) else None


def read_adapter(path) -> Adapter:
    """An adapter folder (ours or diffusers'), or one .safetensors file."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if p.is_dir():
        weights = next((p / n for n in (WEIGHTS, DIFFUSERS_WEIGHTS) if (p / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"--lora {path}: no {WEIGHTS} or {DIFFUSERS_WEIGHTS} in that folder")
    elif p.is_file():
        weights = p
    else:
        raise FileNotFoundError(f"--lora {path}: no such file or folder")
    try:
        with safe_open(str(weights), framework="pt") as f:
            raw = {k: f.get_tensor(k) for k in f.keys()}
            file_meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"--lora {weights} is not a safetensors file ({e})") from None
    config = {}
    if (weights.parent / CONFIG).is_file():
        config = json.loads((weights.parent / CONFIG).read_text(encoding="utf-8"))
    meta = json.loads(file_meta[METADATA_KEY]) if METADATA_KEY in file_meta else {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    alphas = {}
    for k, v in raw.items():
        if k.startswith(("text_encoder.", "text_encoder_2.")):
            continue  # diffusers files may adapt the text encoder too; our text encoders stay frozen as loaded
        std = _standard_key(k)
        if std is not None:
            path_, part = std.rsplit(".lora_", 1)
            pairs.setdefault(path_, {})[part[0]] = v.float()
        elif k.endswith(".alpha"):  # kohya-style per-module alphas (diffusers' "network alphas")
            alphas[k[:-len(".alpha")]] = float(v)
    if not pairs:
        raise ValueError(f"--lora {weights} holds no LoRA matrices (keys like 'unet.<layer>.lora_A.weight')")
    broken = [k for k, d in pairs.items() if set(d) != {"A", "B"}]
    if broken:
        raise ValueError(f"--lora {weights}: layers {broken[:3]} lack their lora_A or lora_B half; the file is damaged")
    ranks = {d["A"].shape[0] for d in pairs.values()}
    if len(ranks) > 1:
        raise ValueError(f"--lora {weights} mixes ranks {sorted(ranks)}; only one rank per adapter is supported")
    rank = ranks.pop()
    alpha = config.get("lora_alpha", meta.get(f"{PREFIX}lora_alpha"))
    if alpha is None and alphas:
        alpha = next(iter(alphas.values()))
    return Adapter({k: (d["A"], d["B"]) for k, d in pairs.items()}, rank, float(alpha if alpha is not None else rank),
                   weights, config.get("openimagen"))


def adapter_files(path) -> list[Path]:
    """PATH as the user gave it: an adapter folder, a file, or a run's `adapters/` folder (every stage_K)."""
    p = Path(path)
    if p.is_dir() and (p / "adapters").is_dir() and not (p / WEIGHTS).is_file():
        p = p / "adapters"  # a run folder
    if p.is_dir() and not any((p / n).is_file() for n in (WEIGHTS, DIFFUSERS_WEIGHTS)):
        found = sorted(d for d in p.glob("stage_*") if (d / WEIGHTS).is_file())
        if found:
            return found
    return [p]


# ----------------------------------------------------------------------------------------------
# using adapters


def _misfits(stage, adapter: Adapter) -> tuple[list[str], list[str]]:
    """(layers of the adapter missing from the stage's U-Net, layers whose shapes differ)."""
    layers = _layers(stage.unet)
    missing = [p for p in adapter.layers if p not in layers]
    wrong = [p for p, (A, B) in adapter.layers.items() if p in layers
             and (A.shape[1] != layers[p].weight.shape[1] or B.shape[0] != layers[p].weight.shape[0])]
    return missing, wrong


def apply_adapter(stage, adapter: Adapter, name: str, scale: float = 1.0) -> None:
    """Load `adapter` onto stage.unet as adapter `name`, scaled by `scale`; every adapter stays active."""
    import peft
    from peft.tuners.tuners_utils import BaseTunerLayer

    where = adapter.source
    made = adapter.made_for
    if made is not None and made.get("unet") not in (None, stage_fingerprint(stage.config)):
        raise ValueError(f"--lora {where} was trained on another model (a {made.get('unet_kind')} U-Net at "
                         f"{made.get('resolution')} px, fingerprint {made.get('unet')}); this stage is "
                         f"{stage.config.unet.kind} at {stage.config.resolution} px ({stage_fingerprint(stage.config)}); "
                         "pass the model it was trained from")
    missing, wrong = _misfits(stage, adapter)
    if missing or wrong:
        bad = missing or wrong
        raise ValueError(f"--lora {where} does not fit this model: {len(missing)} of its {len(adapter.layers)} layers "
                         f"are not in the U-Net and {len(wrong)} have other shapes (e.g. {bad[0]!r}); it was made "
                         "for another model")
    pc = peft.LoraConfig(r=adapter.rank, lora_alpha=adapter.alpha, target_modules=sorted(adapter.layers))
    with warnings.catch_warnings():  # peft warns that a second adapter joins the first: several are the point
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        peft.inject_adapter_in_model(pc, stage.unet, adapter_name=name)
    params = dict(stage.unet.named_parameters())
    with torch.no_grad():
        for p, (A, B) in adapter.layers.items():
            for part, w in (("lora_A", A), ("lora_B", B)):
                target = params[f"{p}.{part}.{name}.weight"]
                target.copy_(w.reshape(target.shape))
    names = sorted({a for m in stage.unet.modules() if isinstance(m, BaseTunerLayer) for a in m.lora_A})
    for m in stage.unet.modules():
        if isinstance(m, BaseTunerLayer):
            m.set_adapter(names, inference_mode=True)
            m.set_scale(name, scale)
    stage.unet.requires_grad_(False)


def parse_lora_arg(text: str) -> tuple[str, float]:
    """"PATH" or "PATH:scale" -> (PATH, scale); a path that itself holds ':' keeps it."""
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            return head, float(tail)
        except ValueError:
            pass
    return text, 1.0


def apply_loras(cascade, loras) -> None:
    """`generate --lora PATH[:scale]` (several): each adapter onto the stage it was made for."""
    n = 0
    for item in loras:
        path, scale = parse_lora_arg(item)
        for f in adapter_files(path):
            adapter = read_adapter(f)
            k = adapter.stage
            if k is None:  # a foreign LoRA (diffusers'): the first stage all of its layers fit, else stage 0's error
                k = next((i for i, s in enumerate(cascade.stages) if _misfits(s, adapter) == ([], [])), 0)
            if not 0 <= k < len(cascade.stages):
                raise ValueError(f"--lora {f} is for stage {k}; this model has {len(cascade.stages)} stages")
            apply_adapter(cascade.stages[k], adapter, f"lora{n}", scale)
            n += 1


def merge_adapters(unet: nn.Module) -> None:
    """Fold every active adapter into its base weights and remove the adapter layers (in place)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for path, m in list(unet.named_modules()):
        if isinstance(m, BaseTunerLayer):
            m.merge()
            parent, _, child = path.rpartition(".")
            setattr(unet.get_submodule(parent) if parent else unet, child, m.get_base_layer())
