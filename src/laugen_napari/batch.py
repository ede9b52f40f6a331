"""Many scans at once: one independent Dask task per (image, mask) pair.

A *manifest* (:mod:`laugen_napari.io.pairs`, the rule ``laugen train`` uses too) is a CSV file
or a folder of image/mask pairs. Every pair runs :func:`laugen_napari.pipeline.generate_from_files` into
``OUTDIR/<id>`` with its own seed, derived from the base seed and the pair's id, so results do not
depend on the order, the number of workers or the scheduler. A failing pair is recorded and the
others go on; ``OUTDIR/dataset.json`` lists each pair's status, where its warp first folds
(``folding``) and its warnings (from its series.json), and ``pairs_folding`` names the pairs whose
warp folds. Hidden temporaries of runs or workers killed outright are removed by the next run.

Example::

    from laugen_napari.batch import run_dataset
    from laugen_napari.io.pairs import read_manifest
    from laugen_napari.settings import GenerationSettings
    summary = run_dataset(read_manifest("pairs.csv"), "out", GenerationSettings(frames=6), workers=4)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from . import __version__
from .io.atomic import remove_stale_staging
from .io.export import SIDECAR, check_output_dir, write_json
from .io.pairs import Pair, check_pair_ids
from .pipeline import LaugenWarning, generate_from_files
from .settings import GenerationSettings

DATASET_JSON = "dataset.json"
SYNC_SCHEDULERS = ("synchronous", "sync", "single-threaded")

# (done, total, record of the pair just finished)
PairProgress = Callable[[int, int, dict], None]


# -- seeds and one pair -------------------------------------------------------------------------
def pair_seed(seed: int, pair_id: str) -> int:
    """The seed of pair ``pair_id`` in a run with base ``seed``: a 31-bit int that depends only on
    the two (not on order or scheduling); ``laugen generate --seed`` with it gives the same series."""
    digest = int.from_bytes(hashlib.sha256(pair_id.encode("utf-8")).digest()[:8], "little")
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, digest]).generate_state(1, np.uint32)
    return int(state[0] >> 1)


def run_pair(pair: Pair, outdir: str | os.PathLike, options: GenerationSettings, overwrite: bool = False) -> dict:
    """Generate the series of one pair into ``outdir/<id>`` with the pair's derived seed.

    Never raises for a bad pair: returns its record with ``status`` ``"ok"`` (and the written
    ``outputs``) or ``"error"`` (and a one-line ``error``). ``seconds`` is the wall time in s.
    """
    seed = pair_seed(options.seed, pair.id)
    record = {"id": pair.id, "image": pair.image, "mask": pair.mask, "seed": seed}
    start = time.perf_counter()
    try:
        opts = dataclasses.replace(options, seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LaugenWarning)  # recorded in series.json, reported from there
            dirs = generate_from_files(pair.image, pair.mask, Path(outdir) / pair.id, opts, overwrite=overwrite)
        record.update(status="ok", outputs=[str(d) for d in dirs], **_series_notes(dirs))
    except Exception as exc:  # a failing pair must not stop the others
        record.update(status="error", error=_one_line(exc))
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record


def _series_notes(dirs: Sequence[Path]) -> dict:
    """``folding`` (earliest first folded frame, largest folded fraction over the pair's series)
    and the distinct ``warnings`` of the series.json files in ``dirs``."""
    first, worst, notes = None, 0.0, []
    for d in dirs:
        rec = json.loads((Path(d) / SIDECAR).read_text())
        fold = rec.get("folding") or {}
        if fold.get("first_frame") is not None:
            first = fold["first_frame"] if first is None else min(first, fold["first_frame"])
        worst = max(worst, float(fold.get("max_fraction") or 0.0))
        notes += [w for w in rec.get("warnings") or [] if w not in notes]
    return {"folding": {"first_frame": first, "max_fraction": worst}, "warnings": notes}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or repr(exc)
    return f"{type(exc).__name__}: {text}"


# -- the whole dataset ----------------------------------------------------------------------------
def check_dataset_dir(outdir: str | os.PathLike, overwrite: bool, overwrite_hint: str | None = None) -> Path:
    """Refuse an ``outdir`` that exists and is not empty, unless ``overwrite`` (then pair folders
    are replaced one by one, atomically, and ``dataset.json`` is rewritten). Temporaries left in it
    by killed runs or workers (whose process is gone) are removed first."""
    if Path(outdir).is_dir():
        remove_stale_staging(outdir)
    return check_output_dir(outdir, overwrite, overwrite_hint)


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
    options: GenerationSettings | None = None,
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
    options = options or GenerationSettings()
    options.validate()
    pairs = list(pairs)
    check_pair_ids(pairs, str(manifest or "pairs"))
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
        "options": options.to_record(),
        "scheduler": scheduler or "local-cluster",
        "pairs_total": len(records),
        "pairs_ok": len(records) - len(failed),
        "pairs_failed": len(failed),
        "pairs_folding": [r["id"] for r in records if (r.get("folding") or {}).get("first_frame") is not None],
        "pairs_with_warnings": [r["id"] for r in records if r.get("warnings")],
        "seconds": round(time.perf_counter() - start, 3),
        "laugen_napari_version": __version__,
        "pairs": records,
    }
    write_json(outdir / DATASET_JSON, summary)
    return summary
