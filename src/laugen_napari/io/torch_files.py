"""Reading PyTorch files (checkpoints, SAM weights) that a user names: never any code on load.

Every ``.pt``/``.pth`` the project reads goes through :func:`read_torch_file`, which calls
``torch.load(weights_only=True)``: only tensors, numbers, strings, lists and dicts come back, and a
file whose pickle names any other Python object is refused before that object is made.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: empty, truncated, not a torch file, or holding
    anything beyond tensors and plain Python values (code, custom classes)."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def read_torch_file(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load`` with ``weights_only=True`` on the CPU; every failure is one
    :class:`CheckpointError` line naming ``path`` (a missing file: ``FileNotFoundError``).

    Args:
        path: the file the user named.
        what: what the file should be, for the messages (e.g. "SAM checkpoint").
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the {what} file is empty")
    try:
        with warnings.catch_warnings():
            # a file whose first bytes look like an unknown pickle protocol makes torch warn before it
            # fails; the one error line below says what is wrong with the file
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" in str(exc).lower():  # the pickle names a class or function: never made
            raise CheckpointError(f"{path}: refused, the {what} holds Python objects other than tensors and plain "
                                  "values (it could run code); only tensors, numbers, strings, lists and dicts "
                                  "are loaded") from None
        # torch's own text here advises turning the safe mode off: never passed on
        raise CheckpointError(f"{path}: not a readable {what}: not a PyTorch file of tensors and plain values "
                              "(corrupt, truncated, or another format)") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError,
            MemoryError, OverflowError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable {what}, truncated or corrupt ({_first_line(exc)})") from None
