#!/usr/bin/env bash
# Speak each non-empty line of a text file in the voice of a prompt (one model load).
#   examples/tts_from_text_file.sh LINES.txt PROMPT.wav "prompt transcript" OUT_DIR [metis options]
# Outputs OUT_DIR/line_0001.wav, ... and OUT_DIR/report.jsonl.
set -uo pipefail
lines=${1:?usage: $0 LINES.txt PROMPT.wav TRANSCRIPT OUT_DIR [metis options]}
prompt=${2:?}; transcript=${3:?}; out_dir=${4:?}
shift 4
mkdir -p "$out_dir"
manifest="$out_dir/jobs.jsonl"
python3 - "$lines" "$prompt" "$transcript" "$out_dir" > "$manifest" <<'PY'
import json, sys
lines, prompt, transcript, out_dir = sys.argv[1:5]
texts = [t.strip() for t in open(lines, encoding="utf-8") if t.strip()]
for i, text in enumerate(texts, 1):
    print(json.dumps({"prompt": prompt, "prompt_text": transcript, "text": text,
                      "output": f"{out_dir}/line_{i:04d}.wav", "seed": i}, ensure_ascii=False))
PY
metis tts --manifest "$manifest" --json --quiet "$@" > "$out_dir/report.jsonl"
status=$?
echo "spoke $(wc -l < "$manifest") line(s) (exit $status); report: $out_dir/report.jsonl" >&2
exit $status
