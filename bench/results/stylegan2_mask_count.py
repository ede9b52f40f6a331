"""Count generated masks >= 10 px among 64 samples (seed 0) of a StyleGAN2 checkpoint, with the EMA
generator (what `laugen sample` uses) and with the trained weights.

Usage (repository root): .venv/bin/python bench/results/stylegan2_mask_count.py RUN/last.pt
"""
import sys

import torch

torch.set_num_threads(1)
from laugen_napari.training.generators import GENERATORS, split_pairs

ck = sys.argv[1]
m = GENERATORS["stylegan2"].load(ck)
g = torch.Generator().manual_seed(0)
s = m.sample(64, generator=g)
_, lab = split_pairs(s, m.cfg.image_channels)
px = (lab > 0).reshape(64, -1).sum(1)
print(f"{ck}: EMA={m.generator_ema is not None}: masks >= 10 px: {(px >= 10).sum()} of 64; >= 1 px: {(px >= 1).sum()}; "
      f"median px {int(torch.tensor(px).median())}, max {px.max()}")
if m.generator_ema is not None:
    m.generator_ema = None
    s = m.sample(64, generator=torch.Generator().manual_seed(0))
    _, lab = split_pairs(s, m.cfg.image_channels)
    px = (lab > 0).reshape(64, -1).sum(1)
    print(f"  trained (non-EMA) weights: masks >= 10 px: {(px >= 10).sum()} of 64; >= 1 px: {(px >= 1).sum()}")
