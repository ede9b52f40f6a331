#!/usr/bin/env bash
# The CPU sweeps reported in bench/results/experiment_*: an ACDC-layout folder built from the
# shipped MNI sample (laugen_napari.testing.acdc), then the experiments, one thread, niced.
# Usage: bash bench/results/experiment_commands.sh WORK_DIR [SWEEP...]
#   (writes WORK_DIR/acdc and WORK_DIR/exp; SWEEP: mixing sizes sizes0 pretrain unittest; default all)
set -euo pipefail
WORK=${1:?work folder}
shift
SWEEPS=${*:-mixing sizes sizes0 pretrain unittest}
PY=${PY:-.venv/bin/python}
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1
[ -d "$WORK/acdc" ] || $PY -c "import sys; from laugen_napari.testing.acdc import build_acdc_folder; build_acdc_folder(sys.argv[1], patients=10, frames=12, seed=0)" "$WORK/acdc"
COMMON=(--real-acdc "$WORK/acdc" --val-fraction 0.2 --crop 32 32 --geometry 3d --steps 150 --batch-size 8
        --lr 1e-2 --repeats 2 --threads 1)
for sweep in $SWEEPS; do
  case $sweep in
    mixing) cmd=(experiment mixing --ratios 0,0.1,0.2,0.5 "${COMMON[@]}" --out "$WORK/exp") ;;
    sizes) cmd=(experiment sizes --sizes 1,2,4,8 --mix 0.1 "${COMMON[@]}" --out "$WORK/exp") ;;
    sizes0) cmd=(experiment sizes --sizes 1,2,4,8 --mix 0 "${COMMON[@]}" --out "$WORK/exp_mix0") ;;
    pretrain) cmd=(experiment pretrain --pretrain-steps 150 "${COMMON[@]}" --out "$WORK/exp") ;;
    unittest) # a SimVP trained on 3D-then-sliced LAUGEN series of the MNI sample, then scored
      /usr/bin/time -f "unittest-train: %e s wall" nice -n 10 $PY -m laugen_napari train simvp \
        --synthetic sample_data/mni152_t1.nii.gz sample_data/mni152_ventricles_seg.nii.gz --crop 48 48 --geometry 3d \
        --slope-range -0.5 1.0 --length 128 --val-series 16 --steps 200 --lr 1e-2 --threads 1 --out "$WORK/ut/run" \
        > "$WORK/unittest-train.log" 2>&1
      cmd=(experiment unit-test --model "$WORK/ut/run/best.pt" --series 2 --threads 1 --out "$WORK/ut") ;;
  esac
  /usr/bin/time -f "$sweep: %e s wall" nice -n 10 $PY -m laugen_napari "${cmd[@]}" > "$WORK/$sweep.log" 2>&1 \
    || { echo "$sweep failed"; tail -5 "$WORK/$sweep.log"; }
  tail -n 20 "$WORK/$sweep.log"
done
