#!/usr/bin/env bash
# Streaming build benchmark (issue 5): `twin-merge build` of a Twin model from
# a base and 8 experts of a RoBERTa-base-shaped model stored as f32
# safetensors. Reports wall time and peak resident memory (GNU time -v)
# against the size of the inputs; the goal is a peak below two models plus
# the output.
#   benchmarks/bench_build.sh BUILD_DIR [WORK_DIR] [--rank 16]
set -euo pipefail
build=${1:?usage: bench_build.sh BUILD_DIR [WORK_DIR]}
work=${2:-$build/bench_build_data}
rank=${RANK:-16}
experts=${EXPERTS:-8}
cmake --build "$build" --target make_checkpoints twin_merge >/dev/null
if [ ! -f "$work/expert$experts.safetensors" ]; then
  "$build/benchmarks/make_checkpoints" "$work" --experts "$experts" >/dev/null
fi
args=(build --base "$work/base.safetensors" --method task_arithmetic --scaling 0.3 --rank "$rank" -o "$work/model.safetensors")
for i in $(seq 1 "$experts"); do args+=(--expert "task$i=$work/expert$i.safetensors"); done
# Drop the inputs from the page cache is not possible without root privileges
# everywhere; the figures below are for warm files.
/usr/bin/time -v "$build/examples/twin-merge" "${args[@]}" 2> "$work/time.txt"
model=$(stat -c %s "$work/base.safetensors")
inputs=$(( model * (experts + 1) ))
output=$(stat -c %s "$work/model.safetensors")
peak_kb=$(grep "Maximum resident set size" "$work/time.txt" | awk '{print $NF}')
wall=$(grep "Elapsed (wall clock)" "$work/time.txt" | awk '{print $NF}')
grep -E "^built" "$work/time.txt" || true
awk -v p="$peak_kb" -v m="$model" -v i="$inputs" -v o="$output" -v w="$wall" 'BEGIN {
  peak = p * 1024;
  printf "inputs: %.1f MB (%d models of %.1f MB); output %.1f MB\n", i/1e6, i/m, m/1e6, o/1e6;
  printf "wall %s, peak RSS %.1f MB = %.2f models = %.3f of the inputs\n", w, peak/1e6, peak/m, peak/i;
  printf "goal: peak < 2 models + output = %.1f MB: %s\n", (2*m+o)/1e6, (peak < 2*m+o) ? "met" : "NOT met";
}'
