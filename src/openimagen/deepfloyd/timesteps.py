"""DeepFloyd IF's named timestep lists (fast27, smart27/50/100/185, super27/40/100).

IF's authors sample their 1000-step model with hand-tuned "respacings": the 1000 training steps are cut
into equal sections and each section contributes a given number of evenly spaced steps (the
`space_timesteps` rule of Nichol & Dhariwal 2021, "Improved DDPM", §4). We derive every list from its
respacing string instead of storing it, so the rule is visible and checkable.
"""
from __future__ import annotations

RESPACINGS: dict[str, str] = {
    "fast27": "10,10,3,2,2",
    "smart27": "7,4,2,1,2,4,7",
    "smart50": "10,6,4,3,2,2,3,4,6,10",
    "smart100": "1,1,1,1,2,2,2,2,2,2,3,3,4,4,5,5,6,7,7,8,9,10,13",
    "smart185": "1,1,2,2,2,3,3,3,4,5,6,7,8,9,10,11,12,13,14,15,16,18,20",
    "super27": "1,1,1,1,1,1,1,2,5,13",
    "super40": "2,2,2,2,2,2,3,4,6,15",
    "super100": "4,4,6,6,8,8,10,10,14,30",
}


def space_timesteps(num_train_timesteps: int, section_counts: list[int]) -> list[int]:
    """Descending timesteps: `section_counts[i]` evenly rounded picks from the i-th equal section."""
    n_sections = len(section_counts)
    size_per, extra = divmod(num_train_timesteps, n_sections)
    steps: set[int] = set()
    start = 0
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if count > size:
            raise ValueError(f"cannot take {count} steps from a section of {size} timesteps")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):  # accumulated, not k * stride: the published lists carry its rounding
            steps.add(start + round(position))
            position += stride
        start += size
    return sorted(steps, reverse=True)


def named_timesteps(name: str, num_train_timesteps: int = 1000) -> list[int]:
    """IF's named list, e.g. `named_timesteps("smart50")`; a plain number string "150" gives even spacing."""
    if name in RESPACINGS:
        counts = [int(c) for c in RESPACINGS[name].split(",")]
    elif name.isdigit() and int(name) > 0:
        counts = [int(name)]
    else:
        raise ValueError(f"unknown timestep list {name!r}; choose one of {sorted(RESPACINGS)} or a step count")
    return space_timesteps(num_train_timesteps, counts)
