#!/usr/bin/env bash
# The prepared check for a lent GPU machine (one command, results under $OUT or ./gpu_results):
#   1. bench/gpu_check.py: a Falcon-7B-shaped model, bf16, frozen / LoRA / LoRA + checkpointing / QLoRA,
#      tokens/s, MFU, peak memory, at 4×512 tokens and at 8×1024 tokens, with transformers' own attention as the
#      baseline in the same run, and the 8×1024 rows as shared-prompt batches (with and without checkpointing);
#   2. the real entry point on the GPU: train.py phase=transfer then phase=finetune with QLoRA (nf4 + LoRA),
#      trainer=gpu (bf16-mixed), on the offline default (carry data/offline so nothing is pretrained there);
#      GPU_SESSION_TRAIN=0 skips it.
# Wheels the machine lacks (bitsandbytes, hydra, datasets...) travel in .whl/ and are installed first.
set -uo pipefail
out="${OUT:-gpu_results}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia-smi.txt"
python3 -c "import torch, transformers, peft, bitsandbytes; print(torch.__version__, transformers.__version__, peft.__version__, bitsandbytes.__version__)"

check() { timeout "$1" python3 bench/gpu_check.py "${@:2}" 2>&1 | tee -a "$out/gpu_check.log"; }
check 240 --out "$out/gpu_check_b4s512.json"
check 90 --modes lora,frozen --attention native --out "$out/gpu_check_b4s512_native.json"
check 90 --batch 8 --seq 1024 --modes lora,lora_ckpt --out "$out/gpu_check_b8s1024.json"
# Shared prompts (2 prompts of 960 tokens, 4 answers of 64 each) against the same rows run plainly, above.
check 90 --batch 8 --seq 1024 --modes lora_ckpt_shared,lora_shared --out "$out/gpu_check_b8s1024_shared.json"

[ "${GPU_SESSION_TRAIN:-1}" = 1 ] || exit 0
common=(trainer=gpu logger=csv)
timeout 100 python3 train.py phase=transfer "${common[@]}" 2>&1 | tail -n 40 | tee "$out/train_gpu.log"
timeout 100 python3 train.py phase=finetune quantization=nf4 phase.max_epochs=1 "${common[@]}" 2>&1 \
    | tail -n 40 | tee -a "$out/train_gpu.log"
