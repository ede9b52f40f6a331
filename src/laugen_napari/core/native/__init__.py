"""Compiled loops for the engine's per-voxel work (optional).

The C sources next to this file are built with the system C compiler (``$CC``, else ``cc``) the
first time the engine needs them, into a shared library cached under
``$XDG_CACHE_HOME/laugen-napari/native`` (``~/.cache`` by default) and named by a hash of the
sources, the compiler and this CPU's features, so that a changed source, compiler or machine builds
again. Without a compiler, or with ``LAUGEN_NATIVE=0`` in the environment, the engine runs its
torch code: the same numbers within float32 round-off, several times slower per moving voxel.

:func:`library` returns the loaded library or None; :func:`status` says which, and why, in one
line (``laugen info`` prints it).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

SOURCES = ("warp.c",)
ABI = 6  # laugen_warp_abi() of the sources in this folder
_FLAG_SETS = (
    ["-O3", "-march=native", "-fPIC", "-shared", "-std=c11", "-ffp-contract=off"],
    ["-O3", "-fPIC", "-shared", "-std=c11", "-ffp-contract=off"],
)
COMPILE_TIMEOUT_S = 120

_lock = threading.Lock()
_state: dict = {}


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # a fork while another thread held it (building) leaves it locked forever


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def enabled() -> bool:
    """False when ``LAUGEN_NATIVE`` is set to 0, no or off (the torch code is used)."""
    return os.environ.get("LAUGEN_NATIVE", "1").strip().lower() not in ("0", "no", "off", "false")


def _cpu_features() -> str:
    """This CPU's identity for the cache key: a library built with -march=native runs only here."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _compiler() -> str | None:
    cc = os.environ.get("CC", "cc").split()[0]
    return shutil.which(cc)


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "laugen-napari" / "native"


def _key(cc: str) -> str:
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in SOURCES:
        h.update(name.encode() + b"\0" + (here / name).read_bytes())
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = b""
    h.update(version + sys.platform.encode() + platform.machine().encode() + _cpu_features().encode())
    h.update(repr(_FLAG_SETS).encode())
    return h.hexdigest()[:24]


def _build(cc: str, target: Path) -> None:
    """Compile the sources into ``target`` (written under a temporary name, then renamed: another
    process never sees a half-written library)."""
    here = Path(__file__).parent
    sources = [str(here / name) for name in SOURCES]
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        errors = []
        for flags in _FLAG_SETS:
            done = subprocess.run([cc, *flags, "-o", tmp, *sources, "-lm"], capture_output=True, text=True,
                                  timeout=COMPILE_TIMEOUT_S)
            if done.returncode == 0:
                os.replace(tmp, target)
                return
            errors.append(done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"])
        raise RuntimeError(f"{cc} failed: {errors[-1][0]}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    if lib.laugen_warp_abi() != ABI:
        raise RuntimeError(f"{path} has another interface version")
    lib.laugen_warp.restype = ctypes.c_int
    lib.laugen_warp.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    lib.laugen_cell_codes.restype = ctypes.c_int
    lib.laugen_cell_codes.argtypes = [ctypes.c_void_p] * 5
    lib.laugen_count_runs.restype = ctypes.c_int64
    lib.laugen_count_runs.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.laugen_moving_voxels.restype = ctypes.c_int
    lib.laugen_moving_voxels.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * 7
    lib.laugen_jacobian.restype = ctypes.c_int64
    lib.laugen_jacobian.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] + [ctypes.c_void_p] * 3 + [ctypes.c_int64]
    lib.laugen_det_summary.restype = None
    lib.laugen_det_summary.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64, ctypes.c_float, ctypes.c_void_p,
                                                               ctypes.c_void_p]
    return lib


def _open() -> tuple[ctypes.CDLL | None, str]:
    if not enabled():
        return None, "compiled kernels off (LAUGEN_NATIVE=0): the engine uses its torch code"
    cc = _compiler()
    if cc is None:
        return None, ("compiled kernels not available: no C compiler found (install gcc or set CC); "
                      "the engine uses its torch code, several times slower per moving voxel")
    target = _target()
    try:
        if target.exists():
            try:
                return _load(target), f"compiled kernels loaded from {target}"
            except (OSError, RuntimeError):
                pass  # a damaged file (truncated, half-copied): built again in its place below
        _build(cc, target)
        return _load(target), f"compiled kernels loaded from {target}"
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        # an unwritable cache: build privately for this process
        try:
            folder = Path(tempfile.mkdtemp(prefix="laugen-native-"))
            try:
                _build(cc, folder / target.name)
                lib = _load(folder / target.name)  # a loaded library stays mapped once its file is gone
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            return lib, f"compiled kernels built for this process only ({type(exc).__name__} with the cache {target.parent})"
        except (OSError, RuntimeError, subprocess.SubprocessError) as again:
            return None, f"compiled kernels not available ({again}); the engine uses its torch code"


def _target() -> Path | None:
    cc = _compiler()
    return None if cc is None else _cache_dir() / f"laugen_native_{_key(cc)}.so"


def built() -> bool:
    """Whether the library is loaded in this process or built in the cache (nothing is compiled)."""
    if _state.get("lib") is not None:
        return True
    target = _target() if enabled() else None
    return target is not None and target.exists()


def pending() -> str:
    """One line for a library not built yet: what the first use will do (nothing is compiled)."""
    if not enabled():
        return "compiled kernels off (LAUGEN_NATIVE=0): the engine uses its torch code"
    if _compiler() is None:
        return ("compiled kernels not available: no C compiler found (install gcc or set CC); "
                "the engine uses its torch code, several times slower per moving voxel")
    return f"compiled kernels not built yet: the first series builds them into {_cache_dir()} (seconds, once)"


def library() -> ctypes.CDLL | None:
    """The compiled library, built on first use (seconds, once per machine); None when it cannot
    be had (see :func:`status`). Thread-safe; the result is kept for the process."""
    with _lock:
        if "lib" not in _state or _state.get("enabled") != enabled():
            _state["lib"], _state["why"] = _open()
            _state["enabled"] = enabled()
        return _state["lib"]


def status() -> str:
    """One line: whether the compiled kernels are in use, and where from or why not."""
    library()
    return _state["why"]


def det_summary(c1, c2, c3, z_mm: float) -> tuple[float, int] | None:
    """(lowest d, count of d <= -1) of d = ((c3 z + c2) z + c1) z over three contiguous float32
    CPU tensors of one length, in one compiled pass; None when the library is not in use (the
    caller then computes it in torch: the same numbers)."""
    lib = library()
    if lib is None or not all(t.dtype == c1.dtype and t.is_contiguous() and t.device.type == "cpu" for t in (c1, c2, c3)):
        return None
    if str(c1.dtype) != "torch.float32" or not (c1.numel() == c2.numel() == c3.numel()):
        return None
    low, folded = ctypes.c_float(), ctypes.c_int64()
    lib.laugen_det_summary(c1.data_ptr(), c2.data_ptr(), c3.data_ptr(), c1.numel(), float(z_mm), ctypes.byref(low),
                           ctypes.byref(folded))
    return float(low.value), int(folded.value)
