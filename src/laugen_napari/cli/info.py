"""``laugen info``: what this installation runs on (versions, devices, compiled kernels)."""

from __future__ import annotations

import argparse
import platform


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="versions, devices and whether the compiled engine kernels are in use")
    p.add_argument("--build", action="store_true",
                   help="build the compiled kernels now if they are not built yet (seconds, once per machine)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .. import __version__
    from ..core import native

    cuda = torch.cuda.is_available()
    devices = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) if cuda else "none"
    print(f"laugen-napari {__version__}, python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}")
    print(f"CPU threads (torch): {torch.get_num_threads()}; CUDA GPUs: {devices}")
    print(f"engine on CPU: {native.status() if args.build or native.built() else native.pending()}")
    return 0
