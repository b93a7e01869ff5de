"""A1111's "infotext": the `parameters` PNG text that other tools (A1111, Fooocus, Civitai) read.

    <prompt>
    Negative prompt: <negative>
    Steps: 20, Sampler: ddim, CFG scale: 7.0, Seed: 3, Size: 64x64, Model: ..., Version: openimagen 0.1.0

Keys whose value is None are left out; a value holding "," or ":" is written as a JSON string (A1111's
quoting). Ours is a summary of the stage that made the image: the full request stays in the `openimagen`
key (api.PNG_KEY), which is what `--from-png` reads.
"""
from __future__ import annotations

import json
import re

PNG_KEY = "parameters"


def infotext(request: dict, prompt: str, stage: int, size: tuple[int, int], version: str,
             expanded: str | None = None) -> str:
    """The infotext of one image made by stage `stage` (an index into the cascade) of a resolved request;
    `expanded`: the prompt as the model read it, when prompt expansion rewrote it (prompt_expansion.py)."""
    def at(name):
        v = request.get(name)
        if isinstance(v, list):
            return v[stage] if stage < len(v) else None
        return v

    w, h = size
    fields = {
        "Steps": at("steps"), "Sampler": at("sampler"), "CFG scale": at("guidance"), "Seed": request.get("seed"),
        "Size": f"{w}x{h}", "Model": request.get("model") or "openimagen-shapes (bundled)",
        "Denoising strength": at("strength"), "Stage": stage, "Mode": request.get("mode"),
        "Expanded prompt": expanded if expanded != prompt else None,
        "Version": f"openimagen {version}",
    }
    line = ", ".join(f"{k}: {_quote(v)}" for k, v in fields.items() if v is not None)
    neg = request.get("negative_prompt")
    return f"{prompt}\n" + (f"Negative prompt: {neg}\n" if neg else "") + line


def parse(text: str) -> dict:
    """An infotext back into {"prompt", "negative_prompt", and each "Key": value} (values as text)."""
    lines = text.strip().split("\n")
    last = lines[-1] if len(lines) > 1 or re.match(r"^\s*Steps:", lines[-1]) else ""
    body = lines[:-1] if last else lines
    prompt, negative, into_negative = [], [], False
    for ln in body:
        if ln.startswith("Negative prompt:"):
            into_negative, ln = True, ln[len("Negative prompt:"):].strip()
        (negative if into_negative else prompt).append(ln)
    out = {"prompt": "\n".join(prompt).strip(), "negative_prompt": "\n".join(negative).strip() or None}
    for key, value in re.findall(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)', last):
        out[key.strip()] = json.loads(value) if value.startswith('"') else value.strip()
    return out


def _quote(v) -> str:
    s = str(v)
    return json.dumps(s) if ("," in s or ":" in s or "\n" in s) else s
