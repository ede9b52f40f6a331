"""Every rule between a :class:`~laugen_napari.io.nifti.Volume` and a napari layer, in one place.

napari shows a volume (…, Z, Y, X) in world millimetres through the layer's ``scale`` (the voxel
size) and ``translate`` (the world position of voxel 0), both in (z, y, x) order. The closest-RAS
array of a :class:`Volume` makes that exact for every oblique-free file; an oblique file also gets
the remaining rotation (``rotate``). The file's own affine and header travel with the layer in
``layer.metadata["laugen_volume"]`` as a *geometry-only* Volume (its ``data`` is a zero-strided
array of the right shape, no memory), so that a writer puts the file's orientation, affine and
header back.

Rules:

- ``volume_layer_data`` — a Volume to a napari layer-data tuple (``scale``/``translate`` from the
  geometry, metadata with the geometry; 4D data get a leading time axis with step 1 and offset 0).
- ``series_layer_kwargs`` — the same transform for a series layer (T, Z, Y, X) or any number of
  leading axes, from a Volume or from the image layer it overlays.
- ``volume_from_layer`` / ``volume_from_layer_data`` — a Volume back from a layer. The geometry in
  the metadata is used when it still fits the layer (same spatial shape, spacing and origin). A
  layer drawn from scratch has none: it takes the geometry of a reference layer (given, or the
  first layer in the viewer with the same spatial shape, scale and translate that has one); with
  no such layer, a RAS geometry is built from its own scale and translate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..io.nifti import Volume, check_same_grid, geometry_from_affine, load_volume

LAUGEN_VOLUME = "laugen_volume"
"""Layer metadata key holding the geometry-only :class:`Volume`."""

_RTOL = 1e-5
_ATOL_MM = 1e-4

LayerDataTuple = tuple  # (data, kwargs, layer_type)


# -- Volume -> layer -----------------------------------------------------------------------------
def geometry_only(volume: Volume) -> Volume:
    """A copy of ``volume``'s geometry (affines, header, path, spatial shape and dtype) whose data
    are a read-only zero-strided (Z, Y, X) array taking no memory."""
    data = np.broadcast_to(np.zeros((), dtype=volume.data.dtype), volume.spatial_shape)
    return Volume(data, np.array(volume.affine, dtype=np.float64), np.array(volume.file_affine, dtype=np.float64),
                  volume.header.copy(), volume.path)


def rotation_zyx(volume: Volume) -> np.ndarray:
    """The direction matrix of ``volume`` in napari's (z, y, x) world order (identity when the file
    is oblique-free, since arrays are in the closest-RAS orientation)."""
    lin = np.asarray(volume.affine, dtype=np.float64)[:3, :3][::-1]  # rows: world z, y, x
    return lin / np.linalg.norm(lin, axis=0)


def is_oblique(volume: Volume, atol: float = 1e-6) -> bool:
    """Whether the volume's axes are not aligned with the world axes."""
    return not np.allclose(rotation_zyx(volume), np.eye(3), atol=atol)


def transform_kwargs(volume: Volume, leading: int = 0) -> dict[str, Any]:
    """``scale`` and ``translate`` (and ``rotate`` for an oblique file) for a layer whose data are
    ``leading`` extra axes (time, ...) followed by the volume's (Z, Y, X)."""
    kwargs: dict[str, Any] = {
        "scale": (1.0,) * leading + tuple(volume.spacing),
        "translate": (0.0,) * leading + tuple(volume.origin),
    }
    if is_oblique(volume):
        rot = np.eye(leading + 3)
        rot[leading:, leading:] = rotation_zyx(volume)
        kwargs["rotate"] = rot
    return kwargs


def volume_layer_data(
    volume: Volume,
    layer_type: str = "image",
    name: str | None = None,
    **kwargs: Any,
) -> LayerDataTuple:
    """A napari layer-data tuple ``(data, kwargs, layer_type)`` for ``volume``: time (or any
    leading axes) first, ``scale`` = spacing, ``translate`` = origin, and the geometry in
    ``metadata["laugen_volume"]``. Extra ``kwargs`` are passed to the layer."""
    leading = volume.data.ndim - 3
    if leading < 0:
        raise ValueError(f"a volume needs at least 3 axes (Z, Y, X), got shape {volume.data.shape}")
    meta = dict(kwargs.pop("metadata", None) or {})
    meta[LAUGEN_VOLUME] = geometry_only(volume)
    layer_kwargs: dict[str, Any] = {**transform_kwargs(volume, leading), "metadata": meta}
    if name is not None:
        layer_kwargs["name"] = name
    layer_kwargs.update(kwargs)
    return volume.data, layer_kwargs, layer_type


