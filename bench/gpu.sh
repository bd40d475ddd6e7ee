#!/usr/bin/env bash
# One prepared benchmark run for the lent GPU machine (H100 / H200), finishing within 8 minutes.
#
# Needs only torch and transformers from the machine's image (plus NumPy, PyYAML and
# safetensors, which transformers depends on); ragsam runs from src/ via PYTHONPATH, not
# installed. Extra wheels, if carried in .whl/ (git-ignored), are installed first:
#   SimpleITK  - needed by volume_inference.py (NIfTI reading / writing is part of the figure)
#   faiss-cpu  - only for the "cached" row of embed.py
# Fetch them on the workstation for the device's Python, e.g.
#   pip download --no-deps --only-binary=:all: --python-version 3.11 -d .whl SimpleITK==2.5.7
# and run with carry [".whl"]. Without them those parts are reported as skipped / failed
# in status.jsonl; everything else still runs.
#
# Every result is a JSON file under $OUT (default bench/results/gpu); status.jsonl has one
# line per benchmark with its exit code and wall time, so a timeout is visible.
#
# Example (device tool): command "bash bench/gpu.sh", carry [".whl"], timeout_s 540.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results/gpu}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" > /dev/null; then
    pip install --no-deps --no-index --quiet .whl/*.whl > "$OUT/pip.log" 2>&1 \
        || echo "wheel install failed, see $OUT/pip.log"
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
python -c "import torch, transformers; print(torch.__version__, transformers.__version__, \
torch.cuda.is_available() and torch.cuda.get_device_name(0))" > "$OUT/versions.txt" 2>&1

run() {  # run NAME LIMIT_S SCRIPT ARGS...: one benchmark under a hard time limit
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    timeout "$limit" python "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    echo "{\"benchmark\": \"$name\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - start ))}" >> "$OUT/status.jsonl"
}

# Budget (seconds): 140 + 100 + 80 + 30 + 60 = 410, leaving room for start-up and the wheel install.
# The issue's configuration: ViT-B, LoRA rank 4, 512 px, batch 8; and the tiny architecture.
run train_step 140 bench/train_step.py --device cuda --config sam_vit_b:512:8:20 --config tiny:128:8:50 \
    --json "$OUT/train_step.json"
# torch.compile where it pays: only the optimised mode is compiled (compilation time is in warmup_s).
run train_step_compile 100 bench/train_step.py --device cuda --compile --config sam_vit_b:512:8:20 \
    --json "$OUT/train_step_compile.json"
# 100 slices of 512 x 512, ViT-B, file reading and writing included.
run volume_inference 80 bench/volume_inference.py --device cuda --arch sam_vit_b --batch 16 \
    --json "$OUT/volume_inference.json"
run embed 30 bench/embed.py --device cuda --slices 512 --batch 64 --json "$OUT/embed.json"
# SAM 2.1 Hiera-tiny architecture at 1024 px (random weights: timing only).
run rag_segment 60 bench/rag_segment.py --device cuda --sam2 random --slices 8 --json "$OUT/rag_segment.json"
cat "$OUT/status.jsonl"
