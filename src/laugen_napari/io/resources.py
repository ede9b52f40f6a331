"""What a write will need and what the machine has: free memory, free disk, and which process owns
a temporary file (so that leftovers of killed runs can be told from files still being written)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
from pathlib import Path

GB = 1024 ** 3


def human_bytes(n: float) -> str:
    """``1.2 GB``-style size (powers of 1024)."""
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1024 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"  # pragma: no cover


def available_memory() -> int | None:
    """Bytes of memory a new allocation can get without swapping out others (Linux MemAvailable
    plus free swap), or None where unknown."""
    try:
        fields = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                fields[key] = int(rest.split()[0]) * 1024
        return fields["MemAvailable"] + fields.get("SwapFree", 0)
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def existing_ancestor(path: str | os.PathLike) -> Path:
    """``path`` or its nearest existing parent folder."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable_folder(path: str | os.PathLike, what: str | None = None) -> Path:
    """Refuse (one line) a ``path`` that cannot be created or written into: its nearest existing
    ancestor must be a folder in which this process can create files. Returns that folder.

    ``os.access`` is asked first; a real probe (a temporary folder made and removed at once) then
    catches what it cannot tell: root on a read-only mount, ``/proc``, ``/sys``. ``what`` names
    the path in the message (default: the path itself).
    """
    import errno
    import tempfile

    name = what or str(path)
    folder = existing_ancestor(path)
    if not folder.is_dir():
        raise NotADirectoryError(f"{name}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{name}: the folder {folder} is not writable")
    try:
        probe = tempfile.mkdtemp(prefix=".laugen-write-probe-", dir=folder)
    except OSError as exc:
        why = " (read-only file system)" if exc.errno == errno.EROFS else ""
        raise PermissionError(f"{name}: the folder {folder} is not writable{why}") from None
    os.rmdir(probe)
    return folder


def free_disk(path: str | os.PathLike) -> int:
    """Free bytes on the file system that holds (or will hold) ``path``."""
    return int(shutil.disk_usage(existing_ancestor(path)).free)


# -- owners of temporary files ---------------------------------------------------------------------
def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks after boot (Linux), None if unknown/gone."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    try:
        return int(text.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _machine() -> str:
    """8 hex digits naming this host and PID namespace (processes are only judged on their own)."""
    try:
        ns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        ns = ""
    return hashlib.sha1(f"{socket.gethostname()}|{ns}".encode()).hexdigest()[:8]


def _boot() -> str:
    return hashlib.sha1(_read("/proc/sys/kernel/random/boot_id").encode()).hexdigest()[:8]


def owner_tag(pid: int | None = None) -> str:
    """A name fragment identifying the running process: pid, its start time, host and boot."""
    pid = os.getpid() if pid is None else int(pid)
    return f"P{pid}S{_start_ticks(pid) or 0}H{_machine()}B{_boot()}"


_TAG = re.compile(r"P(?P<pid>\d+)S(?P<start>\d+)H(?P<host>[0-9a-f]{8})B(?P<boot>[0-9a-f]{8})")


def owner_alive(tag: str) -> bool | None:
    """Whether the process named by :func:`owner_tag` text ``tag`` still runs: True, False, or
    None when it cannot be judged from here (another host or PID namespace, or no tag)."""
    m = _TAG.search(tag)
    if m is None or m["host"] != _machine():
        return None
    if m["boot"] != _boot():
        return False  # the machine was restarted since
    pid = int(m["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    except OSError:
        return None
    start = int(m["start"])
    now = _start_ticks(pid)
    if start and now is not None and now != start:
        return False  # the pid was reused by a newer process
    return True