def series_layer_kwargs(source: Any, leading: int = 1) -> dict[str, Any]:
    """``scale``, ``translate``, ``rotate``, ``shear``, ``affine`` and ``metadata`` for a layer of
    ``leading`` extra axes (a series: (T, Z, Y, X)) that overlays ``source`` exactly.

    ``source`` is a :class:`Volume` (its file geometry) or a napari layer: then its *whole*
    data-to-world transform is copied (scale, translate, rotation, shear and the extra affine,
    each extended by identity on the leading axes), so the series sits on the layer even when the
    file is oblique or sheared or the user moved the layer. Pass the result to
    ``viewer.add_image(series, **series_layer_kwargs(image))``.
    """
    if isinstance(source, Volume):
        kwargs = transform_kwargs(source, leading)
        kwargs["metadata"] = {LAUGEN_VOLUME: geometry_only(source)}
        return kwargs
    kwargs = layer_transform_kwargs(source, leading)
    kwargs["metadata"] = {LAUGEN_VOLUME: geometry_only(layer_geometry(source))}
    return kwargs


def _embed(matrix: np.ndarray, leading: int) -> np.ndarray:
    n = matrix.shape[0]
    out = np.eye(n + leading)
    out[leading:, leading:] = matrix
    return out


def layer_transform_kwargs(layer: Any, leading: int = 1) -> dict[str, Any]:
    """The transform keyword arguments of ``layer`` (its last three axes) for a layer with
    ``leading`` extra axes in front: same world position for every voxel."""
    nd = int(layer.ndim)
    keep = min(nd, 3)
    scale = np.asarray(layer.scale, dtype=np.float64)[-keep:]
    translate = np.asarray(layer.translate, dtype=np.float64)[-keep:]
    rotate = np.asarray(layer.rotate, dtype=np.float64)[-keep:, -keep:]
    shear = np.asarray(layer.shear, dtype=np.float64)
    if shear.ndim == 1:  # upper-triangular values, row by row
        full = np.eye(nd)
        full[np.triu_indices(nd, 1)] = shear
        shear = full
    shear = shear[-keep:, -keep:]
    affine = np.asarray(layer.affine.affine_matrix, dtype=np.float64)
    linear, offset = affine[:-1, :-1][-keep:, -keep:], affine[:-1, -1][-keep:]
    aff = np.eye(keep + 1)
    aff[:keep, :keep], aff[:keep, -1] = linear, offset
    aff_full = np.eye(keep + leading + 1)
    aff_full[leading:, leading:] = aff
    return {
        "scale": (1.0,) * leading + tuple(float(v) for v in scale),
        "translate": (0.0,) * leading + tuple(float(v) for v in translate),
        "rotate": _embed(rotate, leading),
        "shear": _embed(shear, leading),
        "affine": aff_full,
    }


# -- layer -> Volume -----------------------------------------------------------------------------
CHEAP_READ_VOXELS = 1 << 24
"""The most voxels of an in-memory layer array that a dock reads whole on the viewer's thread
(a count or a copy: about 20 ms)."""


def cheap_to_read(data: Any) -> bool:
    """Whether a layer's data may be read whole on the viewer's thread: an in-memory numpy array of
    at most :data:`CHEAP_READ_VOXELS` voxels. A lazy array (dask, zarr, a file map: napari reads
    it plane by plane) or a larger one is read on a worker, so the screen never waits for it."""
    return isinstance(data, np.ndarray) and data.size <= CHEAP_READ_VOXELS


def _layer_array(data: Any) -> Any:
    """Level 0 (the finest) of multiscale data (a list of arrays, or napari's MultiScaleData, whose
    ``np.asarray`` would give the coarsest level), else the data themselves (not computed)."""
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)) and len(data) and hasattr(data[0], "shape"):
        return data[0]
    return data


