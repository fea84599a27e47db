#!/usr/bin/env bash
# Voice conversion over a manifest: every source converted to one reference voice.
#   examples/vc_manifest.sh REFERENCE.wav OUT_DIR SOURCE.wav... [-- extra metis options]
# Builds jobs.jsonl (source, reference, output, seed) and runs them with one model load.
set -uo pipefail
ref=${1:?usage: $0 REFERENCE.wav OUT_DIR SOURCE.wav... [-- metis options]}
out_dir=${2:?usage: $0 REFERENCE.wav OUT_DIR SOURCE.wav... [-- metis options]}
shift 2
sources=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do sources+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
mkdir -p "$out_dir"
manifest="$out_dir/jobs.jsonl"
: > "$manifest"
for src in "${sources[@]}"; do
  name=$(basename "${src%.*}")
  python3 -c 'import json,sys; print(json.dumps({"source": sys.argv[1], "reference": sys.argv[2], "output": sys.argv[3], "seed": 0}))' \
    "$src" "$ref" "$out_dir/$name.vc.wav" >> "$manifest"
done
metis vc --manifest "$manifest" --json --quiet "$@" > "$out_dir/report.jsonl"
status=$?
echo "converted ${#sources[@]} file(s) (exit $status); report: $out_dir/report.jsonl" >&2
exit $status
