"""Anatomical display: which world axis a view slices, which way is up, the L/R/A/P/S/I letters.

Layers opened by the plugin are in world RAS+ millimetres, napari order (z, y, x): z runs to
superior, y to anterior, x to the patient's right (see :mod:`laugen_napari.ui.layers`). The views:

- axial (slices z): anterior up; coronal (slices y) and sagittal (slices x): superior up;
- radiological convention: the patient's right on the screen's left (axial, coronal);
  neurological: the patient's right on the right. Sagittal views put anterior on the left.

:func:`show_plane` sets napari's dims order and 2D camera orientation; :class:`OrientationLetters`
keeps four canvas text overlays with the letters of the screen edges up to date.
"""

from __future__ import annotations

from typing import Any

PLANES = ("axial", "coronal", "sagittal")
CONVENTIONS = ("radiological", "neurological")

# world axis sliced by each plane, counted from the last world axis: x = 1, y = 2, z = 3
_SLICED = {"axial": 3, "coronal": 2, "sagittal": 1}
# (rows axis, columns axis) shown, counted the same way
_SHOWN = {"axial": (2, 1), "coronal": (3, 1), "sagittal": (3, 2)}
# letter at the high end of each world axis (x: right, y: anterior, z: superior) and the low end
_HIGH = {1: "R", 2: "A", 3: "S"}
_LOW = {1: "L", 2: "P", 3: "I"}


def plane_order(ndim: int, plane: str) -> tuple[int, ...]:
    """napari ``dims.order`` that shows ``plane`` for a world of ``ndim`` axes (the last three
    spatial, z y x), leading axes (time) first and kept in order."""
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {', '.join(PLANES)}, got {plane!r}")
    if ndim < 3:
        raise ValueError(f"an anatomical plane needs three spatial axes, the viewer has {ndim}")
    rows, cols = (ndim - a for a in _SHOWN[plane])
    sliced = ndim - _SLICED[plane]
    return tuple(range(ndim - 3)) + (sliced, rows, cols)


def orientation2d(plane: str, convention: str = "radiological") -> tuple[str, str]:
    """napari ``camera.orientation2d`` (vertical, horizontal) for ``plane``: the direction in
    which the row and the column index grow on screen."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
    vertical = "up"  # rows are y (anterior) in axial views and z (superior) otherwise: up
    if plane == "sagittal":
        horizontal = "left"  # columns are y: anterior on the left
    else:
        horizontal = "left" if convention == "radiological" else "right"  # columns are x (right)
    return vertical, horizontal


def edge_letters(plane: str, convention: str = "radiological") -> dict[str, str]:
    """The anatomical letter at each screen edge: keys ``top``, ``bottom``, ``left``, ``right``."""
    rows, cols = _SHOWN[plane]
    vertical, horizontal = orientation2d(plane, convention)
    top, bottom = (_HIGH[rows], _LOW[rows]) if vertical == "up" else (_LOW[rows], _HIGH[rows])
    right, left = (_HIGH[cols], _LOW[cols]) if horizontal == "right" else (_LOW[cols], _HIGH[cols])
    return {"top": top, "bottom": bottom, "left": left, "right": right}


def displayed_plane(viewer: Any) -> str | None:
    """The anatomical plane a 2D viewer shows, or None (a time axis on screen, fewer than 3 axes)."""
    ndim = int(viewer.dims.ndim)
    if ndim < 3:
        return None
    shown = tuple(ndim - a for a in viewer.dims.order[-2:])
    for plane, (rows, cols) in _SHOWN.items():
        if set(shown) == {rows, cols}:
            return plane
    return None


def show_plane(viewer: Any, plane: str, convention: str = "radiological") -> None:
    """Show ``plane`` in anatomical orientation (dims order and 2D camera orientation)."""
    order = plane_order(int(viewer.dims.ndim), plane)
    if tuple(viewer.dims.order) != order:
        viewer.dims.order = order
    camera(viewer).orientation2d = orientation2d(plane, convention)


def orient_current(viewer: Any, convention: str = "radiological") -> str | None:
    """Put the plane on screen in anatomical orientation (a transposed plane is turned back, since
    only the standard order can put anterior or superior up). Returns the plane, or None."""
    plane = displayed_plane(viewer)
    if plane is not None:
        show_plane(viewer, plane, convention)
    return plane


def camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


_POSITIONS = {"top": "top_center", "bottom": "bottom_center", "left": "middle_left", "right": "middle_right"}


class OrientationLetters:
    """Four canvas text overlays (top, bottom, left, right) naming the anatomical direction of
    each screen edge; :meth:`update` follows the plane and camera, hidden in 3D display."""

    def __init__(self, viewer: Any, font_size: float = 14, color: str = "#ffd24a"):
        from napari.components.overlays import TextOverlay

        self.viewer = viewer
        self.overlays = {}
        for edge, position in _POSITIONS.items():
            overlay = TextOverlay(text="", position=position, font_size=font_size, color=color, visible=False)
            viewer.canvas.overlays[f"laugen_orientation_{edge}"] = overlay
            self.overlays[edge] = overlay

    def letters(self) -> dict[str, str] | None:
        """The letters on screen now, or None when there is no anatomical 2D plane."""
        return self.letters_of(self.viewer)

    @staticmethod
    def letters_of(viewer: Any) -> dict[str, str] | None:
        """The anatomical letters of the screen edges of ``viewer`` (None: 3D, or not a plane)."""
        if viewer.dims.ndisplay != 2:
            return None
        plane = displayed_plane(viewer)
        if plane is None:
            return None
        ndim = int(viewer.dims.ndim)
        rows, cols = (ndim - a for a in viewer.dims.order[-2:])
        vertical, horizontal = (str(getattr(v, "value", v)) for v in camera(viewer).orientation2d)
        top, bottom = (_HIGH[rows], _LOW[rows]) if vertical == "up" else (_LOW[rows], _HIGH[rows])
        right, left = (_HIGH[cols], _LOW[cols]) if horizontal == "right" else (_LOW[cols], _HIGH[cols])
        return {"top": top, "bottom": bottom, "left": left, "right": right}

    def update(self, *_: Any) -> None:
        letters = self.letters()
        for edge, overlay in self.overlays.items():
            if letters is None:
                overlay.visible = False
            else:
                overlay.text = letters[edge]
                overlay.visible = True

    def remove(self) -> None:
        for edge in self.overlays:
            self.viewer.canvas.overlays.pop(f"laugen_orientation_{edge}", None)