def voxel_spacing_mm(layer: Any) -> tuple[float, float, float]:
    """Voxel size (z, y, x) in mm of a layer's last three axes: the lengths of the columns of its
    whole data-to-world matrix (extra affine · rotate · shear · scale), so an oblique, sheared or
    flipped (negative scale) layer gives its true, positive spacing."""
    matrix = _meta_matrix(_layer_meta(layer), int(layer.ndim))
    return tuple(float(v) for v in np.linalg.norm(matrix[:3, :3], axis=0))


def layer_input(layer: Any) -> Any:
    """What a background job needs of a layer, taken on the viewer's thread without reading data:
    ``data`` (level 0, not computed), ``scale`` (:func:`voxel_spacing_mm`) and ``name``."""
    from types import SimpleNamespace

    return SimpleNamespace(data=_layer_array(layer.data), scale=voxel_spacing_mm(layer), name=layer.name)


def check_layers_on_one_grid(image: Any, labels: Any, viewer: Any = None) -> tuple[Volume, Volume]:
    """The geometries of an image layer and of the labels layer that should lie on it (no data
    read). Raises ``ValueError`` naming both layers unless they put every voxel at the same world
    position: each geometry is the whole transform napari draws (rotate, shear and affine
    included, see :func:`geometry_of_layer`), so the same shape and array affine is the same grid."""
    image_geo = geometry_of_layer(image, viewer=viewer)
    mask_geo = geometry_of_layer(labels, reference=image_geo, viewer=viewer)
    try:
        check_same_grid(image_geo, mask_geo)
    except ValueError:
        raise ValueError(f"{image.name!r} {image_geo.spatial_shape} and {labels.name!r} {mask_geo.spatial_shape} are "
                         "not on the same grid (shape, scale, translate, rotation)") from None
    return image_geo, mask_geo


