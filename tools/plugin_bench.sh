#!/bin/sh
# Runs a plugin's benchmark set: every line of ARGS_FILE (blank lines and # comments skipped)
# as `PIO bench -m MODEL_DIR --set model.load_format=dummy LINE EXTRA...`, so the weights have
# the real shape without being read from disk. Prints each command, then its table.
#
#   tools/plugin_bench.sh PIO MODEL_DIR ARGS_FILE [EXTRA...]
#   tools/plugin_bench.sh bin/pio QWEN3_4B_FOLDER \
#       plugins/qwen3_4b_instruct_2507/benchmarks/pio-bench.args --device cuda --bandwidth-gbs 4300
#
# Exits non-zero if a run fails (after trying the others).
set -u
if [ $# -lt 3 ]; then
    echo "usage: $0 PIO MODEL_DIR ARGS_FILE [EXTRA...]" >&2
    exit 2
fi
pio=$1
model=$2
args_file=$3
shift 3
if [ ! -r "$args_file" ]; then
    echo "$0: cannot read $args_file" >&2
    exit 2
fi
status=0
while IFS= read -r line || [ -n "$line" ]; do
    case $line in '' | '#'*) continue ;; esac
    echo "\$ $pio bench -m $model --set model.load_format=dummy $line $*"
    # shellcheck disable=SC2086 # a line is a list of arguments
    "$pio" bench -m "$model" --set model.load_format=dummy $line "$@" || status=1
done <"$args_file"
exit $status
