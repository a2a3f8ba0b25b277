"""Regenerate the README's "Results" section from the stored result files.

    python scripts/render_results.py            # rewrite README.md between the result markers
    python scripts/render_results.py --check    # exit 1 if README.md is out of date

Inputs (all written by ``scripts/eval_family.sh``): ``results/eval/normalized/{iu,covid}-SYSTEM.json``
(``echo-eval --json``: normalized and raw references, the three baselines, paired comparisons),
``results/eval/perturbed/covid-SAMPLER-NAME.json`` (``--perturb``), ``results/eval/sensitivity-covid-SAMPLER.json``
(``--sensitivity``), ``results/eval/smoke-rg1.json``, ``results/eval/raw-trained/`` (the family trained on raw
reports, one line) and ``results/speed.json`` (``echo-bench --full --json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- results:start -->", "<!-- results:end -->"
ARMS = [("majority", "majority template (baseline)"), ("ar", "`ar` — Stage I AR"), ("teacher", "`teacher` — Stage II RAD, multi-step"),
        ("vanilla", "`vanilla` — teacher weights, one step per block"), ("echo", "`echo` — Stage III DCD student, one step per block")]


def _fmt(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _delta(comparison: dict | None, metric: str = "rougeL") -> dict | None:
    if not comparison:
        return None
    return comparison["metrics"][metric] if "metrics" in comparison else comparison.get(metric)


def _interval(d: dict) -> str:
    return f"{d['delta']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


NORMALIZED_SYSTEMS = [
    ("normal-template", "normal template, normalized (baseline)"),
    ("frequent-normalized", "most frequent normalized training report (baseline)"),
    ("majority", "most frequent raw training report (baseline)"),
    ("ar", "`ar` — Stage I AR"), ("teacher", "`teacher` — Stage II RAD, multi-step"),
    ("vanilla", "`vanilla` — teacher weights, one step per block"), ("echo", "`echo` — Stage III DCD student, one step per block"),
    ("echo-fallback", "`echo --fallback teacher,ar` — drafts that fail the check drafted again"),
]
SETS = (("iu", "IU X-ray test split (first 300 studies, text-only: the prompt carries the indication)"),
        ("covid", "covid_cxr_notes test split (each study with its radiograph)"))


def normalized_table(results: Path) -> list[str]:
    """Every system against normalized and raw references (method.md §3.5), with the report check's share."""
    folder = results / "eval" / "normalized"
    out: list[str] = []
    for data, title in SETS:
        rows, n = [], None
        for key, label in NORMALIZED_SYSTEMS:
            m = _json(folder / f"{data}-{key}.json")
            if m is None:
                continue
            n = m["n"]
            raw = m.get("raw_reference") or {}
            rows.append(f"| {label} | {_fmt(m['rougeL'])} | {_fmt(m['bleu4'])} | {_fmt(m['ce_f1_5'])} | "
                        f"{_fmt(raw.get('rougeL'))} | {_fmt(raw.get('bleu4'))} | {_fmt(m.get('well_formed'), 2)} | "
                        f"{_fmt(m.get('tokens_per_forward_mean'), 2)} | {_fmt(m.get('seconds_mean'), 3)} |")
        if rows:
            out += [f"{title}, {n} studies:", "",
                    "| system | ROUGE-L (normalized) | BLEU-4 (normalized) | CE-F1 (5) | ROUGE-L (raw) | BLEU-4 (raw) "
                    "| well-formed | tokens / forward | s / report |", "|---|---|---|---|---|---|---|---|---|", *rows, ""]
    return out


def fallback_line(results: Path) -> list[str]:
    """What ``--fallback teacher,ar`` costs: the share of studies drafted again, per data set."""
    folder = results / "eval" / "normalized"
    parts = []
    for data, name in (("iu", "IU X-ray"), ("covid", "covid_cxr_notes")):
        m, echo = _json(folder / f"{data}-echo-fallback.json"), _json(folder / f"{data}-echo.json")
        if m and "redrafted" in m:
            part = (f"{name}: {m['redrafted']:.0%} of the studies drafted again, well-formed {m['well_formed']:.2f} "
                    f"(`echo` alone {_fmt((echo or {}).get('well_formed'), 2)})")
            d = _delta(m.get("comparison"))
            if d:
                part += f", ROUGE-L − normal template {_interval(d)}"
            parts.append(part)
    if not parts:
        return []
    return ["* `echo-report --fallback teacher,ar` (and `echo-eval --fallback`): a draft that fails the report check "
            "is drafted again by the teacher, then by AR, and the output keeps the drafts it replaced; "
            + "; ".join(parts) + ". Its s / report adds every attempt; the re-drafted studies pay the teacher's "
            "(or AR's) time on top of the one-step draft."]


