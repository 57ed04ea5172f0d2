"""What a Hugging Face Hub model repository id looks like (``org/name``): one rule for cards, zoo and Hub."""

from __future__ import annotations

import re

_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_repo_id(text: str) -> bool:
    """True for a Hub model repo id of the form ``org/name``."""
    return bool(_REPO_ID_RE.match(text)) and ".." not in text and not text.endswith((".", "-"))