def _meta_matrix(meta: dict[str, Any], ndim: int) -> np.ndarray:
    """The 4x4 data-to-world matrix (napari's world: z, y, x mm) of the last three axes of a layer
    described by its state ``meta`` (``scale``, ``translate`` and, when set, ``rotate``, ``shear``,
    ``affine``): what napari draws, so a transform set in the viewer is part of the geometry."""
    from types import SimpleNamespace

    affine = meta.get("affine")
    matrix = getattr(affine, "affine_matrix", affine)
    state = SimpleNamespace(
        ndim=ndim, scale=meta.get("scale") or (1.0,) * ndim, translate=meta.get("translate") or (0.0,) * ndim,
        rotate=np.eye(ndim) if meta.get("rotate") is None else meta["rotate"],
        shear=np.zeros(ndim * (ndim - 1) // 2) if meta.get("shear") is None else meta["shear"],
        affine=SimpleNamespace(affine_matrix=np.eye(ndim + 1) if matrix is None else matrix))
    t = layer_transform_kwargs(state, leading=0)
    k = len(t["scale"])
    linear = np.asarray(t["affine"])[:k, :k] @ np.asarray(t["rotate"]) @ np.asarray(t["shear"]) @ np.diag(t["scale"])
    offset = np.asarray(t["affine"])[:k, :k] @ np.asarray(t["translate"]) + np.asarray(t["affine"])[:k, -1]
    out = np.eye(4)
    out[3 - k : 3, 3 - k : 3], out[3 - k : 3, 3] = linear, offset  # a 2D layer is one plane at z = 0
    return out


def _geometry_fits(geometry: Volume, shape: Sequence[int], matrix: np.ndarray) -> bool:
    """Whether ``geometry`` puts data of ``shape`` where the data-to-world ``matrix`` (z, y, x
    world) puts them: same spatial shape, same voxel axes, same origin."""
    world_xyz = matrix[:3][::-1]  # rows world x, y, z; columns array z, y, x
    return (
        tuple(int(n) for n in shape[-3:]) == geometry.spatial_shape
        and np.allclose(world_xyz[:, :3], geometry.affine[:3, :3], rtol=_RTOL, atol=_ATOL_MM)
        and np.allclose(world_xyz[:, 3], geometry.affine[:3, 3], rtol=_RTOL, atol=_ATOL_MM)
    )


def _meta_geometry(metadata: dict | None) -> Volume | None:
    geometry = (metadata or {}).get(LAUGEN_VOLUME)
    return geometry if isinstance(geometry, Volume) else None


def _layer_state(layer: Any) -> tuple[tuple[int, ...], np.ndarray, dict]:
    data = _layer_array(layer.data)
    shape = tuple(int(n) for n in data.shape)
    if getattr(layer, "rgb", False):
        shape = shape[:-1]
    return shape, _meta_matrix(_layer_meta(layer), len(shape)), dict(layer.metadata or {})


def layer_geometry(layer: Any) -> Volume:
    """The geometry of one layer alone: its metadata geometry when it still fits, else a RAS
    geometry from its scale and translate."""
    shape, matrix, metadata = _layer_state(layer)
    if len(shape) < 2:
        raise ValueError(f"layer {layer.name!r} has {len(shape)} axis; a volume needs (Z, Y, X)")
    geometry = _meta_geometry(metadata)
    if geometry is not None and _geometry_fits(geometry, _spatial_shape(shape), matrix):
        return geometry
    return matrix_geometry(_spatial_shape(shape), matrix)


def matrix_geometry(shape: Sequence[int], matrix: np.ndarray) -> Volume:
    """The geometry-only Volume of data of spatial ``shape`` (Z, Y, X) that napari draws with the
    data-to-world ``matrix`` (4x4, world z, y, x in mm): no array of that shape is made (100 MB
    for a CT volume, on the viewer's thread). Its file axes are the array's (X, Y, Z); a rotation
    or shear set in the viewer becomes an oblique affine. Raises ``ValueError`` when the matrix
    flips an axis, turns one by 45 degrees or more, or collapses one (see
    :func:`~laugen_napari.io.nifti.geometry_from_affine`): a one-line refusal beats a misplaced file."""
    affine = np.eye(4)
    affine[:3] = np.asarray(matrix, dtype=np.float64)[:3][::-1]  # rows world x, y, z; columns array z, y, x
    try:
        return geometry_from_affine(shape, affine)
    except ValueError as exc:
        scale = tuple(round(float(v), 6) for v in np.diag(np.asarray(matrix)[:3, :3]))
        raise ValueError(f"a layer with scale {scale} mm whose voxel axes are not the world's up to a turn below 45 "
                         f"degrees ({exc}) has no volume geometry; flip its data (numpy.flip) and give it a positive "
                         "scale") from None


def ras_geometry(shape: Sequence[int], scale: Sequence[float], translate: Sequence[float]) -> Volume:
    """The geometry-only Volume that :func:`~laugen_napari.io.nifti.volume_from_array` gives an
    array of spatial ``shape`` (Z, Y, X) with voxel size ``scale`` and origin ``translate`` (mm),
    without making an array of that shape."""
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = np.diag([float(v) for v in scale]), [float(v) for v in translate]
    return matrix_geometry(shape, matrix)


def _spatial_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(n) for n in shape)
    return (1,) * (3 - len(shape[-3:])) + shape[-3:]


def find_reference_layer(shape: Sequence[int], matrix: np.ndarray, layers: Iterable[Any],
                         exclude: Any = None) -> Any | None:
    """The first layer in ``layers`` (Image layers first) that carries a geometry fitting the
    spatial ``shape`` and data-to-world ``matrix`` (the last three axes) — the image a layer drawn
    from scratch was drawn on."""
    candidates = [lay for lay in layers if lay is not exclude]
    candidates.sort(key=lambda lay: "Image" not in {c.__name__ for c in type(lay).__mro__})  # stable: images first
    target = _spatial_shape(shape)
    for lay in candidates:
        try:
            geometry = _meta_geometry(lay.metadata)
            lshape, lmatrix, _ = _layer_state(lay)
        except Exception:  # noqa: BLE001 - any layer napari holds may be odd: it is just not the reference
            continue
        if geometry is None or not _geometry_fits(geometry, _spatial_shape(lshape), lmatrix):
            continue
        if _geometry_fits(geometry, target, matrix):
            return lay
    return None