def paired_lines(results: Path) -> list[str]:
    """The paired-bootstrap differences the family is judged by (95 % intervals, same studies)."""
    folder = results / "eval" / "normalized"
    lines = []
    for data, name in (("iu", "IU X-ray"), ("covid", "covid_cxr_notes")):
        parts = []
        echo, teacher = _json(folder / f"{data}-echo.json"), _json(folder / f"{data}-teacher.json")
        for label, m in (("`echo` − normal template", echo), ("`teacher` − normal template", teacher)):
            d = _delta((m or {}).get("comparison"))
            if d:
                parts.append(f"{label} {_interval(d)}")
        d = _delta((_json(folder / f"{data}-echo-vs-teacher.json") or {}).get("comparison"))
        if d and teacher:
            parts.append(f"`echo` − `teacher` {_interval(d)} (`echo` at {echo['rougeL'] / teacher['rougeL']:.0%} of the "
                         "teacher)")
        d = _delta((_json(folder / f"{data}-vanilla.json") or {}).get("comparison"))
        if d:
            parts.append(f"`vanilla` − `echo` {_interval(d)}")
        majority = _json(folder / f"{data}-majority.json")
        if echo and majority:
            parts.append(f"CE-F1 (5) `echo` {echo['ce_f1_5']:.3f} vs majority {majority['ce_f1_5']:.3f}")
        if parts:
            lines.append(f"* {name}, ROUGE-L against normalized references: " + "; ".join(parts) + ".")
    return lines


def robustness_table(results: Path) -> list[str]:
    """Well-formed share on the covid test radiographs under each fixed perturbation (echo_model.augment)."""
    folder = results / "eval" / "perturbed"
    runs: dict[str, dict[str, dict]] = {}
    for path in sorted(folder.glob("covid-*.json")) if folder.is_dir() else []:
        m = json.loads(path.read_text())
        system = m["run"]["sampler"] + (" --fallback " + ",".join(m["run"]["fallback"]) if m["run"].get("fallback") else "")
        runs.setdefault(system, {})[m.get("perturbation") or m["run"].get("perturbation")] = m
    if not runs:
        return []
    names = sorted({p for r in runs.values() for p in r})
    samplers = [s for s in ("ar", "teacher", "echo", "echo --fallback teacher,ar") if s in runs]
    rows = ["| perturbation | " + " | ".join(f"`{s}` well-formed" for s in samplers) + " |",
            "|---|" + "---|" * len(samplers)]
    for p in names:
        rows.append(f"| `{p}` | " + " | ".join(_fmt(runs[s].get(p, {}).get("well_formed"), 2) for s in samplers) + " |")
    total = {s: sum(m["well_formed"] * m["n"] for m in runs[s].values()) / sum(m["n"] for m in runs[s].values())
             for s in samplers}
    rows.append("| **all perturbations** | " + " | ".join(f"**{total[s]:.2f}**" for s in samplers) + " |")
    n = next(iter(runs[samplers[0]].values()))["n"]
    return [f"Robustness: the {n} covid_cxr_notes test radiographs under each fixed perturbation "
            "(`echo-eval --perturb NAME`, the augmentations at fixed strength), share of drafts the report check "
            "passes; every failure is warned (the draft carries its warnings):", "", *rows]


def image_dependence_lines(results: Path) -> list[str]:
    lines = []
    for sampler in ("echo", "teacher"):
        s = _json(results / "eval" / f"sensitivity-covid-{sampler}.json")
        if not s:
            continue
        nd = s.get("non_default") or {}
        line = (f"* `{sampler}`, covid_cxr_notes test ({s['n']} studies): a blank image changes "
                f"{s['blank_change_share']:.0%} of the drafts, a ±1 grey-level change {1 - s['shift_stable_share']:.0%}; "
                f"{s.get('distinct_reports', '–')} distinct drafts; reference NLL own − partner image "
                f"{s['nll_difference']:+.4f} [{s['low']:+.4f}, {s['high']:+.4f}] nats/token on all tokens")
        if nd:
            line += (f", {nd['nll_difference']:+.4f} [{nd['low']:+.4f}, {nd['high']:+.4f}] on the {nd['tokens']} tokens "
                     f"of non-default statements ({nd['n']} studies)")
        lines.append(line + ".")
    return lines


def smoke_line(results: Path) -> list[str]:
    s = _json(results / "eval" / "smoke-rg1.json")
    if not s:
        return []
    parts = [f"`{k}` " + ("well-formed" if v.get("well_formed") else "warned: " + "; ".join(v.get("warnings") or [])) for k, v in s.items()]
    return ["* `echo-report --json` on `RG1_UNCR.dcm` (a real radiograph from another site): " + ", ".join(parts) + "."]


