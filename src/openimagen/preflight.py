"""What a generation or edit request is checked for before any model loads or any image is drawn.

    check_device("cuda")            a device this machine has (else one line naming what it has)
    check_numbers(request)          guidance and noise levels finite; guidance >= 0
    check_resolved(cascade, req)    noise levels inside each stage's schedule; the batch fits in memory
    vocabulary_warning(prompts)     the bundled model knows only the shapes world: words outside it, named

Each failure is a ValueError naming the option, the value and the fix; the CLI prints it as one line.
"""
from __future__ import annotations

import logging
import math
import re

log = logging.getLogger("openimagen")

MAX_GUIDANCE = 1000     # far past any useful scale (IF: 7 for stage I); larger is a typo
MAX_STEPS = 10_000      # per stage; a discrete schedule has 1000 timesteps, continuous ones saturate long before
GUIDANCE_MEANING = ("0 ignores the prompt (unconditional), 1 follows it without guidance, higher follows it "
                    "more strictly")


def check_device(device) -> None:
    """Refuse a device name torch does not know, or one this machine lacks, before any work."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"--device {device!r} is not a device; use cpu, cuda, cuda:1 or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: this machine has no usable CUDA GPU (a CPU-only PyTorch, or no "
                             "driver); use --device cpu, or install the CUDA build of PyTorch")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: there are {torch.cuda.device_count()} CUDA GPU(s), "
                             f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"--device {device}: Apple's MPS is not available on this machine; use --device cpu")
    elif dev.type != "cpu":
        raise ValueError(f"--device {device}: openimagen runs on cpu, cuda or mps")


def _each(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_numbers(request) -> None:
    """Prompts that are not text, and guidance and noise levels that would draw a wrong image silently (NaN,
    inf, negative guidance)."""
    from .text import check_prompts

    if any(not p.strip() for p in check_prompts(request.prompt)):
        raise ValueError('empty prompt: describe the image, e.g. "a red circle above a blue square"')
    if request.negative_prompt is not None:
        check_prompts(request.negative_prompt)
    for g in _each(request.guidance):
        if g is None:
            continue
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g):
            raise ValueError(f"--guidance {g!r} must be a finite number >= 0 ({GUIDANCE_MEANING})")
        if g < 0:
            raise ValueError(f"--guidance {g} is negative, which steers away from the prompt; give a number >= 0 "
                             f"({GUIDANCE_MEANING})")
        if g > MAX_GUIDANCE:
            raise ValueError(f"--guidance {g:g} is far beyond any useful scale (at most {MAX_GUIDANCE}; 1-20 is "
                             f"usual; {GUIDANCE_MEANING})")
    for n in _each(request.noise_level):
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, float)) or not math.isfinite(n)):
            raise ValueError(f"--noise-level {n!r} must be a finite number in the stage's range (IF: 0-999)")
    if isinstance(request.num_images, bool) or not isinstance(request.num_images, int) or request.num_images < 1:
        raise ValueError(f"num_images must be a whole number >= 1, got {request.num_images!r}")
    if not 0 <= request.seed < 2**63 - request.num_images:
        raise ValueError(f"--seed {request.seed} must be a whole number in [0, 2^63) (image i uses seed + i)")
    for n in _each(request.steps):
        if isinstance(n, int) and not isinstance(n, bool) and n > MAX_STEPS:
            raise ValueError(f"--steps {n} is more than {MAX_STEPS} sampling steps per stage (25-50 is usual; "
                             "the model's default is its trained choice)")


def noise_range(stage) -> tuple[float, float]:
    """The low-res noise levels a super-resolution stage knows: its lowres schedule's time range."""
    sched = stage.lowres_schedule
    if sched.discrete:
        return 0.0, float(sched.config.num_train_timesteps - 1)
    return 0.0, 1.0