def volume_from_layer_data(
    data: Any,
    meta: dict[str, Any],
    reference: Any = None,
    layers: Iterable[Any] | None = None,
) -> Volume:
    """A :class:`Volume` from napari layer data and its state dict (what a writer receives:
    ``scale``, ``translate``, ``metadata``, …).

    Geometry, in order: the layer's own metadata geometry when it fits its shape, scale and
    translate; else that of ``reference`` (a layer or a Volume) when it fits; else that of the
    first fitting layer in ``layers``; else a RAS geometry from the layer's scale and translate.
    The data are computed (``np.asarray``) and keep their dtype; 2D data become (1, Y, X).
    """
    arr = np.asarray(_layer_array(data))
    return _volume_from(arr, meta, _geometry_candidates(_image_shape(arr.shape, meta), meta, reference, layers))


def _image_shape(shape: Sequence[int], meta: dict[str, Any]) -> tuple[int, ...]:
    if meta.get("rgb"):
        raise ValueError("RGB layers cannot be written as a volume; convert the layer to grey values first")
    shape = tuple(int(n) for n in shape)
    if len(shape) < 2:
        raise ValueError(f"layer data of shape {shape} are not an image (at least 2 axes expected)")
    return (1,) + shape if len(shape) == 2 else shape


def _geometry_candidates(shape: Sequence[int], meta: dict[str, Any], reference: Any,
                         layers: Iterable[Any] | None) -> list[Volume]:
    """The geometries to try, in order, for data of ``shape`` (see :func:`volume_from_layer_data`);
    reads layer state only, never layer data."""
    matrix = _meta_matrix(meta, len(shape))
    candidates: list[Volume] = []
    own = _meta_geometry(meta.get("metadata"))
    if own is not None:
        candidates.append(own)
    if isinstance(reference, Volume):
        candidates.append(reference)
    elif reference is not None:
        candidates.append(layer_geometry(reference))
    if layers is not None:
        found = find_reference_layer(shape, matrix, layers)
        if found is not None:
            candidates.append(_meta_geometry(found.metadata))
    return candidates


def _volume_from(arr: np.ndarray, meta: dict[str, Any], candidates: list[Volume]) -> Volume:
    matrix = _meta_matrix(meta, arr.ndim)
    arr = arr[None] if arr.ndim == 2 else arr
    for geometry in candidates:
        if _geometry_fits(geometry, arr.shape, matrix):
            out = geometry.like(arr)
            out.path = geometry.path
            return out
    return matrix_geometry(arr.shape[-3:], matrix).like(arr)


def _layer_meta(layer: Any) -> dict[str, Any]:
    """The layer state a writer receives (``scale``, ``translate``, ``rotate``, ``shear``, ``affine``,
    ``metadata``, ``rgb``)."""
    return {"scale": tuple(layer.scale), "translate": tuple(layer.translate), "rotate": np.asarray(layer.rotate),
            "shear": np.asarray(layer.shear), "affine": np.asarray(layer.affine.affine_matrix),
            "metadata": dict(layer.metadata or {}), "rgb": bool(getattr(layer, "rgb", False))}


def _other_layers(layer: Any, viewer: Any) -> list[Any] | None:
    return [lay for lay in viewer.layers if lay is not layer] if viewer is not None else None


def volume_from_layer(layer: Any, reference: Any = None, viewer: Any = None) -> Volume:
    """A :class:`Volume` with ``layer``'s data (computed) and its file geometry (see
    :func:`volume_from_layer_data`); ``viewer`` supplies the layers to search for a layer drawn
    from scratch. The Volume's ``path`` is that of the file the geometry came from, if any."""
    return volume_from_layer_data(layer.data, _layer_meta(layer), reference=reference,
                                  layers=_other_layers(layer, viewer))


def volume_reader(layer: Any, reference: Any = None, viewer: Any = None) -> Callable[[], Volume]:
    """:func:`volume_from_layer` in two steps, for a worker thread: the layer state and the
    geometry (cheap, reads no data) now, on the caller's thread; the data when the returned function
    is called (the layer's array, computed with ``np.asarray``; copies, if any, happen there)."""
    meta = _layer_meta(layer)
    data = _layer_array(layer.data)
    candidates = _geometry_candidates(_image_shape(data.shape, meta), meta, reference, _other_layers(layer, viewer))
    return lambda: _volume_from(np.asarray(data), meta, candidates)


