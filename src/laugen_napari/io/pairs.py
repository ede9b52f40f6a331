"""Finding image/mask pairs: the one rule shared by ``laugen dataset`` and ``laugen train``.

A *manifest* is either

- a CSV file with a header row ``image,mask[,id]`` (paths relative to the CSV's folder), or
- a folder of pairs, in one of these layouts:

  * ``NAME.nii[.gz]`` + ``NAME_seg`` / ``_segmentation`` / ``_mask`` / ``_label`` / ``_labels``
    ``.nii[.gz]`` (``-`` works as the separator too; case does not matter; a NIfTI ``.hdr``/``.img``
    pair is found by its ``.hdr``);
  * nnU-Net: ``imagesTr/NAME_0000.nii.gz`` + ``labelsTr/NAME.nii.gz``;
  * exactly two NIfTI files, one of whose names contains seg, mask or label.

Each pair has an ``id`` (the image name without its suffix, or the CSV's id column) that names its
output folder. :func:`read_pair` is the one way a pair's files are read (for ``laugen generate``,
the datasets of ``laugen train`` and the experiments): the same checks everywhere.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

NIFTI_SUFFIXES = (".nii.gz", ".nii", ".hdr")  # .hdr: the header of a NIfTI .hdr/.img pair
_MASK_SUFFIX = re.compile(r"^(?P<stem>.+?)[_-](seg|segmentation|mask|label|labels)$", re.IGNORECASE)
_MASK_WORD = re.compile(r"(seg|mask|label)", re.IGNORECASE)
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Pair:
    """One scan and its label map; ``id`` names the output folder ``OUTDIR/<id>``."""

    id: str
    image: str
    mask: str


def nifti_stem(name: str) -> str | None:
    """``name`` without its ``.nii``/``.nii.gz``/``.hdr`` suffix (any case), or None if it is not NIfTI."""
    low = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return None


def check_pair_ids(pairs: list[Pair], source: str) -> list[Pair]:
    seen: dict[str, int] = {}
    for n, p in enumerate(pairs, 1):
        if not _SAFE_ID.match(p.id):
            raise ValueError(f"{source}: pair {n}: id {p.id!r} is not a usable folder name "
                             "(letters, digits, '.', '_', '-'; not starting with '.')")
        if p.id in seen:
            raise ValueError(f"{source}: id {p.id!r} is used by pairs {seen[p.id]} and {n}")
        seen[p.id] = n
    if not pairs:
        raise ValueError(f"{source}: no image/mask pairs found")
    return pairs


def read_csv_manifest(path: str | os.PathLike) -> list[Pair]:
    """Pairs from a CSV with a header row ``image,mask[,id]``; the id defaults to the image's name
    without its NIfTI suffix. Empty rows and empty trailing cells (``a.nii,a_seg.nii,``) are fine;
    a row with more non-empty cells than the header is an error naming its line."""
    path = Path(path)
    base = path.resolve().parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [(c or "").strip().lower() for c in (reader.fieldnames or [])]
            if "image" not in columns or "mask" not in columns:
                raise ValueError(f"{path}: a manifest needs a header row with columns image,mask[,id]; got {columns}")
            pairs = []
            for row in reader:
                line = reader.line_num
                extra = [v for v in (row.pop(None, None) or []) if (v or "").strip()]
                if extra:
                    raise ValueError(f"{path}:{line}: more cells than the header's {len(columns)} columns: {extra}")
                row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
                if not any(row.values()):
                    continue
                if not row.get("image") or not row.get("mask"):
                    raise ValueError(f"{path}:{line}: empty image or mask")
                image, mask = (str(base / row[k]) for k in ("image", "mask"))  # absolute paths stay as they are
                name = Path(image).name
                if name.lower().endswith(".img"):  # the data file of a .hdr/.img pair
                    name = name[:-4] + ".hdr"
                pid = row.get("id") or nifti_stem(name) or Path(image).name
                pairs.append(Pair(pid, image, mask))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text (CSV) manifest") from None
    except csv.Error as exc:
        raise ValueError(f"{path}: unreadable CSV ({exc})") from None
    return check_pair_ids(pairs, str(path))


def find_pairs(folder: str | os.PathLike) -> list[Pair]:
    """Pairs in ``folder`` (not recursive) in the layouts of the module docstring, sorted by name.
    An image without a mask, or with several, is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder of image/mask pairs")
    if (folder / "imagesTr").is_dir() and (folder / "labelsTr").is_dir():
        labels = {nifti_stem(p.name): p for p in (folder / "labelsTr").iterdir() if nifti_stem(p.name)}
        pairs = []
        for img in sorted((folder / "imagesTr").iterdir()):
            stem = nifti_stem(img.name)
            if stem is None or img.name.startswith("."):
                continue
            case = re.sub(r"_\d{4}$", "", stem)
            if case not in labels:
                raise ValueError(f"{folder}: no labelsTr/{case}.nii.gz for imagesTr/{img.name}")
            pairs.append(Pair(case, str(img.resolve()), str(labels[case].resolve())))
        return check_pair_ids(pairs, str(folder))
    stems: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        stem = nifti_stem(f.name)
        if stem is not None and f.is_file() and not f.name.startswith("."):
            stems.setdefault(stem, f)
    lower = {s.lower(): s for s in stems}
    masks: dict[str, list[Path]] = {}
    for stem, f in stems.items():
        m = _MASK_SUFFIX.match(stem)
        if m and m.group("stem").lower() in lower:
            masks.setdefault(lower[m.group("stem").lower()], []).append(f)
    mask_files = {f for group in masks.values() for f in group}
    images = [(s, f) for s, f in stems.items() if f not in mask_files]
    if not masks and len(stems) == 2:
        named = [f for f in stems.values() if _MASK_WORD.search(f.name)]
        if len(named) == 1:
            image = next(f for f in stems.values() if f is not named[0])
            return check_pair_ids([Pair(nifti_stem(image.name), str(image.resolve()), str(named[0].resolve()))], str(folder))
    pairs, missing = [], []
    for stem, f in images:
        found = masks.get(stem, [])
        if not found:
            missing.append(f.name)
        elif len(found) > 1:
            raise ValueError(f"{folder}: {f.name} has several masks: {', '.join(m.name for m in found)}")
        else:
            pairs.append(Pair(stem, str(f.resolve()), str(found[0].resolve())))
    if missing:
        raise ValueError(f"{folder}: no mask (NAME_seg/_mask/_label.nii.gz) for {', '.join(missing[:5])}"
                         + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    return check_pair_ids(pairs, str(folder))


def read_manifest(path: str | os.PathLike) -> list[Pair]:
    """Pairs from a CSV manifest or a folder of pairs (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such manifest file or folder")
    return find_pairs(path) if path.is_dir() else read_csv_manifest(path)


def read_pair(image_path: str | os.PathLike, mask_path: str | os.PathLike, channels: bool = False):
    """Read a scan and its label map as two :class:`~laugen_napari.io.nifti.Volume` objects.

    Checks: the mask is 3D (a 2D file is one slice) with integer values (float files holding whole
    numbers are converted to int32); the image is 3D, or with ``channels`` also a 4D stack of
    modalities (NIfTI's 4th axis, returned as (C, Z, Y, X)); both share the spatial shape and the
    voxel-to-world affine. Every failure is one ``ValueError`` naming the file(s).
    """
    from ..core.labels import integer_labels
    from .nifti import check_same_grid, load_volume

    image = load_volume(image_path, ndim=None if channels else 3)
    if image.data.ndim not in (3, 4):
        raise ValueError(f"{Path(image_path).name}: expected a 3D image or a 4D stack of modalities, "
                         f"got {image.data.ndim}D")
    mask = load_volume(mask_path, ndim=3)
    check_same_grid(image, mask)
    mask.data = integer_labels(mask.data, name=f"{mask.path}: the label map")
    return image, mask
