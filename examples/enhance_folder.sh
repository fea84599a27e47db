#!/usr/bin/env bash
# Enhance every .wav in a folder with one model load; keep going past bad files.
#   examples/enhance_folder.sh NOISY_DIR CLEAN_DIR [extra metis options...]
# Writes CLEAN_DIR/<name>.wav and CLEAN_DIR/report.jsonl (one JSON object per file);
# skips files already enhanced, so the script can be re-run after an interruption.
set -uo pipefail
in_dir=${1:?usage: $0 NOISY_DIR CLEAN_DIR [metis options]}
out_dir=${2:?usage: $0 NOISY_DIR CLEAN_DIR [metis options]}
shift 2
mkdir -p "$out_dir"
shopt -s nullglob
files=("$in_dir"/*.wav)
if [ ${#files[@]} -eq 0 ]; then echo "no .wav files in $in_dir" >&2; exit 2; fi
metis enhance "${files[@]}" -o "$out_dir" --skip-existing --json --quiet "$@" > "$out_dir/report.jsonl"
status=$?
failed=$(grep -c '"status": "error"' "$out_dir/report.jsonl" || true)
echo "enhanced ${#files[@]} file(s), $failed failed; report: $out_dir/report.jsonl" >&2
exit $status