def check_resolved(cascade, req, device="cpu") -> None:
    """With the model known (`req` resolved: per-stage lists from stage 0): every noise level inside its
    stage's range, and the batch inside memory."""
    for i, n in enumerate(req.noise_level):
        if n is None:
            continue
        lo, hi = noise_range(cascade.stages[i])
        if not lo <= n <= hi:
            raise ValueError(f"--noise-level {n:g} is outside stage {i}'s range [{lo:g}, {hi:g}] (its low-res "
                             f"schedule's units; the model's default is {cascade.stages[i].config.noise_level:g})")
    heights, widths = getattr(req, "height", None), getattr(req, "width", None)
    last = cascade.stages[len(req.noise_level) - 1].resolution
    h = heights[-1] if isinstance(heights, list) and heights[-1] else last
    w = widths[-1] if isinstance(widths, list) and widths[-1] else last
    check_memory(cascade, len(req.prompt) * req.num_images, h, w, device)


# Measured on the bundled model (64 px, U-Net width 32): about 10 MB per image of the batch, i.e. ~10x the
# bytes of two (guided) float32 feature maps of the stage's width; 16x leaves room for wider attention.
BYTES_FACTOR = 16


def _width(stage) -> int:
    u = stage.config.unet
    return int(getattr(u, "dim", None) or getattr(u, "block_out_channels", (128,))[0])


def estimate_bytes(cascade, images: int, height: int, width: int) -> int:
    """Working memory of a generation of `images` images, from the largest stage's size and width."""
    per_image = max(2 * height * width * _width(s) * 4 * BYTES_FACTOR for s in cascade.stages)
    return images * per_image


def available_bytes(device) -> int | None:
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.mem_get_info(dev)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(cascade, images: int, height: int, width: int, device="cpu") -> None:
    need, free = estimate_bytes(cascade, images, height, width), available_bytes(device)
    if free is None or need <= free:
        return
    fits = max(1, free * images // need)
    raise ValueError(f"{images} images at {width}x{height} px need about {need / 1e9:.1f} GB, and {device} has "
                     f"{free / 1e9:.1f} GB free; ask for at most about {fits} per run (image i uses seed + i, so "
                     f"--seed S --num-images N continues a series: the next run starts at --seed S+N)")


# ----------------------------------------------------------------------------------------------
# the bundled model's language


def shapes_vocabulary() -> tuple[set[str], set[str]]:
    """(lower-case words, upper-case sign words) of every caption the shapes world writes."""
    from .data import shapes_captions as sc

    words = set()
    for group in (sc.COLOR_NAMES, sc.BACKGROUND_NAMES, sc.SHAPE_NAMES, tuple(sc.SHAPE_PLURALS.values()),
                  sc.SIZE_NAMES, sc.POSITION_NAMES, sc.RELATION_NAMES, tuple(sc.COUNT_WORDS.values())):
        for phrase in group:
            words.update(phrase.split())
    texts = [t for ts in sc.TEMPLATES.values() for t in ts]
    texts += [p for ps in (*sc._POSITION_PHRASES.values(), *sc._RELATION_PHRASES.values()) for p in ps]
    for t in texts:
        words.update(w.lower() for w in re.findall(r"[A-Za-z]+", re.sub(r"\{\w+\}", " ", t)))
    words.update({"a", "an", "2", "3", "4"})
    return words, set(sc.WORDS)


def unknown_words(prompt: str) -> list[str]:
    words, signs = shapes_vocabulary()
    out = []
    for w in re.findall(r"[A-Za-z0-9]+", prompt):
        if w.lower() not in words and w not in signs and w not in out:
            out.append(w)
    return out


def vocabulary_warning(prompts: list[str]) -> str | None:
    """A warning for prompts the bundled (shapes-world) model cannot draw, or None."""
    from .data import shapes_captions as sc

    unknown = []
    for p in prompts:
        unknown += [w for w in unknown_words(p) if w not in unknown]
    if not unknown:
        return None
    msg = (f"the bundled model knows only the shapes world; these words of the prompt are outside its vocabulary: "
           f"{unknown[:10]}. It knows colours {list(sc.COLOR_NAMES)}, shapes {list(sc.SHAPE_NAMES)}, sizes "
           f"{list(sc.SIZE_NAMES)}, positions {list(sc.POSITION_NAMES)}, relations {list(sc.RELATION_NAMES)}, "
           f"backgrounds {list(sc.BACKGROUND_NAMES)}, counts two-four and signs that say {list(sc.WORDS)}; "
           "for anything else train a model on your images or use --model DeepFloyd/IF-I-XL-v1.0")
    log.warning(msg)
    return msg
