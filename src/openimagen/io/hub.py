"""The one rule for "a local folder or a Hugging Face hub id", and the one way to fetch from the hub.

    where = resolve("DeepFloyd/IF-I-XL-v1.0", "IF checkpoint")     # -> "DeepFloyd/IF-I-XL-v1.0" (a hub id)
    where = resolve("~/models/IF-I-XL", "IF checkpoint")            # -> Path (an existing local folder)
    folder = snapshot(where, ["unet/*"], "IF checkpoint")           # hub id -> the cached local folder
    tok = from_hub_or_dir(AutoTokenizer.from_pretrained, name, "T5 tokenizer")

The rule: a string names a local path when that path exists (after `~` expansion) or when it is spelled like
one (it starts with ".", "/" or "~", or it is not `owner/name`); anything else is a hub repo id. A bare name
("t5-small") is never sent to the hub: the hub spells every repo `owner/name` (bare ids are old redirects,
e.g. to google-t5/t5-small), and a mistyped local folder should fail here, not start a download.
Nothing is imported from `huggingface_hub` until a download is asked for.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, TypeVar

from .errors import HubError

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # owner/name
T = TypeVar("T")


def local_path(name_or_path: str | os.PathLike) -> Path | None:
    """The local path `name_or_path` names (which may not exist), or None when it names a hub repo."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists() or text.startswith((".", "/", "~")) or not HUB_ID.fullmatch(text):
        return path
    return None


def resolve(name_or_path: str | os.PathLike, what: str, layout: str = "") -> Path | str:
    """An existing local path, or a hub id (a str); FileNotFoundError for a local path that is not there.

    `what` names the thing in messages ("IF checkpoint"); `layout`, if given, says what the folder holds.
    """
    path = local_path(name_or_path)
    if path is None:
        return str(name_or_path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {name_or_path}: no such folder, and not a hub id (owner/name)"
                                f"{'; ' + layout if layout else ''}")
    return path


def from_hub(fetch: Callable[[], T], repo_id: str, what: str, layout: str = "") -> T:
    """`fetch()` (a download from `repo_id`), its failures turned into one HubError that says what to do.

    Offline, gated, missing and HTTP errors of huggingface_hub and transformers are all OSErrors.
    """
    try:
        return fetch()
    except OSError as e:
        raise HubError(_message(repo_id, what, e, layout)) from None


def snapshot(repo_id: str, patterns: list[str], what: str, layout: str = "") -> Path:
    """The local folder holding the files of hub repo `repo_id` that match `patterns` (downloaded or cached)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImportError(f"fetching the {what} {repo_id!r} needs huggingface_hub: pip install huggingface_hub, "
                          "or pass a local folder") from None
    return from_hub(lambda: Path(snapshot_download(repo_id, allow_patterns=patterns)), repo_id, what, layout)


def from_hub_or_dir(loader: Callable[..., T], name_or_path: str, what: str, **kwargs) -> T:
    """`loader(path or hub id, **kwargs)` (a `from_pretrained`), by the rule above, with the same clear errors."""
    where = resolve(name_or_path, what)
    if isinstance(where, Path):
        return loader(str(where), **kwargs)
    return from_hub(lambda: loader(where, **kwargs), where, what)


def _message(repo_id: str, what: str, e: Exception, layout: str) -> str:
    detail = " ".join(str(e).split())[:300]  # one line: library messages span several
    gated = "gated" in type(e).__name__.lower() or "403" in detail
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    return (
        f"could not get the {what} {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {detail})."
        + (" HF_HUB_OFFLINE is set, so only the local cache was searched: unset it to download." if offline else "")
        + (f" The repo is gated: accept its license on https://huggingface.co/{repo_id} and run `hf auth login`."
           if gated else "")
        + f" Offline? Download it where there is a connection (`hf download {repo_id}`) and pass the local folder "
        f"instead{'; ' + layout if layout else '.'}"
    )
