#!/usr/bin/env bash
# GPU proof for torchstn (issue 13), a few minutes on a GPU machine. Run from a checkout after `make setup`:
#
#     scripts/gpu_check.sh            # or: make gpu-check
#
# 1. the device-parametrised tests (marked `cuda`; they skip without a GPU) and the training stack's device,
#    precision and validation tests;
# 2. a train / resume / eval / export cycle on the device with tiny settings (the bundled MNIST);
# 3. a 2-process DDP run: torchrun over nccl, one GPU per process, when the machine has 2 GPUs; else 2 processes
#    over gloo on the CPU.
#
# Without CUDA every step still runs, on the CPU (the `cuda` tests skip), and the script says so. The output is
# what to report. Exit status: 0 when every step passed.
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TORCHRUN=${TORCHRUN:-$(dirname "$PY")/torchrun}
[ -x "$PY" ] || { echo "gpu_check: $PY not found; run 'make setup' first" >&2; exit 2; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/torchstn-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
START=$(date +%s)
step() { printf '\n=== %s (%ss)\n' "$1" "$(( $(date +%s) - START ))"; }

step "environment"
"$PY" - <<'PY'
import torch, torchstn
print(f"torchstn {torchstn.__version__} from {torchstn.__file__}")
print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, available {torch.cuda.is_available()}")
for i in range(torch.cuda.device_count()):
    print(f"  cuda:{i} {torch.cuda.get_device_name(i)}, bf16 {torch.cuda.is_bf16_supported()}")
PY
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "$NGPU" -gt 0 ]; then DEVICE=cuda; else DEVICE=cpu; echo "gpu_check: no CUDA device: every step runs on the CPU"; fi

step "tests on cpu and cuda (the cuda-marked ones skip without a GPU)"
"$PY" -m pytest -p no:xdist -q -m cuda --no-header -rs tests src/torchstn || [ $? -eq 5 ]  # 5: none selected
"$PY" -m pytest -p no:xdist -q --no-header -rs tests/train/test_devices.py

step "train / resume / eval / export on $DEVICE"
RUN="$WORK/run"
SET=("data.recipe=rts" "model.name=st_cnn_aff" "model.kwargs={'input_shape': (1, 42, 42), 'downsample': 2}"
     "data.n_train=2048" "data.n_test=512" "data.n_valid=256" "train.epochs=2" "train.batch_size=128"
     "data.cache_dir=$WORK/cache" "visualize.count=4")
"$PY" -m torchstn.cli train --out "$RUN" --device "$DEVICE" --stop-after 1 --set "${SET[@]}"
"$PY" -m torchstn.cli train --resume "$RUN" --device "$DEVICE"
"$PY" -m torchstn.cli train --resume "$RUN" --device cpu --set train.epochs=3   # the checkpoint moves to the CPU
"$PY" -m torchstn.cli eval "$RUN" --device "$DEVICE"
"$PY" -m torchstn.cli eval "$RUN" --device "$DEVICE" --split valid --checkpoint best
"$PY" -m torchstn.cli export "$RUN"
"$PY" - "$RUN" <<'PY'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
meta = json.loads((run / "meta.json").read_text())
assert [r["epoch"] for r in rows] == [1, 2, 3], rows
assert json.loads((run / "metrics.json").read_text())["status"] == "finished"
for f in ("checkpoints/last.pt", "checkpoints/best.pt", "metrics.csv", "model.onnx"):
    assert (run / f).is_file(), f
print(f"cycle ok: device {meta['machine']['device']}, valid errors {[r['valid_error'] for r in rows]}, "
      f"test error {rows[-1]['test_error']:.2f}%")
PY
if [ "$DEVICE" = cuda ]; then
  for PREC in bf16 16; do  # mixed precision on the GPU: autocast (and a gradient scaler for float16)
    "$PY" -m torchstn.cli train --out "$WORK/amp-$PREC" --device cuda --quiet --set "${SET[@]}" \
      "train.precision=$PREC" train.epochs=1
  done
fi

step "DDP, 2 processes"
if [ "$NGPU" -ge 2 ]; then DDP_DEVICE=cuda; else DDP_DEVICE=cpu; echo "fewer than 2 GPUs: gloo on the CPU"; fi
"$TORCHRUN" --nproc_per_node=2 --master_port="${MASTER_PORT:-29571}" -m torchstn.cli train --out "$WORK/ddp" \
  --device "$DDP_DEVICE" --quiet --set "data.recipe=rotated" "model.name=st_fcn_aff" "data.n_train=1024" \
  "data.n_test=256" "train.epochs=1" "train.batch_size=128" "data.cache_dir=$WORK/cache" "visualize.enabled=False"
"$PY" -c "
import json; m = json.load(open('$WORK/ddp/meta.json')); r = json.load(open('$WORK/ddp/metrics.json'))
assert m['world_size'] == 2 and r['status'] == 'finished', (m, r)
print('ddp ok: world 2 on', m['machine']['device'], 'test error', r['test_error'])"

step "gpu_check: all steps passed on $DEVICE"
