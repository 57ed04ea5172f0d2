"""Progress on long work: redrawn bars on a terminal, and on a log (a pipe, a file, CI) one line per step.

A bar redraws itself many times a second; written to a file that is hundreds of kilobytes of
carriage returns. So bars are drawn only when stderr is a terminal, and long loops print one
line per finished unit of work instead (:func:`log_line`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from tqdm.auto import tqdm


def interactive() -> bool:
    """True when stderr, where progress goes, is a terminal."""
    return sys.stderr.isatty()


def bar(items: Sequence, desc: str, *, enabled: bool = True, first: int = 0, unit: str = "it") -> tqdm:
    """A progress bar over ``items[first:]``, counting from ``first``; drawn only on a terminal."""
    return tqdm(
        items[first:],
        desc=desc,
        initial=first,
        total=len(items),
        unit=unit,
        disable=not (enabled and interactive()),
        dynamic_ncols=True,
    )


def log_line(text: str) -> None:
    """One line of progress on stderr, for a log: call it where a terminal would have a bar."""
    print(text, file=sys.stderr, flush=True)
