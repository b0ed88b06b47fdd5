#!/usr/bin/env bash
# The GPU measurements of benchmarks/RESULTS.md, in parts that each fit one
# 10-minute call of a lent GPU machine (an H100 or H200 with PyTorch and JAX but
# without EagerPy, Foolbox or torchattacks, and no package index).
#
# Why a script: GPU time comes in short calls; every part writes its JSON and
# log under $OUT (default ./gpu-results) so that a part cut off by its time
# limit still returns what it finished.
#
# Before the first call, on the machine with the package index (repository root):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       -d .whl eagerpy==0.30.0 foolbox==3.3.4 torchattacks==3.5.1 GitPython gitdb smmap
# (the benchmarks' models train on scikit-learn's digits and the per-sample
# baseline fits scikit-learn's logistic regression: where `python3 -c "import
# sklearn"` fails on the GPU machine, add scikit-learn threadpoolctl joblib there.)
# then on the GPU machine, with `.whl` carried:
#   bash benchmarks/gpu_session.sh tests        # the CUDA tests, first (1-2 min)
#   bash benchmarks/gpu_session.sh throughput   # PGD/APGD at batch 512 and 64, fast path;
#                                               # the rescaling kernel (under a minute)
#   bash benchmarks/gpu_session.sh e2e18        # whole test, ResNet-18 32x32, 512 samples
#   bash benchmarks/gpu_session.sh e2e50        # whole test, ResNet-50 224x224, 512 samples
#   bash benchmarks/gpu_session.sh scale18      # 64..4096 samples, ResNet-18
#   bash benchmarks/gpu_session.sh scale50      # ResNet-50 224x224: probe, chunks, 64..512
#   bash benchmarks/gpu_session.sh numerics     # GPU numerics acceptance: trained ResNet-18 32x32
#                                               # and ResNet-50 224x224 under TF32 + cudnn.benchmark
#                                               # and bf16 autocast (exits 1 when a target is missed)
#   bash benchmarks/gpu_session.sh features50   # ResNet-50 224x224, 512 samples: the
#                                               # features phase vs the model's own throughput,
#                                               # and bf16 features (time, conclusive share)
#   bash benchmarks/gpu_session.sh features50cl # the same with the model in channels_last
#   bash benchmarks/gpu_session.sh jax          # JAX PGD vs hand-written loops, compile=True
#   bash benchmarks/gpu_session.sh jaxe2e       # JAX whole test vs torch, trained convnet
#   bash benchmarks/gpu_session.sh tensorflow   # TF PGD and whole test (needs TensorFlow with GPU
#                                               # support on the machine: not in the lent image,
#                                               # and its wheel is far over the 64 MiB carry)
#   bash benchmarks/gpu_session.sh scale50a     # ResNet-50 224x224, 64..512 samples
#   bash benchmarks/gpu_session.sh scale50b     # 1024 samples (samples 0..1023)
#   bash benchmarks/gpu_session.sh scale50c     # samples 1024..2047 (with b: the 2048 point)
#   bash benchmarks/gpu_session.sh scale50d     # samples 2048..3071
#   bash benchmarks/gpu_session.sh scale50e     # samples 3072..4095 (b..e: the 4096 point)
#   bash benchmarks/gpu_session.sh dry          # print the commands only
# Every part runs under `timeout $PART_LIMIT` (default 570 s), so that it ends
# inside one 10-minute call with its log under $OUT. The scale50 pieces use
# equal chunks (--chunk-size 32), so the 2048 and 4096 points are sums of
# pieces of the same chunks; at the H200's features speed of RESULTS.md
# (7.2k images/s) each 1024-sample piece is about 3.5 minutes.
# ResNet-50 at 4096 samples is about 4.4 million forward passes (tens of
# minutes): `scale50` measures the per-chunk peak and the time curve up to 512,
# from which 4096 follows (equal chunks, one chunk's peak); run
# `python -m benchmarks.scale --device cuda --model resnet50 --sizes 4096
# --chunk-size auto` in the background (setsid) to see it whole.
set -euo pipefail

part="${1:-dry}"
out="${OUT:-gpu-results}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ] && [ "$part" != dry ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

limit="${PART_LIMIT:-570}"
run() {  # run NAME COMMAND...: the command's output goes to the terminal and $out/NAME.log
    local name="$1"
    shift
    echo "== $name: $*"
    if [ "$part" = dry ]; then
        return 0
    fi
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
}

py=python3
case "$part" in
tests | dry)
    run env $py -c "import torch, jax, eagerpy; print(torch.__version__, torch.cuda.get_device_name(), jax.__version__, jax.devices(), eagerpy.__version__)"
    run tests $py -m pytest -q -p no:cacheprovider -p pytest_attacktest.plugin tests/test_gpu.py tests/test_fast_path.py tests/test_blocks.py tests/test_forward_speed.py
    ;;&