def raw_trained_line(results: Path) -> list[str]:
    """The family trained on raw reports, in one line, for comparison."""
    folder = results / "eval" / "raw-trained"
    raw, norm = _json(folder / "iu-echo.json"), _json(folder / "normalized-iu-echo.json")
    covid = _json(folder / "normalized-covid-echo.json")
    if not (raw and norm):
        return []
    return [f"* Before (the family trained on raw reports, `results/eval/raw-trained/`): `echo` on IU X-ray ROUGE-L "
            f"{raw['rougeL']:.3f} against raw references, {norm['rougeL']:.3f} against normalized ones, well-formed "
            f"{norm.get('well_formed', 0):.2f}" + (f"; covid_cxr_notes well-formed {covid.get('well_formed', 0):.2f}" if covid else "")
            + "."]


def family_section(results: Path) -> list[str]:
    table = normalized_table(results)
    if not table:
        return []
    head = ["The embedded b = 8 family, trained on normalized reports (method.md §3.5) with augmented radiographs, "
            "judged against normalized references (the form it writes) and the references as written (raw); "
            "`well-formed` is the share of drafts the report check passes, judged as drafted (nothing repaired); "
            "greedy decoding, CPU.", ""]
    out = head + table
    for block in (paired_lines(results) + fallback_line(results), image_dependence_lines(results) + smoke_line(results),
                  raw_trained_line(results)):
        if block:
            out += [*block, ""]
    robust = robustness_table(results)
    if robust:
        out += [*robust, ""]
    return out[:-1]


def _speed_rows(cells: dict[str, dict], *, tokens: bool) -> list[str]:
    """Table rows of one mode's batch-1 cells (arm -> cell), in the benchmark's arm order."""
    head = "| sampler | tokens | s / report | first block (s) | tokens / forward | tokens / s |" if tokens else \
        "| sampler | s / report | first block (s) | tokens / forward | tokens / s |"
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for a in ("ar", "teacher", "vanilla", "echo"):
        if a in cells:
            v = cells[a]
            count = f" {v['tokens']:.0f} |" if tokens else ""
            rows.append(f"| `{a}` |{count} {v['median_seconds']:.3f} | {v['median_first_block_seconds']:.3f} | "
                        f"{v['tokens_per_forward']:.2f} | {v['median_tokens_per_second']:.1f} |")
    return rows


def speed_table(results: Path) -> list[str]:
    """The Speed section: the natural-length (per report) figures first, then fixed length (throughput)."""
    path = results / "speed.json"
    if not path.is_file():
        return []
    d = json.loads(path.read_text())
    arms = {a: v for a, v in d["arms"].items()} if isinstance(d["arms"], dict) else {v["arm"]: v for v in d["arms"]}
    natural = {r["arm"]: r for r in d.get("results", []) if r["mode"] == "natural" and r["batch"] == 1}
    rows = [(f"`echo-bench --full` on {d['device']}, {d['threads']} thread(s), {d['dtype']}, quantisation "
             f"{d['quantization']}, batch 1, prefill included, median of {d['settings']['runs']} interleaved runs."), ""]
    if "ar" in natural and "echo" in natural:
        echo_s = natural["echo"]["median_seconds"]
        per_report = natural["ar"]["median_seconds"] / echo_s
        rate = d["speedups"]["natural"]["1"]
        teacher = (f"; over `teacher`: {natural['teacher']['median_seconds'] / echo_s:.2f}×"
                   if "teacher" in natural else "")
        rows += [("**Natural length** (each sampler stops at its `<eos>`, as in use and as the Race tab runs by "
                  "default; the benchmark's synthetic images):"), ""]
        rows += _speed_rows(natural, tokens=True)
        rows += ["", (f"* Speed-up of `echo` over `ar` per report (AR seconds / ECHO seconds): **{per_report:.2f}×**"
                      f"{teacher}; in tokens/s over `ar`: {rate['ar_over_echo']:.2f}×. A report of "
                      f"{natural['echo']['tokens']:.0f} tokens leaves fewer blocks to save than "
                      f"{d['settings']['max_new_tokens']}, so the prefill and the first block weigh more than at "
                      "fixed length."), ""]
    rows += [(f"**Fixed length** ({d['settings']['max_new_tokens']} new tokens each, `<eos>` ignored: throughput, "
              "not the time of a real report):"), ""]
    rows += _speed_rows(arms, tokens=False)
    cm = d["cost_model"]
    rows += ["", (f"* Throughput speed-up of `echo` over `ar` at {d['settings']['max_new_tokens']} tokens "
                  f"(tokens/s): **{d['speedup_ar_over_echo']:.2f}×**; over `teacher`: "
                  f"{d['speedup_teacher_over_echo']:.2f}×."),
             f"* Cost model of this machine, t(T) = a + c·T per forward: a = {cm['a'] * 1e3:.2f} ms, c = {cm['c'] * 1e3:.3f} ms/token; "
             f"its cap for b = 8 is {cm['cap_b8']:.2f}× (b = 16: {cm['cap_b16']:.2f}×); measured / cap = "
             f"{d['measured_over_cap']:.0%}.",
             "* Fixed length ignores `<eos>`: once the trained teacher has written `<eos>` it fills the rest with confident "
             "`<eos>` tokens several per step, which flatters its tokens per forward in this table.",
             "", "![speed](results/speed.png)"]
    return rows + real_speed_rows(results)


