"""The command line's progress bars (tqdm on stderr), made in one place."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(**kwargs: Any):
    """A tqdm bar on stderr (``kwargs`` as tqdm's). tqdm prints the bar inside its constructor; an
    interrupt (Ctrl-C) right then leaves no bar object to close, so the line is ended here and the
    message that follows (``laugen: interrupted``) starts on a line of its own."""
    from tqdm import tqdm

    kwargs.setdefault("file", sys.stderr)
    try:
        return tqdm(**kwargs)
    except BaseException:
        kwargs["file"].write("\n")
        raise
