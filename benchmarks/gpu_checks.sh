#!/usr/bin/env bash
# The checks that need a CUDA device, in one short run: the cuda-marked tests,
# then the GPU timings of the feature extraction, of MAML, of PatchCore's
# scoring with maps and of its fit's leave-one-image-out step. Run from the repository root, in the environment the
# README's test command makes:
#
#     bash benchmarks/gpu_checks.sh
#
# Each step prints its table; the script stops at the first step that fails.
set -euo pipefail
python=${PYTHON:-.venv/bin/python}

echo "== cuda-marked tests"
"$python" -m pytest -m cuda -v -rs -p no:cacheprovider

echo "== benchmarks/bench_features.py --device cuda (speed only)"
"$python" benchmarks/bench_features.py --device cuda --skip-memory

echo "== benchmarks/bench_maml.py --device cuda"
"$python" benchmarks/bench_maml.py --device cuda

echo "== benchmarks/bench_patch.py --device cuda"
"$python" benchmarks/bench_patch.py --device cuda

echo "== benchmarks/bench_patch_fit.py --device cuda"
"$python" benchmarks/bench_patch_fit.py --device cuda
