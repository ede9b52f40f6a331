"""Many scans at once: one independent Dask task per (image, mask) pair.

A *manifest* is a CSV file (columns ``image,mask`` and optionally ``id``; relative paths are taken
from the CSV's folder) or a folder of pairs ``NAME.nii.gz`` + ``NAME_seg.nii.gz`` (or ``_mask``,
``_label``; ``.nii`` too). Every pair runs :func:`laugen_napari.pipeline.generate_from_files` into
``OUTDIR/<id>`` with its own seed, derived from the base seed and the pair's id, so results do not
depend on the order, the number of workers or the scheduler. A failing pair is recorded and the
others go on; ``OUTDIR/dataset.json`` lists each pair's status.

Example::

    from laugen_napari.batch import read_manifest, run_dataset
    from laugen_napari.pipeline import GenerateOptions
    summary = run_dataset(read_manifest("pairs.csv"), "out", GenerateOptions(frames=6), workers=4)
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from . import __version__
from .io.export import check_output_dir
from .io.nifti import NIFTI_SUFFIXES
from .pipeline import GenerateOptions, generate_from_files

DATASET_JSON = "dataset.json"
MASK_SUFFIXES = ("_seg", "_mask", "_label")
SYNC_SCHEDULERS = ("synchronous", "sync", "single-threaded")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# (done, total, record of the pair just finished)
PairProgress = Callable[[int, int, dict], None]


@dataclass(frozen=True)
class Pair:
    """One scan and its label map; ``id`` names the output folder ``OUTDIR/<id>``."""

    id: str
    image: str
    mask: str


# -- manifests ------------------------------------------------------------------------------------
def _strip_nifti(name: str) -> str | None:
    low = name.lower()
    for suffix in sorted(NIFTI_SUFFIXES, key=len, reverse=True):
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _check_ids(pairs: list[Pair], source: str) -> list[Pair]:
    seen: dict[str, int] = {}
    for n, p in enumerate(pairs, 1):
        if not _SAFE_ID.match(p.id):
            raise ValueError(f"{source}: pair {n}: id {p.id!r} is not a usable folder name "
                             "(letters, digits, '.', '_', '-'; not starting with '.')")
        if p.id in seen:
            raise ValueError(f"{source}: id {p.id!r} is used by pairs {seen[p.id]} and {n}")
        seen[p.id] = n
    if not pairs:
        raise ValueError(f"{source}: no pairs found")
    return pairs


def read_csv_manifest(path: str | os.PathLike) -> list[Pair]:
    """Pairs from a CSV with a header row ``image,mask[,id]``; the id defaults to the image's name
    without its NIfTI suffix. Files are not opened here (a missing file fails only its pair)."""
    path = Path(path)
    base = path.resolve().parent
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = [c.strip().lower() for c in (reader.fieldnames or [])]
        if "image" not in columns or "mask" not in columns:
            raise ValueError(f"{path}: a manifest needs a header row with columns image,mask[,id]; got {columns}")
        pairs = []
        for n, row in enumerate(reader, 2):
            row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
            if not any(row.values()):
                continue
            if not row.get("image") or not row.get("mask"):
                raise ValueError(f"{path}:{n}: empty image or mask")
            image, mask = (str(base / row[k]) for k in ("image", "mask"))  # absolute paths stay as they are
            pid = row.get("id") or _strip_nifti(Path(image).name) or Path(image).name
            pairs.append(Pair(pid, image, mask))
    return _check_ids(pairs, str(path))


def read_folder_manifest(folder: str | os.PathLike) -> list[Pair]:
    """Pairs ``NAME.nii[.gz]`` + ``NAME_seg``/``_mask``/``_label`` ``.nii[.gz]`` in ``folder`` (not
    recursive), sorted by name. An image without a mask is an error."""
    folder = Path(folder)
    stems = {}
    for f in sorted(folder.iterdir()):
        stem = _strip_nifti(f.name)
        if stem is not None and f.is_file() and not f.name.startswith("."):
            stems.setdefault(stem, f)
    masks = {s for s in stems if s.endswith(MASK_SUFFIXES) and s.rsplit("_", 1)[0] in stems}
    pairs, missing = [], []
    for stem, f in stems.items():
        if stem in masks:
            continue
        found = [stems[stem + s] for s in MASK_SUFFIXES if stem + s in stems]
        if not found:
            missing.append(f.name)
        elif len(found) > 1:
            raise ValueError(f"{folder}: {f.name} has several masks: {', '.join(m.name for m in found)}")
        else:
            pairs.append(Pair(stem, str(f.resolve()), str(found[0].resolve())))
    if missing:
        raise ValueError(f"{folder}: no mask (NAME_seg/_mask/_label.nii.gz) for {', '.join(missing[:5])}"
                         + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    return _check_ids(pairs, str(folder))


def read_manifest(path: str | os.PathLike) -> list[Pair]:
    """Pairs from a CSV manifest or a folder of pairs (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such manifest file or folder")
    return read_folder_manifest(path) if path.is_dir() else read_csv_manifest(path)


# -- seeds and one pair -------------------------------------------------------------------------
def pair_seed(seed: int, pair_id: str) -> int:
    """The seed of pair ``pair_id`` in a run with base ``seed``: a 31-bit int that depends only on
    the two (not on order or scheduling); ``laugen generate --seed`` with it gives the same series."""
    digest = int.from_bytes(hashlib.sha256(pair_id.encode("utf-8")).digest()[:8], "little")
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, digest]).generate_state(1, np.uint32)
    return int(state[0] >> 1)


