"""Draw docs/series.png: frames of a LAUGEN series on the sample and the difference map, in
anatomical orientation (axial, anterior up, radiological: the patient's right on the left).

Usage: python scripts/make_figure.py [OUT.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from laugen_napari.pipeline import build_augmenter, load_pair
from laugen_napari.settings import GenerationSettings

ROOT = Path(__file__).resolve().parents[1]


def main(out: Path) -> None:
    image, mask = load_pair(ROOT / "sample_data/mni152_t1.nii.gz", ROOT / "sample_data/mni152_ventricles_seg.nii.gz")
    settings = GenerationSettings(trajectory="custom", values=(0.0, 1.0, 2.0, 3.0), frames=4, device="cpu").validate()
    aug = build_augmenter(image, mask, settings)
    z = list(settings.values)
    series = aug.series(settings.trajectory_model(), frames=len(z))
    k = int(np.argmax((mask.data > 0).sum(axis=(1, 2))))
    crop = (slice(60, 175), slice(45, 155))

    def axial(plane):
        # rows = y (posterior -> anterior), columns = x (left -> right); drawn with origin="lower"
        # (anterior up) and the columns reversed (radiological)
        return plane[crop][:, ::-1]

    def letters(ax):
        style = {"color": "#ffd24a", "fontsize": 9, "fontweight": "bold", "transform": ax.transAxes}
        ax.text(0.5, 0.98, "A", ha="center", va="top", **style)
        ax.text(0.5, 0.02, "P", ha="center", va="bottom", **style)
        ax.text(0.02, 0.5, "R", ha="left", va="center", **style)
        ax.text(0.98, 0.5, "L", ha="right", va="center", **style)

    fig, axes = plt.subplots(1, len(z) + 1, figsize=(3 * (len(z) + 1), 3.4), facecolor="black")
    for t, ax in enumerate(axes[:-1]):
        ax.imshow(axial(series.images[t, k]), cmap="gray", origin="lower")
        ax.contour(axial(series.labels[t, k]) > 0, levels=[0.5], colors="#ff5050", linewidths=0.8, origin="lower")
        vol = sum(v[t] for v in series.volumes_ml.values())
        ax.set_title(f"frame {t + 1} of {len(z)}: z_t = {z[t]:.0f} mm, {vol:.1f} mL", color="white", fontsize=9)
        letters(ax)
    diff = series.images[-1, k] - series.images[0, k]
    lim = np.abs(diff).max()
    axes[-1].imshow(axial(diff), cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower")
    axes[-1].set_title("I_4 - I_1 (frame 4 minus frame 1)", color="white", fontsize=9)
    letters(axes[-1])
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90, facecolor="black")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "series.png")
