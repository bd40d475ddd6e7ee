#!/usr/bin/env bash
# One prepared benchmark run for the lent GPU machine (H100 / H200), finishing within 9 minutes.
#
# Needs only torch and transformers from the machine's image (plus NumPy, PyYAML and
# safetensors, which transformers depends on); ragsam runs from src/ via PYTHONPATH, not
# installed. Extra wheels, if carried in .whl/ (git-ignored), are installed first:
#   SimpleITK  - needed by volume_inference.py (NIfTI reading / writing is part of the figure)
#   faiss-cpu  - for the "cached" row of embed.py and the 1e6-vector index run
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

# Budget (seconds): 30 + 100 + 45 + 70 + 25 + 50 + 60 + 70 + 80 + 50 = 580 at most; most finish well inside their limits.
# First: do the optimised paths compute the same thing on this device (fused vs eager, bf16, fused
# SDPA kernels only, host syncs of a training step)?
run gpu_check 30 bench/gpu_check.py --device cuda --json "$OUT/gpu_check.json"
# The issue's configuration: ViT-B, LoRA rank 4, 512 px, batch 8; and the tiny architecture.
run train_step 100 bench/train_step.py --device cuda --config sam_vit_b:512:8:20 --config tiny:128:8:50 \
    --json "$OUT/train_step.json"
# The network alone (the "500 slices/s of ViT-B at 512" target): 256 slices in memory, batch 32.
run throughput 45 bench/throughput.py --device cuda --arch sam_vit_b --size 512 --slices 256 --batch 32 \
    --repeats 3 --json "$OUT/throughput.json"
# 100 slices of 512 x 512, ViT-B, file reading and writing included.
run volume_inference 70 bench/volume_inference.py --device cuda --arch sam_vit_b --batch 16 \
    --json "$OUT/volume_inference.json"
run embed 25 bench/embed.py --device cuda --slices 512 --batch 64 --json "$OUT/embed.json"
# SAM 2.1 Hiera-tiny architecture at 1024 px (random weights: timing only).
run rag_segment 50 bench/rag_segment.py --device cuda --sam2 random --slices 8 --json "$OUT/rag_segment.json"
# Episodic SAM 2 fine-tuning (train-rag): SAM 2.1 Hiera-tiny architecture at 1024 px, LoRA preset, k = 1, 2, 4.
run rag_train_step 60 bench/rag_train_step.py --device cuda --sam2 random --side 512 --batch 2 --repeats 3 \
    --json "$OUT/rag_train_step.json"
# Faiss on the device's 16 CPU cores (faiss-cpu wheel from .whl/): 1e6 vectors, D = 384.
run retrieval_1e6 70 bench/retrieval_index.py --sizes 1000000 --dims 384 --kinds flat ivf --queries 100 --threads 16 \
    --json "$OUT/retrieval_index_1e6.json"
# Sharded inference (issue 13): predict over 8 ViT-B cases with 1..N processes, one per GPU (N = the GPUs here;
# with one GPU, 2 processes share it). Outputs are compared with the 1-process run.
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
procs=1; n=2; while [ "$n" -le "$(( gpus > 2 ? gpus : 2 ))" ]; do procs="$procs,$n"; n=$(( n * 2 )); done
run sharded 80 bench/sharded.py --device cuda --procs "$procs" --arch sam_vit_b --model-size 512 --side 512 \
    --cases 8 --slices 20 --json "$OUT/sharded.json"
# torch.compile where it pays: only the optimised mode is compiled (compilation time is in warmup_s). Last, as
# compilation time is the least predictable.
run train_step_compile 50 bench/train_step.py --device cuda --compile --config sam_vit_b:512:8:20 \
    --json "$OUT/train_step_compile.json"
cat "$OUT/status.jsonl"