def real_speed_rows(results: Path) -> list[str]:
    """ECHO / AR at natural length on real radiographs, per thread count and weight format
    (``scripts/natural_speed.py``), with the int8 gate's figures on the same radiographs."""
    d = _json(results / "speed_real.json")
    if not d:
        return []
    rows = ["", (f"**Natural length on real radiographs** (`python scripts/natural_speed.py --data DATA/covid_cxr_notes`: "
                 f"{d['files'].replace('RG1_UNCR.dcm', '`RG1_UNCR.dcm`')}, {d['studies']} studies, each drafted once per arm per round, {d['rounds']} rounds "
                 f"in turn, {d['device']}; medians of the rounds):"), "",
            ("| threads, weights | ECHO / AR, tokens/s | the rounds | per report | predicted | prefill (ms) | "
             "first block ECHO / AR (ms) | tokens ECHO / AR |"),
            "|---|---|---|---|---|---|---|---|"]
    for c in d["configs"]:
        m = c["median"]
        each = ", ".join(f"{r['speedup']:.2f}" for r in c["rounds"])
        rows.append(f"| {c['label']} | **{m['speedup']:.2f}×** | {each} | {m['per_report']:.2f}× | "
                    f"{m['predicted']:.2f}× | {m['prefill_ms']:.1f} | {m['echo_first_block_ms']:.1f} / "
                    f"{m['ar_first_block_ms']:.1f} | {m['echo_tokens']:.0f} / {m['ar_tokens']:.0f} |")
    gate = _json(results / "int8_gate_covid.json")
    if gate:
        parts = []
        for name, g in gate["samplers"].items():
            well = (f", well-formed {g['well_formed_fp32']:.0%} → {g['well_formed_int8']:.0%}"
                    if g.get("well_formed_fp32") is not None else "")
            parts.append(f"`{name}` identical {g['identical_share']:.0%}, ROUGE-L int8 − fp32 {g['rouge_l_delta']:+.4f} "
                         f"[{g['rouge_l_low']:+.4f}, {g['rouge_l_high']:+.4f}]{well}")
        rows += ["", (f"* The int8 weights on the {gate['studies']} {gate['data']} {gate['split']} radiographs "
                      f"(`results/int8_gate_covid.json`, views drafted): {'; '.join(parts)}: "
                      f"{'PASS' if gate['passed'] else 'FAIL'}. The prefill (vision tower and prompt) and ECHO's "
                      "16-token forwards are mostly arithmetic, which int8 weights and a second thread make cheaper; AR's "
                      "one-token forwards are mostly dispatch, which neither changes much.")]
    return rows + ["", "![speed on real radiographs](results/speed_real.png)"]


def render(root: Path = ROOT) -> str:
    results = root / "results"
    body = ["## Results", "", "### Quality", ""] + family_section(results)
    body += ["", "### Speed", ""] + speed_table(results)
    body += ["", "Reproduce: `DATA=DATA_FOLDER bash scripts/eval_family.sh` (every `echo-eval` run above; "
             "`MODEL_DIR=runs/echo-b8` for a trained run instead of the embedded family), `echo-bench --full --json "
             "results/speed.json --plot results/speed.png`, then `python scripts/render_results.py`."]
    return "\n".join(body)


def updated_readme(root: Path = ROOT) -> str:
    text = (root / "README.md").read_text()
    if START not in text or END not in text:
        raise SystemExit("README.md lacks the results markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{render(root)}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    new = updated_readme()
    if args.check:
        if new != (ROOT / "README.md").read_text():
            print("README.md results section is out of date: run python scripts/render_results.py", file=sys.stderr)
            return 1
        return 0
    (ROOT / "README.md").write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
