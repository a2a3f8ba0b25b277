#!/usr/bin/env bash
# Evaluate a checkpoint family against its targets and store the results under results/eval/.
#
#   DATA=path/to/data bash scripts/eval_family.sh            # the embedded family (default)
#   DATA=... MODEL_DIR=runs/echo-b8 bash scripts/eval_family.sh   # a trained run (folders ar/, teacher/, student/)
#
# DATA holds iu_xray/ and covid_cxr_notes/. Writes:
#   results/eval/normalized/{iu,covid}-SYSTEM.json     echo-eval --json, normalized + raw references, baselines
#                                                      (SYSTEM echo-fallback: echo --fallback teacher,ar; embedded only)
#   results/eval/perturbed/covid-SAMPLER-NAME.json     covid test radiographs under each fixed perturbation
#   results/eval/sensitivity-covid-{echo,teacher}.json image dependence (blank / ±1 grey / own vs partner NLL)
#   results/eval/smoke-rg1.json                        echo-report --json on RG1_UNCR.dcm with every sampler
# Per-study predictions go to ${PRED:-runs/eval-predictions} (not committed: they quote the data sets' text).
# SAMPLERS (default "teacher echo vanilla ar") and STEPS (default "quality perturbed sensitivity smoke cards")
# select parts, e.g. STEPS=quality SAMPLERS="ar teacher" while the student is still training; `echo` and `vanilla`
# are compared with the teacher's and the normal template's stored predictions, so run those first.
set -euo pipefail
SAMPLERS=${SAMPLERS:-teacher echo vanilla ar}
STEPS=${STEPS:-quality perturbed sensitivity smoke cards}
has() { [[ " $2 " == *" $1 "* ]]; }
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
  has quality "$STEPS" || break
  if [[ $set == iu ]]; then data=(--data "$DATA/iu_xray" --split test --limit 300); else data=(--data "$DATA/covid_cxr_notes" --split test); fi
  if [[ ! -f "$PRED/$set-normal-template.jsonl" ]]; then
    for b in majority frequent-normalized normal-template; do
      ev "${data[@]}" --baseline $b --json "$OUT/normalized/$set-$b.json" --predictions "$PRED/$set-$b.jsonl"
    done
  fi
  if has teacher "$SAMPLERS"; then
    ev "${data[@]}" --sampler teacher --model "$(model_of teacher)" --batch-size 8 \
       --compare "$PRED/$set-normal-template.jsonl" --json "$OUT/normalized/$set-teacher.json" --predictions "$PRED/$set-teacher.jsonl"
  fi
  if has echo "$SAMPLERS"; then
    ev "${data[@]}" --sampler echo --model "$(model_of echo)" --batch-size 8 \
       --compare "$PRED/$set-normal-template.jsonl" --json "$OUT/normalized/$set-echo.json" --predictions "$PRED/$set-echo.jsonl"
    ev "${data[@]}" --sampler echo --model "$(model_of echo)" --batch-size 8 \
       --compare "$PRED/$set-teacher.jsonl" --json "$OUT/normalized/$set-echo-vs-teacher.json"
  fi
  if has echo "$SAMPLERS" && [[ -z "${MODEL_DIR:-}" ]]; then
    # echo-report --fallback teacher,ar: the studies whose echo draft fails the report check drafted again by the
    # teacher, then AR (the embedded family: each fallback on its own role's checkpoint).
    ev "${data[@]}" --sampler echo --fallback teacher,ar --batch-size 8 \
       --compare "$PRED/$set-normal-template.jsonl" --json "$OUT/normalized/$set-echo-fallback.json" \
       --predictions "$PRED/$set-echo-fallback.jsonl"
  fi
  if has vanilla "$SAMPLERS"; then
    ev "${data[@]}" --sampler vanilla --model "$(model_of vanilla)" --batch-size 8 \
       --compare "$PRED/$set-echo.jsonl" --json "$OUT/normalized/$set-vanilla.json" --predictions "$PRED/$set-vanilla.jsonl"
  fi
  if has ar "$SAMPLERS"; then
    ev "${data[@]}" --sampler ar --model "$(model_of ar)" --batch-size 8 \
       --json "$OUT/normalized/$set-ar.json" --predictions "$PRED/$set-ar.jsonl"
  fi
done

