"""LAUGEN as a TorchIO transform: a ``tio.Transform`` that returns a Subject.

Every intensity image of the subject (``tio.ScalarImage``, all channels) and the driving label map
(``tio.LabelMap`` named ``label_key``) become series on the same drawn trajectory, with the time
axis folded into the channel axis (``(T*C, W, H, D)``, frame-major) so that later TorchIO
transforms (flips, crops, intensity rescaling) treat every frame alike. Affines are untouched; the
ground truth z_t (mm, shape (T,)) is stored in the subject under ``z_key``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torchio as tio

from .monai import LongitudinalAugment, spacing_from_affine


class LongitudinalAugmentTio(tio.Transform):
    """TorchIO form of :class:`~laugen_napari.transforms.LongitudinalAugment`.

    Args:
        label_key: name of the ``tio.LabelMap`` that drives the deformation (it is warped too).
        z_key: subject key the ground-truth z_t (mm, ``torch.float32`` of shape (T,)) goes to.
        time_dim: ``"channel"`` (default; ``(T*C, W, H, D)``) — the only layout TorchIO's 4D
            images can hold.
        p, include, exclude, copy: as every TorchIO transform (``include``/``exclude`` choose the
            intensity images that are turned into series; the label map always is).
        **params: the generation arguments of ``LongitudinalAugment`` (kind, trajectory, frames,
            slope_range, sigma_mm, labels, direction, center, ...), defaults and checks from
            :class:`~laugen_napari.settings.GenerationSettings`. ``direction`` is a world
            direction (TorchIO affines are RAS+), ``center`` a voxel index (i, j, k) of the image.

    Seeding: like TorchIO's own random transforms, draws come from torch's global generator
    (``torch.manual_seed`` reproduces them; DataLoader workers draw differently), unless
    :meth:`set_random_state` gives the transform its own seed (then every worker still derives
    its own stream from it).
    """

    def __init__(self, label_key: str = "label", z_key: str = "z_mm", p: float = 1.0,
                 include: Sequence[str] | None = None, exclude: Sequence[str] | None = None, copy: bool = True,
                 **params: Any):
        super().__init__(p=p, include=include, exclude=exclude, copy=copy)
        params.setdefault("time_dim", "channel")
        if params["time_dim"] != "channel":
            raise ValueError("time_dim: TorchIO images are 4D (C, W, H, D); only 'channel' is possible")
        self.augment = LongitudinalAugment(keys=("image", "label"), z_key=z_key, **params)
        self.label_key = label_key
        self.z_key = z_key
        self.args_names = ["label_key", "z_key"]

    @property
    def settings(self):
        """The validated :class:`~laugen_napari.settings.GenerationSettings`."""
        return self.augment.settings

    def set_random_state(self, seed: int | None = None, state: Any = None) -> LongitudinalAugmentTio:
        """Give the transform its own seed (see ``LongitudinalAugment.set_random_state``)."""
        self.augment.set_random_state(seed, state)
        return self

    def _get_reproducing_arguments(self) -> dict:
        """TorchIO's history entry: the settings with the drawn z_t as a custom trajectory, so that
        ``subject.get_composed_history()`` rebuilds a transform giving the same series."""
        args = super()._get_reproducing_arguments()
        record = self.settings.to_record()
        for name in ("seed", "series"):
            record.pop(name)
        draw = self.augment._draw
        if draw is not None:
            record.update(trajectory="custom", values=[float(v) for v in draw.z_mm], frames=len(draw.z_mm))
        args.update({k: tuple(v) if isinstance(v, list) else v for k, v in record.items()})
        return args

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        if self.label_key not in subject or not isinstance(subject[self.label_key], tio.LabelMap):
            names = subject.get_images_names()
            raise KeyError(f"LongitudinalAugmentTio: no label map named {self.label_key!r} in the subject "
                           f"(images: {names})")
        label: tio.LabelMap = subject[self.label_key]
        others = [n for n, im in subject.get_images_dict(intensity_only=False).items()
                  if isinstance(im, tio.LabelMap) and n != self.label_key]
        if others:
            raise ValueError(f"LongitudinalAugmentTio: warps one label map ({self.label_key!r}); exclude or remove "
                             f"the others {others} before it")
        images = subject.get_images_dict(intensity_only=True, include=self.include, exclude=self.exclude)
        lab = label.data
        if lab.shape[0] != 1:
            raise ValueError(f"{self.label_key}: the label map must have one channel, got shape {tuple(lab.shape)}")
        arrays = [im.data.float() for im in images.values()]
        stacked = torch.cat(arrays) if arrays else torch.zeros((1,) + tuple(lab.shape[1:]))
        self.augment.randomize()
        aug = self.augment
        series = aug.compute(stacked.numpy(), lab[0].numpy(), spacing_from_affine(label.affine), aug._draw,
                             affine=label.affine)
        frames = series.frames
        offset = 0
        for im, arr in zip(images.values(), arrays):
            c = arr.shape[0]
            part = series.images.reshape((frames, -1) + tuple(lab.shape[1:]))[:, offset:offset + c]
            im.set_data(torch.from_numpy(np.ascontiguousarray(part.reshape((-1,) + part.shape[2:]))))
            offset += c
        label.set_data(torch.from_numpy(series.labels).to(lab.dtype))
        subject[self.z_key] = torch.from_numpy(np.asarray(series.z_mm, dtype=np.float32))
        subject.update_attributes()  # TorchIO's crops copy a subject's attributes, not its keys
        return subject
