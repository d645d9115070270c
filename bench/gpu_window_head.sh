#!/usr/bin/env bash
# The prepared GPU check of the window head and shared-prompt batches (results under $OUT or ./gpu_results), carrying data/offline
# (with critic/perturbed_train.jsonl) and the wheels the machine lacks in .whl/ (hydra-core, omegaconf,
# antlr4-python3-runtime, datasets, dill, multiprocess):
#   1. shared-prompt batches against the same rows run plainly, LoRA with and without checkpointing, Falcon-7B
#      shapes at 8×1024 tokens, in one run (bench/gpu_check.py);
#   2. phase=transfer under FSDP with phase.cache_features=false (the frozen forward every step), one epoch;
#   3. the default checker on the GPU: phase=transfer trainer=gpu (bf16-mixed), its
#      export copied back for the CPU to evaluate.
set -uo pipefail
out="${OUT:-gpu_results}"
runs=/tmp/window_runs
mkdir -p "$out" "$runs"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/summary.txt"
common=(logger=csv progress_bar=none)
step() {  # name, seconds, command...
    local name=$1 limit=$2 began=$SECONDS
    shift 2
    timeout "$limit" "$@" >"$runs/$name.log" 2>&1
    echo "$name: rc=$? in $((SECONDS - began)) s" | tee -a "$out/summary.txt"
    { echo "=== $name"; tail -n 60 "$runs/$name.log"; } >>"$out/logs.txt"
}
step shared_prompts 110 python3 bench/gpu_check.py --batch 8 --seq 1024 --modes lora,lora_shared,lora_ckpt,lora_ckpt_shared \
    --out "$out/gpu_check_b8s1024_shared.json"
step fsdp_live 90 python3 train.py phase=transfer trainer=fsdp trainer.devices=1 phase.cache_features=false \
    phase.max_epochs=1 "${common[@]}" "paths.run_dir=$runs/fsdp_live"
step checker 300 python3 train.py phase=transfer trainer=gpu "${common[@]}" \
    "paths.run_dir=$runs/checker"
grep -h "test/auroc\|export written\|Error" "$runs"/fsdp_live.log "$runs"/checker.log | tail -n 8 | tee -a "$out/summary.txt"
if [ -d "$runs/checker/export" ]; then  # a frozen export: head, tokenizer, config (the backbone is data/offline's)
    mkdir -p "$out/checker_export" && cp "$runs/checker/export"/* "$out/checker_export/"
    cp "$runs/checker/metrics.json" "$out/checker_metrics.json" 2>/dev/null
fi
