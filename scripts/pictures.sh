#!/usr/bin/env bash
# Every picture of a trained run of the mini AlexNet on Fashion-MNIST, into OUT_DIR (default:
# the run directory): learning curves (PNG and SVG), conv1's filters, the confusion matrix on
# the test set, one test image's activations through the conv layers, and the network diagram.
#   bash scripts/pictures.sh RUN_DIR [OUT_DIR]
# The README's pictures: bash scripts/pictures.sh runs/mini docs/img
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:?usage: bash scripts/pictures.sh RUN_DIR [OUT_DIR]}
OUT=${2:-$RUN}
GRAPH=graphs/alexnet-mini.yaml
WEIGHTS=$RUN/best.safetensors
if [ -x .venv/bin/alexc ]; then
  . .venv/bin/activate
fi
mkdir -p "$OUT"

alexc plot "$RUN" --out "$OUT/curves.png"
alexc plot "$RUN" --out "$OUT/curves.svg"
alexc filters "$GRAPH" --weights "$WEIGHTS" --out "$OUT/filters.png"
alexc eval "$GRAPH" --weights "$WEIGHTS" --executor onnxruntime --confusion "$OUT/confusion.png"
# The first test image (an ankle boot) as a PNG file, for alexc infer.
python3 - "$OUT/test-image-0.png" <<'PY'
import sys

from PIL import Image

from alexc.data import open_source

image = open_source("fashion-mnist", split="test", channels=1).image(0)
Image.fromarray(image[..., 0]).save(sys.argv[1])
PY
alexc infer "$GRAPH" "$OUT/test-image-0.png" --weights "$WEIGHTS" --explain "$OUT/activations.png"
alexc summary "$GRAPH" --diagram "$OUT/diagram.svg" > /dev/null
alexc summary "$GRAPH" --diagram "$OUT/diagram.png" > /dev/null
