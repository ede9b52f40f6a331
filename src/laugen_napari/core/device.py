"""Choice of the torch device the engine runs on."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Return the torch device for ``device``: ``"auto"`` (CUDA when present, else CPU),
    ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises ``ValueError`` when CUDA is asked for and not available.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch sees no CUDA GPU; use --device cpu or auto")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}: use auto, cpu or cuda")
    return dev
