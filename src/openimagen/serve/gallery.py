"""The gallery: every finished image on disk (out_dir/jobs/<job>/<part>/*.png, with its parameters in PNG
text) and an append-only index (out_dir/gallery.jsonl) read back at start-up, so a restart loses nothing.

Images are served by id only; a path never comes from a client. A line that a crash cut short, or one
whose file was deleted, is skipped on load.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path


class Gallery:
    def __init__(self, out_dir: Path):
        self.root = Path(out_dir).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.index = self.root / "gallery.jsonl"
        self._lock = threading.Lock()
        self._records: list[dict] = []
        self._by_id: dict[str, dict] = {}
        if self.index.is_file():
            for line in self.index.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                    if (self.root / rec["file"]).is_file():
                        self._keep(rec)
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue

    def add(self, job, paths: list[Path], *, req, part: int) -> list[dict]:
        """Index the final images of one part of a job (already written whole by api.write_pngs)."""
        from PIL import Image

        request = json.loads(req.to_json())
        records = []
        for i, path in enumerate(paths):
            with Image.open(path) as im:
                w, h = im.size
            image_id = f"{job.id}-{part}-{i}"
            rec = {"id": image_id, "job": job.id, "file": str(Path(path).resolve().relative_to(self.root)),
                   "created": time.time(), "kind": job.kind, "prompt": request["prompt"][0] if len(request["prompt"]) == 1
                   else request["prompt"][i // request["num_images"]], "negative_prompt": request.get("negative_prompt"),
                   "seed": request["seed"], "width": w, "height": h, "stage": int(path.name.split("-stage")[1].split("-")[0]),
                   "url": f"/api/v1/images/{image_id}.png"}
            records.append(rec)
        with self._lock:
            with open(self.index, "a", encoding="utf-8") as f:
                for rec in records:
                    f.write(json.dumps(rec, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            for rec in records:
                self._keep(rec)
        return records

    def page(self, limit: int = 50, before: float | None = None) -> list[dict]:
        with self._lock:
            recs = [r for r in reversed(self._records) if before is None or r["created"] < before]
        return recs[:limit]

    def get(self, image_id: str) -> dict | None:
        with self._lock:
            return self._by_id.get(image_id)

    def path(self, rec: dict) -> Path:
        p = (self.root / rec["file"]).resolve()
        if self.root not in p.parents:  # the index is ours, but never serve outside the gallery
            raise FileNotFoundError(rec["id"])
        return p

    def __len__(self) -> int:
        return len(self._records)

    def _keep(self, rec: dict) -> None:
        self._records.append(rec)
        self._by_id[rec["id"]] = rec
