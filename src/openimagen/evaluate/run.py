"""`openimagen evaluate`: generate for every prompt of a file (seeded), score, write JSON, print a table."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..data.shapes_captions import parse_caption
from .benchmark import BENCHMARK_PATH, BENCHMARKS
from .scorer import ATTRIBUTES, score_many

BATCH = 10  # prompts per generate call; batch k uses seed + k, so results do not depend on the machine


def read_prompts(path: str | Path | None) -> list[str]:
    """One shapes-world caption per line (blank lines ignored); every line must parse. `path` may also
    name a shipped benchmark: "templates" (the default) or "natural"."""
    path = BENCHMARKS.get(path, path) if isinstance(path, str) else path
    path = Path(path) if path is not None else BENCHMARK_PATH
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist; pass a text file with one caption per line")
    prompts = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            parse_caption(line)
        except ValueError as e:
            raise ValueError(f"{path}:{n}: {e}") from None
        prompts.append(line.strip())
    if not prompts:
        raise ValueError(f"prompt file {path} has no prompts")
    return prompts


def evaluate_model(model: str | None, prompts_file: str | None, out_dir: str, *, steps=None, guidance=None,
                   sampler=None, seed: int = 0, progress: bool = True, expand: bool | None = None) -> str:
    """Generate, score and write `out_dir/scores.json` and `out_dir/images/NNN.png`; return the table.
    `expand`: prompt expansion as `Cascade.generate` takes it (None: the model's default); images are
    always scored against the prompt as written in the file."""
    import torch

    from ..data.transforms import to_pil
    from ..io.disk import check_output_folder
    from ..load import load_model

    check_output_folder(out_dir)  # before the images are generated, not after

    prompts = read_prompts(prompts_file)
    cascade = load_model(model)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images = []
    start = time.perf_counter()
    from tqdm.auto import tqdm

    for k in tqdm(range(0, len(prompts), BATCH), desc="generating", disable=not progress):
        batch = prompts[k:k + BATCH]
        result = cascade.generate(batch, steps=steps, guidance=guidance, sampler=sampler,
                                  seed=seed + k // BATCH, progress=False, expand=expand)
        images.append(result.images[-1])
    images = torch.cat(images)
    seconds = time.perf_counter() - start
    for i, img in enumerate(to_pil(images)):
        img.save(out / "images" / f"{i:03d}.png")

    report = score_many(images, prompts)
    settings = {"model": model or "bundled", "prompts": str(BENCHMARKS.get(prompts_file, prompts_file) or BENCHMARK_PATH), "steps": steps,
                "guidance": guidance, "sampler": sampler, "seed": seed, "batch": BATCH,
                "prompt_expansion": cascade.prompt_expansion if expand is not False else None,
                "resolution": images.shape[-1], "generate_seconds": round(seconds, 1)}
    (out / "scores.json").write_text(json.dumps({"settings": settings, **report.as_dict()}, indent=2) + "\n")
    return format_table(report)


def format_table(report) -> str:
    rows = ["| attribute | accuracy | prompts |", "|---|---|---|"]
    for k in ATTRIBUTES:
        if k in report.accuracy:
            rows.append(f"| {k} | {report.accuracy[k]:.1%} | {report.counts[k]} |")
    for k, why in report.unavailable.items():
        rows.append(f"| {k} | unavailable ({why}) | 0 |")
    return "\n".join(rows)
