#!/usr/bin/env bash
# The GPU checks in one run, for a lent GPU machine (see benchmarks/README.md, "Training
# throughput"): the CUDA tests, then bench_train's GPU parts (the device path's n_envs sweep
# on the GPU with peak memory, and 1,000 episodes x 1,000 steps of the full sentio_ppo
# configuration). Logs go to $OUT (the device tool's folder) or ./gpu-out. About 8 minutes.
#
#   bash benchmarks/gpu_check.sh            # PYTHON=... to pick the interpreter
set -u
out=${OUT:-gpu-out}
mkdir -p "$out"
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1
$py -c 'import torch; print(torch.__version__, torch.cuda.is_available())' >>"$out/gpu.txt" 2>&1
timeout 240 $py -m pytest -q tests/test_gpu.py >"$out/test_gpu.log" 2>&1
echo "rc $?" >>"$out/test_gpu.log"
timeout 300 $py benchmarks/bench_train.py --gpu-only --sweep 1024,4096,16384 --repeats 1 \
    --steps 65536 >"$out/bench_train_gpu.log" 2>&1
echo "rc $?" >>"$out/bench_train_gpu.log"
tail -n 3 "$out"/*.log
