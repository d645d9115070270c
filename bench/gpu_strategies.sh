#!/usr/bin/env bash
# The prepared check of the sharded strategies on one lent GPU (results under $OUT or ./gpu_results):
# phase=finetune under FSDP (LoRA, full) and DeepSpeed ZeRO-2 (LoRA), bf16-mixed, 120 steps each from the
# transfer export START; then bench/check_exports.py reloads each export and compares its test AUROC with the
# one measured inside the run. One GPU shows no cross-rank traffic, but FSDP goes through the same gather and
# the same clipping call as on many. (ZeRO-3 is refused by the config check: see bench/results/h200_strategies.md.)
# Carry data/offline and START's export; wheels the machine lacks travel in .whl/ and .whl_ds/
# (deepspeed: `DS_BUILD_OPS=0 pip wheel --no-deps --no-build-isolation deepspeed`, plus hjson and pydantic).
set -uo pipefail
out="${OUT:-gpu_results}"
runs=/tmp/strategy_runs
start="${START:?set START to a transfer export directory}"
mkdir -p "$out" "$runs"
wheels=$(compgen -G ".whl/*.whl"; compgen -G ".whl_ds/*.whl")
if [ -n "$wheels" ]; then
    # shellcheck disable=SC2086
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $wheels \
        || exit 1
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/summary.txt"
python3 -c "import torch, lightning, transformers, peft, deepspeed; print(torch.__version__, lightning.__version__, transformers.__version__, peft.__version__, deepspeed.__version__)" 2>&1 | tail -n 1 | tee -a "$out/summary.txt"

common=(phase=finetune "ckpt=$start" logger=csv progress_bar=none phase.max_epochs=1 trainer.devices=1
        +trainer.limit_train_batches=120)
finetune() {  # ONLY="name ..." runs those alone
    local name=$1
    shift
    [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $name "* ]] || return 0
    local began=$SECONDS
    timeout 120 python3 train.py "${common[@]}" "$@" "paths.run_dir=$runs/$name" >"$out/$name.log" 2>&1
    echo "$name: rc=$? in $((SECONDS - began)) s ($*)" | tee -a "$out/summary.txt"
}
finetune fsdp_lora trainer=fsdp
finetune fsdp_full trainer=fsdp peft=none
finetune deepspeed2_lora trainer=deepspeed
timeout 60 python3 bench/check_exports.py "$runs"/* 2>&1 | grep -v 'Loading weights' | tee -a "$out/summary.txt"
