#!/usr/bin/env sh
# Training-speed benchmark: the same frozen-backbone head trained two ways on the same photos.
#   plain  = model.fit of frozen backbone + head over decoded images (a forward pass per epoch)
#   cached = one forward pass into the feature cache, then the head on the features
# Goals: speedup >= 10 and cached_seconds <= 1.3 x forward_pass_seconds.
# Usage: benchmarks/train.sh [DATA_DIR] [extra `pizzactl bench train` flags]
set -eu
DATA="${1:-${PIZZACTL_DATA_DIR:-data/pizza_not_pizza}}"
[ $# -gt 0 ] && shift
pizzactl bench train --data "$DATA" --json "$@"                       # efficientnet_lite2 (train's default), 20 epochs
pizzactl bench train --data "$DATA" --backbone mobilenet_v3_small --json "$@"