def geometry_of_layer(layer: Any, reference: Any = None, viewer: Any = None) -> Volume:
    """The geometry :func:`volume_from_layer` gives ``layer`` (affines, header, spatial shape) as a
    geometry-only Volume, from the layer's state alone: its data are never read (for a voxel index
    on the viewer's thread, e.g. a click, whatever the size or laziness of the layer)."""
    meta = _layer_meta(layer)
    data_shape = _layer_array(layer.data).shape
    shape = _image_shape(data_shape, meta)
    matrix = _meta_matrix(meta, len(data_shape) - (1 if meta["rgb"] else 0))
    for geometry in _geometry_candidates(shape, meta, reference, _other_layers(layer, viewer)):
        if _geometry_fits(geometry, shape, matrix):
            return geometry_only(geometry)
    return matrix_geometry(_spatial_shape(shape), matrix)


def source_unchanged(volume: Volume) -> bool:
    """Whether ``volume.path`` names a readable file whose voxel data equal ``volume.data`` (so
    that the file may be cited as the source of the data, e.g. in a series' sidecar)."""
    if volume.path is None or not Path(volume.path).is_file():
        return False
    try:
        on_disk = load_volume(volume.path)
    except (OSError, ValueError):
        return False
    return (
        on_disk.data.shape == volume.data.shape
        and np.allclose(on_disk.file_affine, volume.file_affine, atol=1e-6)
        and np.array_equal(on_disk.data, volume.data)
    )


# -- the plane on screen -------------------------------------------------------------------------
class PlaneOnScreen:
    """The 2D plane of a layer that the viewer shows, in the layer's own axes.

    ``leading`` axes (time of a (T, Z, Y, X) series) are kept whole; the two displayed axes are
    ``rows`` and ``cols`` (layer axis numbers, rows first as napari draws them); every other axis
    is fixed at the index under the viewer's current point.
    """

    def __init__(self, layer: Any, viewer: Any, leading: int = 1):
        dims = viewer.dims
        ndim = int(layer.ndim)
        offset = int(dims.ndim) - ndim
        order = [int(a) - offset for a in dims.order]
        shown = order[-2:]  # in 3D display, the plane of the last two displayed axes
        if any(a < 0 for a in shown):
            raise ValueError(f"layer {layer.name!r} does not span the displayed axes")
        if any(a < leading for a in shown):
            raise ValueError("a time axis is displayed; show a spatial plane (e.g. roll or transpose the dims)")
        self.rows, self.cols = shown
        point = np.asarray(layer.world_to_data(np.asarray(dims.point, dtype=np.float64)), dtype=np.float64)
        shape = _layer_array(layer.data).shape
        self.index: list[Any] = []
        for axis in range(ndim):
            if axis < leading or axis in shown:
                self.index.append(slice(None))
            else:
                self.index.append(int(np.clip(np.round(point[axis]), 0, shape[axis] - 1)))
        self.leading = leading
        scale = np.asarray(layer.scale, dtype=np.float64)
        self.pixel_mm = (float(scale[self.rows]), float(scale[self.cols]))
        scene = getattr(viewer, "scene", None)
        cam = scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera
        orientation = getattr(cam, "orientation2d", ("down", "right"))
        self.flip_rows = str(getattr(orientation[0], "value", orientation[0])) == "up"
        self.flip_cols = str(getattr(orientation[1], "value", orientation[1])) == "left"

    def take(self, data: Any, *lead: int) -> np.ndarray:
        """The plane (rows, cols) of ``data`` (a layer's data) at leading indices ``lead``."""
        index = tuple(list(lead) + self.index[len(lead):])
        plane = np.asarray(_layer_array(data)[index])
        if plane.ndim != 2:
            raise ValueError(f"expected a plane, got shape {plane.shape}; give an index for every leading axis")
        return plane.T if self.rows > self.cols else plane

    def fixed(self) -> dict[int, int]:
        """Layer axis -> index of the axes held fixed."""
        return {a: i for a, i in enumerate(self.index) if isinstance(i, int)}
