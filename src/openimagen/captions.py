"""Optional caption cleaning before T5, in the spirit of DeepFloyd IF's `clean_caption`.

IF's authors scrubbed web alt-text before training (HTML, URLs, @handles, mojibake), and their
inference code cleans prompts the same way so that a prompt looks like a training caption. This is our
own, smaller cleaner: it fixes text encoding with `ftfy` and strips markup with `beautifulsoup4` when
those packages are installed, then removes URLs, @handles, and stray punctuation runs. It is *not* a
reproduction of IF's full regex pipeline, so it is off by default (diffusers' parity path is the plain
`lower().strip()`); turn it on with `T5Encoder(..., clean_caption=True)`.
"""
from __future__ import annotations

import html
import re
import urllib.parse

_URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
_HANDLE = re.compile(r"(?<!\w)@[\w.]+")
_PUNCT_RUN = re.compile(r"([-_*#=~.,!?:;\"'])\1{2,}")  # "!!!!" -> "!", "----" -> "-"
_SPACE = re.compile(r"\s+")


def clean_caption(text: str) -> str:
    """Lower-cased, de-marked-up, URL-free caption with single spaces."""
    text = urllib.parse.unquote_plus(str(text))
    try:
        import ftfy  # optional: repairs mojibake such as "Ã©" -> "é"

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(text)
    try:
        from bs4 import BeautifulSoup  # optional: drops HTML tags, keeps their text

        text = BeautifulSoup(text, features="html.parser").get_text()
    except ImportError:
        text = re.sub(r"<[^>]+>", " ", text)
    text = _URL.sub("", text.strip().lower())
    text = _HANDLE.sub("", text)
    text = _PUNCT_RUN.sub(r"\1", text)
    return _SPACE.sub(" ", text).strip(" -_,;:")
