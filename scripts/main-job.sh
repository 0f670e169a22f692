#!/usr/bin/env bash
# The main job on a fresh Debian machine: install alexc and the Fashion-MNIST package, train
# the mini AlexNet on the real data, export the weights to ONNX, and cross-check the ONNX file
# in onnxruntime against alexc's own executor (outputs), score that file on the test set, and
# draw the pictures (curves, filters, confusion matrix, activations, the network diagram)
# into the run.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/mini}
# TRAIN_ARGS="--epochs 1 --limit-batches 5" makes a smoke run of the whole job.
TRAIN_ARGS=${TRAIN_ARGS:-}

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
fi
if ! .venv/bin/python -c "import alexc, matplotlib" 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e .
fi
. .venv/bin/activate

# shellcheck disable=SC2086
alexc train graphs/alexnet-mini.yaml --out "$RUN" $TRAIN_ARGS
alexc export graphs/alexnet-mini.yaml --weights "$RUN/best.safetensors" --onnx "$RUN/alexnet-mini.onnx"
alexc check graphs/alexnet-mini.yaml --weights "$RUN/best.safetensors" --onnx "$RUN/alexnet-mini.onnx"
alexc eval graphs/alexnet-mini.yaml --onnx "$RUN/alexnet-mini.onnx"
bash scripts/pictures.sh "$RUN"
