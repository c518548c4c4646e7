#!/usr/bin/env bash
# ONE prepared GPU check (issue 16), under 8 minutes on one GPU. Prepare .gpu/ with bench/gpu_prepare.sh
# here first; on the device: run with carry [".gpu"], command `bash bench/gpu_check.sh`.
# Prints (a) annotate sentences/s (MiniLM-L6-sized teacher + CRF, CoNLL-2003 train), (b) distill epoch
# seconds per method (BiLSTM-CRF student), (c) the CRF kernel table on CUDA vs torch-struct and
# pytorch-crf, (d) a 1-epoch correctness check (the same loss on the GPU as on the CPU, fp32).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT="${OUT:-/tmp/gpu_check}"; mkdir -p "$OUT"
if [ -d .gpu/wheels ]; then python3 -m pip install -q --no-index --find-links .gpu/wheels zarr numcodecs seqeval torch-struct pytorch-crf 2>&1 | tail -2; fi
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 420 python3 bench/gpu_check.py --data .gpu/data --tokenizer .gpu/tokenizer --out "$OUT" ${GPU_CHECK_ARGS:-} \
  2>&1 | tee "$OUT/gpu_check.log"
timeout 90 python3 bench/bench_crf.py --device cuda --reps 10 --budget 2 2>&1 | tee "$OUT/bench_crf_cuda.txt"