perturbations=$(python -c "from echo_model.augment import PERTURBATIONS; print(' '.join(PERTURBATIONS))")
for s in $SAMPLERS; do
  has perturbed "$STEPS" && [[ $s != vanilla ]] || continue
  for p in $perturbations; do
    ev --data "$DATA/covid_cxr_notes" --split test --sampler "$s" --model "$(model_of "$s")" --batch-size 8 \
       --perturb "$p" --json "$OUT/perturbed/covid-$s-$p.json" --predictions "$PRED/perturbed-covid-$s-$p.jsonl"
  done
done

if has perturbed "$STEPS" && has echo "$SAMPLERS" && [[ -z "${MODEL_DIR:-}" ]]; then
  for p in $perturbations; do
    ev --data "$DATA/covid_cxr_notes" --split test --sampler echo --fallback teacher,ar --batch-size 8 \
       --perturb "$p" --json "$OUT/perturbed/covid-echo-fallback-$p.json"
  done
fi

for s in $SAMPLERS; do
  has sensitivity "$STEPS" && [[ $s == echo || $s == teacher ]] || continue
  ev --data "$DATA/covid_cxr_notes" --split test --sampler "$s" --model "$(model_of "$s")" --batch-size 8 \
     --sensitivity --json "$OUT/sensitivity-covid-$s.json"
  # The drafts themselves stay with the predictions (a model this small can repeat a training note verbatim).
  python - "$OUT/sensitivity-covid-$s.json" "$PRED/sensitivity-covid-$s-drafts.json" <<'PY'
import json, sys
result = json.load(open(sys.argv[1]))
json.dump(result.pop("changes", []), open(sys.argv[2], "w"), indent=1)
json.dump(result, open(sys.argv[1], "w"), indent=2)
PY
done

if has smoke "$STEPS"; then
dcm=$(python -c "from pydicom.data import get_testdata_file; print(get_testdata_file('RG1_UNCR.dcm', download=False))")
python - "$dcm" "$OUT/smoke-rg1.json" "$(model_of echo)" "$(model_of teacher)" "$(model_of ar)" <<'PY'
import json, subprocess, sys
from echo_model.sampling import SAMPLER_SPECS
models = {"echo": sys.argv[3], "teacher": sys.argv[4], "vanilla": sys.argv[4], "ar": sys.argv[5]}
out = {}
for name in SAMPLER_SPECS:
    cmd = ["echo-report", "--json", "--sampler", name, "--model", models[name], "--fallback", "none", sys.argv[1]]
    done = subprocess.run(cmd, capture_output=True, text=True)
    row = json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr.strip().splitlines()[-1:]}
    out[name] = {k: row.get(k) for k in ("warnings", "tokens", "forward_passes", "error") if k in row}
    out[name]["well_formed"] = done.returncode == 0 and not row.get("warnings")
if sys.argv[3].startswith("embedded:"):  # the embedded family: echo, then teacher and AR where it fails the check
    cmd = ["echo-report", "--json", "--fallback", "teacher,ar", sys.argv[1]]
    done = subprocess.run(cmd, capture_output=True, text=True)
    row = json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr.strip().splitlines()[-1:]}
    out["echo --fallback teacher,ar"] = {k: row.get(k) for k in ("warnings", "tokens", "forward_passes", "sampler", "error")
                                         if k in row} | {"replaced": [r["sampler"] for r in row.get("replaced", [])]}
    out["echo --fallback teacher,ar"]["well_formed"] = done.returncode == 0 and not row.get("warnings")
json.dump(out, open(sys.argv[2], "w"), indent=2)
print({k: v["well_formed"] for k, v in out.items()})
PY
fi
# The model cards' metrics (python -m train.model_card --metrics results/eval/metrics-by-role.json).
has cards "$STEPS" && python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
keys = ("n", "rougeL", "bleu4", "cider", "ce_f1_5", "ce_f1_14", "well_formed", "tokens_per_forward_mean", "seconds_mean")
roles = {}
for role, sampler in (("ar", "ar"), ("teacher", "teacher"), ("student", "echo")):
    iu = json.loads((out / "normalized" / f"iu-{sampler}.json").read_text())
    covid = json.loads((out / "normalized" / f"covid-{sampler}.json").read_text())
    roles[role] = {k: iu[k] for k in keys if k in iu} | {
        "split": "IU X-ray test (first 300 studies, text-only), normalized references",
        "covid_test_rougeL": covid["rougeL"], "covid_test_ce_f1_5": covid["ce_f1_5"],
        "covid_test_well_formed": covid.get("well_formed")}
(out / "metrics-by-role.json").write_text(json.dumps(roles, indent=2))
PY
echo "done: results under $OUT"
