"""Unrefined vs refined generated volumes of a slice-LDM checkpoint with a refiner: grid + numbers.

Usage (repository root): .venv/bin/python bench/results/ldm_refiner_compare.py RUN/last.pt OUT.png
"""
import sys

import numpy as np
import torch

torch.set_num_threads(1)
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from laugen_napari.training.generators import GENERATORS, split_pairs
from laugen_napari.training.ldm import draw_volume, volumes_from_folder

ck, png = sys.argv[1], sys.argv[2]
m = GENERATORS["ldm"].load(ck)
cfg = m.cfg
vs = volumes_from_folder("sample_data", cfg.size)
real, _ = draw_volume(vs, 0, cfg.depth, None)
real = ((real + 1) / 2)[None]  # (1, C, D, S, S)
n = 4
plain = m.sample_volumes(n, generator=torch.Generator().manual_seed(0), refine=False)
refined = m.sample_volumes(n, generator=torch.Generator().manual_seed(0), refine=True)

def sharp(v):  # mean gradient magnitude of the image inside the head (image > 0.1)
    im = v[:, 0]
    gy, gx = im[..., 1:, :-1] - im[..., :-1, :-1], im[..., :-1, 1:] - im[..., :-1, :-1]
    head = im[..., :-1, :-1] > 0.1
    return float((gy.pow(2) + gx.pow(2)).sqrt()[head].mean())

def adjacent(v):  # mean |slice k+1 - slice k| of the image
    return float((v[:, 0, 1:] - v[:, 0, :-1]).abs().mean())

def masks10(v):
    labs = split_pairs(v.permute(0, 2, 1, 3, 4).reshape(-1, v.shape[1], v.shape[-2], v.shape[-1]), cfg.image_channels)[1]
    px = (labs > 0).reshape(len(labs), -1).sum(1)
    return int((px >= 10).sum()), len(px)

for name, v in (("real", real), ("unrefined", plain), ("refined", refined)):
    print(f"{name:10s} sharpness {sharp(v):.4f}  adjacent-slice |diff| {adjacent(v):.4f}  slices with mask >= 10 px "
          f"{masks10(v)[0]} of {masks10(v)[1]}")
print("refiner trained steps", int(m.refiner.trained_steps), "mean |refined - unrefined|",
      float((refined[:, 0] - plain[:, 0]).abs().mean()))
idx = np.linspace(0, cfg.depth - 1, 8).round().astype(int)
rows = [("real volume (mask contours)", real[0]), ("generated volume 1, decoded (no refiner)", plain[0]),
        ("the same volume refined", refined[0]), ("generated volume 2, decoded", plain[1]), ("refined", refined[1])]
fig, axes = plt.subplots(len(rows), 8, figsize=(12, 1.6 * len(rows) + 0.4))
for r, (title, v) in enumerate(rows):
    for c, k in enumerate(idx):
        ax = axes[r, c]
        ax.axis("off")
        ax.imshow(v[0, k].numpy(), cmap="gray", vmin=0, vmax=1)
        mk = (v[1:, k].sum(0) >= 0.5).numpy()
        if mk.any():
            ax.contour(mk.astype(float), levels=[0.5], colors="r", linewidths=0.6)
    axes[r, 0].set_title(title, fontsize=8, loc="left")
fig.suptitle(f"slice LDM + {cfg.refiner} refiner ({int(m.refiner.trained_steps)} steps), slices {[int(i) for i in idx]} "
             f"of {cfg.depth}; sharpness real {sharp(real):.3f}, decoded {sharp(plain):.3f}, refined {sharp(refined):.3f}",
             fontsize=9)
fig.tight_layout()
fig.savefig(png, dpi=90)
print("wrote", png)
