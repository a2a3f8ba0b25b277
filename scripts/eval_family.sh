#!/usr/bin/env bash
# Evaluate a checkpoint family against its targets and store the results under results/eval/.
#
#   DATA=path/to/data bash scripts/eval_family.sh            # the embedded family (default)
#   DATA=... MODEL_DIR=runs/echo-b8 bash scripts/eval_family.sh   # a trained run (folders ar/, teacher/, student/)
#
# DATA holds iu_xray/ and covid_cxr_notes/. Writes:
#   results/eval/normalized/{iu,covid}-SYSTEM.json     echo-eval --json, normalized + raw references, baselines
#   results/eval/perturbed/covid-SAMPLER-NAME.json     covid test radiographs under each fixed perturbation
#   results/eval/sensitivity-covid-{echo,teacher}.json image dependence (blank / ±1 grey / own vs partner NLL)
#   results/eval/smoke-rg1.json                        echo-report --json on RG1_UNCR.dcm with every sampler
# Per-study predictions go to ${PRED:-runs/eval-predictions} (not committed: they quote the data sets' text).
set -euo pipefail
DATA=${DATA:?set DATA to the folder holding iu_xray/ and covid_cxr_notes/}
OUT=results/eval
PRED=${PRED:-runs/eval-predictions}
mkdir -p "$OUT/normalized" "$OUT/perturbed" "$PRED"
model_of() {  # sampler -> --model argument
  local role
  case "$1" in ar) role=ar ;; teacher|vanilla) role=teacher ;; *) role=student ;; esac
  if [[ -n "${MODEL_DIR:-}" ]]; then echo "$MODEL_DIR/$role"; else echo "embedded:$role"; fi
}
ev() { echo-eval --no-progress --max-new-tokens 300 "$@"; }

for set in iu covid; do
  if [[ $set == iu ]]; then data=(--data "$DATA/iu_xray" --split test --limit 300); else data=(--data "$DATA/covid_cxr_notes" --split test); fi
  for b in majority frequent-normalized normal-template; do
    ev "${data[@]}" --baseline $b --json "$OUT/normalized/$set-$b.json" --predictions "$PRED/$set-$b.jsonl"
  done
  ev "${data[@]}" --sampler teacher --model "$(model_of teacher)" --batch-size 8 \
     --compare "$PRED/$set-normal-template.jsonl" --json "$OUT/normalized/$set-teacher.json" --predictions "$PRED/$set-teacher.jsonl"
  ev "${data[@]}" --sampler echo --model "$(model_of echo)" --batch-size 8 \
     --compare "$PRED/$set-normal-template.jsonl" --json "$OUT/normalized/$set-echo.json" --predictions "$PRED/$set-echo.jsonl"
  ev "${data[@]}" --sampler echo --model "$(model_of echo)" --batch-size 8 \
     --compare "$PRED/$set-teacher.jsonl" --json "$OUT/normalized/$set-echo-vs-teacher.json"
  ev "${data[@]}" --sampler vanilla --model "$(model_of vanilla)" --batch-size 8 \
     --compare "$PRED/$set-echo.jsonl" --json "$OUT/normalized/$set-vanilla.json" --predictions "$PRED/$set-vanilla.jsonl"
  ev "${data[@]}" --sampler ar --model "$(model_of ar)" --batch-size 8 \
     --json "$OUT/normalized/$set-ar.json" --predictions "$PRED/$set-ar.jsonl"
done

perturbations=$(python -c "from echo_model.augment import PERTURBATIONS; print(' '.join(PERTURBATIONS))")
for s in ${SAMPLERS_PERTURBED:-echo teacher ar}; do
  for p in $perturbations; do
    ev --data "$DATA/covid_cxr_notes" --split test --sampler "$s" --model "$(model_of "$s")" --batch-size 8 \
       --perturb "$p" --json "$OUT/perturbed/covid-$s-$p.json" --predictions "$PRED/perturbed-covid-$s-$p.jsonl"
  done
done

for s in echo teacher; do
  ev --data "$DATA/covid_cxr_notes" --split test --sampler "$s" --model "$(model_of "$s")" --batch-size 8 \
     --sensitivity --json "$OUT/sensitivity-covid-$s.json"
done

dcm=$(python -c "from pydicom.data import get_testdata_file; print(get_testdata_file('RG1_UNCR.dcm', download=False))")
python - "$dcm" "$OUT/smoke-rg1.json" "$(model_of echo)" "$(model_of teacher)" "$(model_of ar)" <<'PY'
import json, subprocess, sys
from echo_model.sampling import SAMPLER_SPECS
models = {"echo": sys.argv[3], "teacher": sys.argv[4], "vanilla": sys.argv[4], "ar": sys.argv[5]}
out = {}
for name in SAMPLER_SPECS:
    cmd = ["echo-report", "--json", "--sampler", name, "--model", models[name], sys.argv[1]]
    done = subprocess.run(cmd, capture_output=True, text=True)
    row = json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr.strip().splitlines()[-1:]}
    out[name] = {k: row.get(k) for k in ("report", "warnings", "tokens", "forward_passes", "error") if k in row}
    out[name]["well_formed"] = done.returncode == 0 and not row.get("warnings")
json.dump(out, open(sys.argv[2], "w"), indent=2)
print({k: v["well_formed"] for k, v in out.items()})
PY
echo "done: results under $OUT"
