"""Draw docs/series.png: frames of a LAUGEN series on the sample and the difference map.

Usage: python scripts/make_figure.py [OUT.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from laugen_napari.core import Augmenter, CustomTrajectory
from laugen_napari.pipeline import load_pair

ROOT = Path(__file__).resolve().parents[1]


def main(out: Path) -> None:
    image, mask = load_pair(ROOT / "sample_data/mni152_t1.nii.gz", ROOT / "sample_data/mni152_ventricles_seg.nii.gz")
    aug = Augmenter(image.data, mask.data, image.spacing, device="cpu")
    z = [0.0, 1.0, 2.0, 3.0]
    series = aug.series(CustomTrajectory(z), frames=len(z))
    k = int(np.argmax((mask.data > 0).sum(axis=(1, 2))))
    crop = (slice(60, 175), slice(45, 155))
    fig, axes = plt.subplots(1, len(z) + 1, figsize=(3 * (len(z) + 1), 3.4), facecolor="black")
    for t, ax in enumerate(axes[:-1]):
        ax.imshow(series.images[t, k][crop], cmap="gray", origin="lower")
        ax.contour(series.labels[t, k][crop] > 0, levels=[0.5], colors="#ff5050", linewidths=0.8, origin="lower")
        vol = sum(v[t] for v in series.volumes_ml.values())
        ax.set_title(f"t = {t}: z = {z[t]:.0f} mm, {vol:.1f} mL", color="white", fontsize=9)
    diff = series.images[-1, k] - series.images[0, k]
    lim = np.abs(diff).max()
    axes[-1].imshow(diff[crop], cmap="PiYG", vmin=-lim, vmax=lim, origin="lower")
    axes[-1].set_title("I_3 - I_0", color="white", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90, facecolor="black")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "series.png")
