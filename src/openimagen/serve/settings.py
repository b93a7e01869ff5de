"""What a server is allowed to do: where it listens, who may call it, and how much one request may ask."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Settings:
    out_dir: Path = Path("openimagen-gallery")   # finished images, their index, uploaded inputs
    host: str = "127.0.0.1"
    port: int = 7860                             # A1111's: scripts written for its API work unchanged
    token: str | None = None                     # bearer token; required when `host` is not loopback
    allowed_hosts: tuple[str, ...] = ()          # extra Host header names (a LAN name when bound elsewhere)
    max_queue: int = 16                          # pending jobs (the running ones are not counted); 429 beyond
    max_body_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 4096 * 4096                # per uploaded image
    max_images_per_job: int = 16                 # num_images x batch_count
    max_steps: int = 1000                        # per stage
    max_prompt_chars: int = 2000
    preview_every: int = 2                       # an x0_hat preview every this many steps (and the last)
    preview_size: int = 128                      # previews are shrunk to at most this many pixels a side
    jobs_in_memory: int = 256                    # finished job records kept for /jobs/{id}; images stay on disk
    devices: tuple[str, ...] = ("cpu",)          # one worker (and one copy of the model) per device
    sse_ping_s: float = 15.0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if not is_loopback(self.host) and not self.token:
            raise ValueError(f"--host {self.host} lets other machines connect: give --token SECRET too (every request "
                             "then needs 'Authorization: Bearer SECRET'), or keep the default --host 127.0.0.1")
        for name in ("max_queue", "max_body_bytes", "max_pixels", "max_images_per_job", "max_steps", "preview_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.devices:
            raise ValueError("give at least one device (e.g. cpu or cuda:0)")

    def host_names(self) -> set[str]:
        """Host header names we answer to (DNS rebinding: a page on evil.example that resolves to 127.0.0.1
        still sends Host: evil.example, and is refused). None in the set = any name (bound to all interfaces)."""
        names = {*LOOPBACK_NAMES, "[::1]", *self.allowed_hosts}
        if self.host in ("0.0.0.0", "::", ""):
            names.add(None)
        else:
            names.add(self.host)
        return names

    def limits(self) -> dict:
        return {"max_queue": self.max_queue, "max_body_bytes": self.max_body_bytes, "max_pixels": self.max_pixels,
                "max_images_per_job": self.max_images_per_job, "max_steps": self.max_steps,
                "max_prompt_chars": self.max_prompt_chars}


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
