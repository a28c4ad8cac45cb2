#!/usr/bin/env bash
# CPU benchmarks: our training step next to the same step in PyTorch (when /usr/bin/python3
# has torch), and the tokenizer throughput. Prints the ratio; writes JSON to bench/results/.
set -euo pipefail
BUILD_DIR=${1:-build}
cd "$(dirname "$0")/.."
THREADS=${THREADS:-$(nproc)}
mkdir -p bench/results
out=bench/results/cpu_train_step.json

"$BUILD_DIR/bench/cpu_train_step" --benchmark_filter='^BM_TrainStep/' --benchmark_format=json --benchmark_out="$out.ours" >/dev/null
ours=$(python3 -c "import json;b=json.load(open('$out.ours'))['benchmarks'][0];print(b['tokens_per_second'])")
echo "minitron (cpu, fp32, $THREADS threads): $ours tokens/s"

if /usr/bin/python3 -c "import torch" 2>/dev/null; then
  theirs_json=$(OMP_NUM_THREADS=$THREADS /usr/bin/python3 bench/torch_train_step.py --batch-size 4 \
                --sequence-length 256 --threads "$THREADS" | tail -1)
  theirs=$(python3 -c "import json,sys;print(json.loads(sys.argv[1])['tokens_per_second'])" "$theirs_json")
  echo "pytorch  (cpu, fp32, $THREADS threads): $theirs tokens/s"
  python3 -c "print(f'ratio minitron / pytorch: {$ours/$theirs:.2f}x')"
  python3 -c "import json,sys;json.dump({'minitron_tokens_per_second':$ours,'pytorch':json.loads(sys.argv[1]),'threads':$THREADS},open('$out','w'),indent=2)" "$theirs_json"
else
  echo "pytorch not found at /usr/bin/python3 (apt-get install python3-torch): no ratio"
fi
rm -f "$out.ours"

if [ -x "$BUILD_DIR/bench/tokenizer_bench" ]; then "$BUILD_DIR/bench/tokenizer_bench"; fi
