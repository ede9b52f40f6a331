#!/usr/bin/env bash
# The downstream segmentation run of bench/results/segmentation_heldout.txt: two real scans, one
# table each, every generator trained per fold on that fold's training slices only.
# Usage: bench/results/segmentation_heldout_commands.sh WORK [DIPY_WHEEL]   (from the repository root)
set -euo pipefail
WORK=${1:?usage: $0 WORK [DIPY_WHEEL]}
WHEEL=${2:-}
PY=${PY:-.venv/bin/python}  # LAUGEN=${LAUGEN:-.venv/bin/laugen}
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1
mkdir -p "$WORK"
$PY bench/segmentation_data.py "$WORK/data" ${WHEEL:+--wheel "$WHEEL"}
TIMEFORMAT='wall %R s, user %U s, sys %S s'
for scan in mni dwi; do
  { time nice -n 15 ${LAUGEN:-.venv/bin/laugen} experiment segmentation --pairs "$WORK/data/$scan" --size 32 --folds 3 \
      --synthetic 0 16 64 --generator dhvae stylegan2 ldm --generator-steps 300 400 600 \
      --generator-option dhvae:lr=5e-4 --generator-option dhvae:disc_warmup=100 --generator-option dhvae:kl_warmup=60 \
      --min-mask-voxels 10 --laugen-frames 4 --unet-steps 120 --threads 1 --out "$WORK/$scan" \
      > "$WORK/$scan.table.txt" 2> "$WORK/$scan.log" ; } 2> "$WORK/$scan.time"
done