throughput | dry)
    run pgd-512 $py -m benchmarks.attack_throughput --device cuda --batch 512 --json "$out/pgd-cuda-512.json"
    run pgd-64 $py -m benchmarks.attack_throughput --device cuda --batch 64 --json "$out/pgd-cuda-64.json"
    run rescaling $py -m benchmarks.rescaling --device cuda --sizes full --json "$out/rescaling-cuda.json"
    ;;&
e2e18 | dry)
    run e2e18 $py -m benchmarks.binarization --device cuda --model resnet18 --samples 512 --baseline-samples 64 --what-if-position-routing --json "$out/e2e-resnet18-512.json"
    run e2e18-minnorm $py -m benchmarks.binarization --device cuda --model resnet18 --samples 512 --baseline-samples 64 --baseline-readout min-norm --json "$out/e2e-resnet18-512-minnorm.json"
    ;;&
e2e50 | dry)
    run e2e50 $py -m benchmarks.binarization --device cuda --model resnet50 --samples 512 --baseline-samples 16 --json "$out/e2e-resnet50-512.json"
    ;;&
scale18 | dry)
    run scale18 $py -m benchmarks.scale --device cuda --model resnet18 --chunk-size auto --json "$out/scale-resnet18-auto.json"
    ;;&
scale50 | dry)
    run scale50 $py -m benchmarks.scale --device cuda --model resnet50 --sizes 64,128,256,512 --chunk-size auto --probe --routing-sizes 22,512 --json "$out/scale-resnet50.json"
    ;;&
numerics | dry)
    run numerics $py -m benchmarks.gpu_numerics --device cuda --json "$out/gpu-numerics.json"
    ;;&
features50 | dry)
    run features50 $py -m benchmarks.binarization --device cuda --model resnet50 --samples 512 --baseline-samples 0 --model-throughput --compare-feature-dtype bfloat16 --json "$out/features-resnet50-512.json"
    ;;&
features50cl | dry)
    run features50cl $py -m benchmarks.binarization --device cuda --model resnet50 --samples 512 --baseline-samples 0 --model-throughput --channels-last --compare-feature-dtype bfloat16 --json "$out/features-resnet50-512-channels-last.json"
    ;;&
jax | dry)
    run jax $py -m benchmarks.frameworks --framework jax --part pgd --device cuda --batches 64,512 --steps 100 --json "$out/jax-pgd.json"
    run jax-1000 $py -m benchmarks.frameworks --framework jax --part pgd --device cuda --batches 64,512 --steps 1000 --repeats 2 --json "$out/jax-pgd-1000.json"
    ;;&
jaxe2e | dry)
    run jaxe2e $py -m benchmarks.frameworks --framework jax --part e2e --device cuda --samples 512 --steps 100 --json "$out/jax-e2e.json"
    run jaxjit $py -m benchmarks.frameworks --framework jax --part jit-model --device cuda --samples 64 --steps 100 --json "$out/jax-jit-model.json"
    ;;&
tensorflow | dry)
    if [ "$part" = dry ] || $py -c "import tensorflow" 2>/dev/null; then
        run tensorflow $py -m benchmarks.frameworks --framework tensorflow --device cuda --batches 64,512 --steps 100 --samples 512 --json "$out/tensorflow.json"
    else
        echo "tensorflow: not installed on this machine; skipped (not measured)" | tee "$out/tensorflow.log"
    fi
    ;;&
scale50a | dry)
    run scale50a $py -m benchmarks.scale --device cuda --model resnet50 --sizes 64,128,256,512 --chunk-size 32 --json "$out/scale-resnet50-64-512.json"
    ;;&
scale50b | dry)
    run scale50b $py -m benchmarks.scale --device cuda --model resnet50 --sizes 1024 --chunk-size 32 --offset 0 --json "$out/scale-resnet50-1024-at-0.json"
    ;;&
scale50c | dry)
    run scale50c $py -m benchmarks.scale --device cuda --model resnet50 --sizes 1024 --chunk-size 32 --offset 1024 --json "$out/scale-resnet50-1024-at-1024.json"
    ;;&
scale50d | dry)
    run scale50d $py -m benchmarks.scale --device cuda --model resnet50 --sizes 1024 --chunk-size 32 --offset 2048 --json "$out/scale-resnet50-1024-at-2048.json"
    ;;&
scale50e | dry)
    run scale50e $py -m benchmarks.scale --device cuda --model resnet50 --sizes 1024 --chunk-size 32 --offset 3072 --json "$out/scale-resnet50-1024-at-3072.json"
    ;;&
tests | throughput | e2e18 | e2e50 | scale18 | scale50 | numerics | features50 | features50cl | jax | jaxe2e | tensorflow | scale50a | scale50b | scale50c | scale50d | scale50e | dry) ;;
*)
    echo "unknown part '$part': tests, throughput, e2e18, e2e50, scale18, scale50, numerics, features50, features50cl, jax, jaxe2e, tensorflow, scale50a..scale50e or dry" >&2
    exit 2
    ;;
esac