def run_pair(pair: Pair, outdir: str | os.PathLike, options: GenerateOptions, overwrite: bool = False) -> dict:
    """Generate the series of one pair into ``outdir/<id>`` with the pair's derived seed.

    Never raises for a bad pair: returns its record with ``status`` ``"ok"`` (and the written
    ``outputs``) or ``"error"`` (and a one-line ``error``). ``seconds`` is the wall time in s.
    """
    seed = pair_seed(options.seed, pair.id)
    record = {"id": pair.id, "image": pair.image, "mask": pair.mask, "seed": seed}
    start = time.perf_counter()
    try:
        opts = dataclasses.replace(options, seed=seed)
        dirs = generate_from_files(pair.image, pair.mask, Path(outdir) / pair.id, opts, overwrite=overwrite)
        record.update(status="ok", outputs=[str(d) for d in dirs])
    except Exception as exc:  # a failing pair must not stop the others
        record.update(status="error", error=_one_line(exc))
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or repr(exc)
    return f"{type(exc).__name__}: {text}"


# -- the whole dataset ----------------------------------------------------------------------------
def check_dataset_dir(outdir: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an ``outdir`` that exists and is not empty, unless ``overwrite`` (then pair folders
    are replaced one by one, atomically, and ``dataset.json`` is rewritten)."""
    return check_output_dir(outdir, overwrite)


@contextmanager
def local_cluster_client(workers: int) -> Iterator["distributed.Client"]:  # noqa: F821
    """A ``dask.distributed`` client on a fresh local cluster: ``workers`` processes with one
    thread each, OpenMP single-threaded and passive (no spinning between tasks)."""
    import dask
    from distributed import Client, LocalCluster

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    environ.update({"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OMP_WAIT_POLICY": "PASSIVE"})
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


def _run_distributed(client, pairs, outdir, options, overwrite, on_done) -> list[dict]:
    from distributed import as_completed

    Path(outdir).mkdir(parents=True, exist_ok=True)  # only once a cluster is there
    futures = client.map(run_pair, pairs, outdir=str(outdir), options=options, overwrite=overwrite,
                         key=[f"laugen-pair-{p.id}" for p in pairs], pure=False, retries=0)
    index = {f.key: i for i, f in enumerate(futures)}
    records: list[dict | None] = [None] * len(pairs)
    try:
        for fut in as_completed(futures):
            i = index[fut.key]
            try:
                rec = fut.result()
            except Exception as exc:  # the worker died (memory, signal) or could not import the task
                p = pairs[i]
                rec = {"id": p.id, "image": p.image, "mask": p.mask, "seed": pair_seed(options.seed, p.id),
                       "status": "error", "error": _one_line(exc)}
            records[i] = rec
            on_done(rec)
    finally:
        client.cancel([f for f in futures if not f.done()])
    return records  # type: ignore[return-value]


def _run_local(pairs, outdir, options, overwrite, on_done, scheduler: str) -> list[dict]:
    import dask
    from dask.callbacks import Callback

    Path(outdir).mkdir(parents=True, exist_ok=True)
    tasks = [dask.delayed(run_pair, pure=False)(p, str(outdir), options, overwrite, dask_key_name=f"laugen-pair-{p.id}")
             for p in pairs]

    class _Done(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            if isinstance(result, dict) and "status" in result:
                on_done(result)

    with _Done():
        return list(dask.compute(*tasks, scheduler=scheduler))


def run_dataset(
    pairs: Sequence[Pair],
    outdir: str | os.PathLike,
    options: GenerateOptions | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: PairProgress | None = None,
    manifest: str | os.PathLike | None = None,
) -> dict:
    """Generate every pair as an independent Dask task and write ``outdir/dataset.json``.

    Args:
        pairs: from :func:`read_manifest`.
        outdir: output folder; pair ``p`` goes to ``outdir/<p.id>``.
        options: generation parameters; ``options.seed`` is the base seed of :func:`pair_seed`.
        scheduler: None for a local cluster of ``workers`` processes, ``"synchronous"`` to run in
            this process (debugging, tests), ``"threads"``, or the address of a running
            ``dask.distributed`` scheduler (``tcp://host:8786``; paths must be visible to its workers
            and laugen-napari installed there).
        workers: local cluster processes (default: CPU count, at most the number of pairs).
        overwrite: replace existing pair folders.
        progress: ``progress(done, total, record)`` after every pair, in completion order.
        manifest: recorded in dataset.json.

    Returns the dataset record (also written to dataset.json), pairs in manifest order with
    ``status`` ``"ok"`` or ``"error"``.
    """
    options = options or GenerateOptions()
    options.validate()
    pairs = list(pairs)
    _check_ids(pairs, str(manifest or "pairs"))
    outdir = check_dataset_dir(outdir, overwrite)
    if workers is not None and int(workers) < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    done = 0

    def on_done(record: dict) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, len(pairs), record)

    start = time.perf_counter()
    if scheduler in SYNC_SCHEDULERS or scheduler == "threads":
        mode = "synchronous" if scheduler in SYNC_SCHEDULERS else "threads"
        records = _run_local(pairs, outdir, options, overwrite, on_done, mode)
    elif scheduler is None:
        n = int(workers or min(len(pairs), os.cpu_count() or 1))
        with local_cluster_client(max(1, min(n, len(pairs)))) as client:
            records = _run_distributed(client, pairs, outdir, options, overwrite, on_done)
    else:
        from distributed import Client

        try:
            client = Client(scheduler)
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"--scheduler {scheduler}: cannot connect to a Dask scheduler ({_one_line(exc)})") from None
        with client:
            records = _run_distributed(client, pairs, outdir, options, overwrite, on_done)
    failed = [r for r in records if r["status"] != "ok"]
    summary = {
        "manifest": None if manifest is None else str(Path(manifest).resolve()),
        "base_seed": options.seed,
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(options).items()},
        "scheduler": scheduler or "local-cluster",
        "pairs_total": len(records),
        "pairs_ok": len(records) - len(failed),
        "pairs_failed": len(failed),
        "seconds": round(time.perf_counter() - start, 3),
        "laugen_napari_version": __version__,
        "pairs": records,
    }
    tmp = outdir / (DATASET_JSON + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, outdir / DATASET_JSON)
    return summary
