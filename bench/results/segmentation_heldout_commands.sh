#!/usr/bin/env bash
# The downstream segmentation run of bench/results/segmentation_heldout.txt: two real scans, one
# table each, every generator trained per fold on that fold's training slices only.
# Usage: [SEEDS="0 1"] bench/results/segmentation_heldout_commands.sh WORK [DIPY_WHEEL]   (from the repository root)
# Seed 0 writes WORK/mni and WORK/dwi, seed s > 0 WORK/mni_seed<s> and WORK/dwi_seed<s> (U-Net, generator and
# sampling seeds change; the folds do not). The recorded run: SEEDS=0 first, then SEEDS=1.
set -euo pipefail
WORK=${1:?usage: $0 WORK [DIPY_WHEEL]}
WHEEL=${2:-}
PY=${PY:-.venv/bin/python}  # LAUGEN=${LAUGEN:-.venv/bin/laugen}
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1
mkdir -p "$WORK"
$PY bench/segmentation_data.py "$WORK/data" ${WHEEL:+--wheel "$WHEEL"}
TIMEFORMAT='wall %R s, user %U s, sys %S s'
for seed in ${SEEDS:-0 1}; do
  for scan in mni dwi; do
    out="$WORK/$scan"; [ "$seed" = 0 ] || out="$WORK/${scan}_seed$seed"
    { time nice -n 15 ${LAUGEN:-.venv/bin/laugen} experiment segmentation --pairs "$WORK/data/$scan" --size 32 --folds 3 \
        --synthetic 0 16 64 --generator dhvae stylegan2 ldm --generator-steps 300 400 600 \
        --generator-option dhvae:lr=5e-4 --generator-option dhvae:disc_warmup=100 --generator-option dhvae:kl_warmup=60 \
        --min-mask-voxels 10 --laugen-frames 4 --unet-steps 120 --threads 1 --seed "$seed" --out "$out" \
        > "$out.table.txt" 2> "$out.log" ; } 2> "$out.time"
  done
done
