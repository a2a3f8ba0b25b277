"""Image sensitivity: a model with zeroed vision output scores exactly 0, an image-dominated one does not."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from conftest import make_checkpoint, synthetic_cxr

from echo_eval.sensitivity import (
    blank_images,
    default_statements,
    image_sensitivity,
    nll_method,
    partner_images,
    reference_nll,
    response_mask,
    scope_tokens,
    shift_grey,
    shuffled_partners,
    statement_spans,
)
from echo_model.data.records import ImageRef, StudyRecord
from echo_model.masks import block_causal_mask, to_attention_bias
from echo_model.sampling import SamplerConfig

REPORTS = [
    ("The heart is normal in size. The lungs are clear.", "No acute cardiopulmonary abnormality."),
    ("There is a small left pleural effusion with adjacent atelectasis.", "Small left pleural effusion."),
    ("Mild cardiomegaly. Pulmonary vascular congestion without frank edema.", "Mild cardiomegaly."),
    ("No pneumothorax. No focal consolidation.", "Sternotomy wires are intact."),
]
CFG = SamplerConfig(max_new_tokens=8)


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> list[StudyRecord]:
    """Four studies with synthetic images of different sizes (one with two views) and one without images."""
    root = tmp_path_factory.mktemp("sens")
    sizes = [(120, 100), (100, 130), (140, 110), (112, 112)]
    out = []
    for i, ((findings, impression), size) in enumerate(zip(REPORTS, sizes)):
        views = []
        for k in range(2 if i == 1 else 1):
            path = root / f"s{i}_{k}.png"
            synthetic_cxr(100 + 7 * i + k, size).save(path)
            views.append(ImageRef(path=str(path), view="frontal" if k == 0 else "lateral"))
        out.append(StudyRecord(id=f"s{i}", findings=findings, impression=impression, images=tuple(views)))
    out.append(
        StudyRecord(id="text-only", findings="The lungs are clear.", impression="Normal.", indication="cough")
    )
    return out


def _merger_last(ck):
    return ck.model.model.model.visual.merger.mlp[-1]


@pytest.fixture(scope="module")
def blind(tokenizer):
    """Vision output zeroed: the image tokens carry nothing, whatever the pixels."""
    ck = make_checkpoint(tokenizer, block_length=4, seed=5)
    with torch.no_grad():
        _merger_last(ck).weight.zero_()
        _merger_last(ck).bias.zero_()
    return ck


@pytest.fixture(scope="module")
def seeing(tokenizer):
    """Vision output scaled up so that the image tokens dominate the hidden states."""
    ck = make_checkpoint(tokenizer, block_length=4, seed=5)
    with torch.no_grad():
        _merger_last(ck).weight.mul_(30.0)
        _merger_last(ck).bias.mul_(30.0)
    return ck


# ------------------------------------------------------------------------------------------ helpers
def test_partners_are_a_seeded_derangement():
    for n in (2, 3, 10):
        p = shuffled_partners(n, seed=4)
        assert sorted(p) == list(range(n)) and all(p[i] != i for i in range(n))
        assert p == shuffled_partners(n, seed=4)
    assert shuffled_partners(10, seed=1) != shuffled_partners(10, seed=2)
    with pytest.raises(ValueError, match="got 1"):
        shuffled_partners(1)


def test_image_substitutes_keep_the_sizes():
    own = [synthetic_cxr(1, (120, 100)), synthetic_cxr(2, (90, 140))]
    other = [synthetic_cxr(3, (200, 180))]
    assert [im.size for im in partner_images(own, other)] == [im.size for im in own]
    blank = blank_images(own)
    assert [im.size for im in blank] == [im.size for im in own]
    assert set(np.unique(np.asarray(blank[0]))) == {128}
    base = np.asarray(own[0], dtype=np.int16)
    up, down = (
        np.asarray(shift_grey(own, 1)[0], dtype=np.int16),
        np.asarray(shift_grey(own, -1)[0], dtype=np.int16),
    )
    assert np.array_equal(up, np.clip(base + 1, 0, 255)) and np.array_equal(down, np.clip(base - 1, 0, 255))


def test_nll_method_follows_the_sampler():
    assert nll_method("ar") == "causal"
    assert {nll_method(s) for s in ("teacher", "echo", "vanilla")} == {"masked-diffusion"}
    with pytest.raises(ValueError, match="'beam'"):
        nll_method("beam")


# ---------------------------------------------------------------------------------- NLL definitions
def _prompt_and_report(ck, rec):
    from echo_model.imaging import load_image

    images = [load_image(ref.path).image for ref in rec.images]
    return ck.processor.encode(images, indication=rec.indication), rec.report


def _full_positions(ck, prompt, R):
    rope, delta = ck.model.rope_index(prompt, ck.processor.image_token_id)
    P = prompt.length
    return torch.cat([rope, (torch.arange(P, P + R) + delta)[None].expand(3, -1)], 1)  # (3, P+R)


def _causal_token_losses(checkpoint, prompt, resp: list[int]) -> torch.Tensor:
    """``(R,)`` next-token CE of each response token after ``prompt``, under the causal mask (the reference the
    NLL checks compare with)."""
    seq = torch.cat([prompt.input_ids, torch.tensor(resp)])
    P, R = prompt.length, len(resp)
    with torch.no_grad():
        logits = checkpoint.model(
            seq[None],
            position_ids=_full_positions(checkpoint, prompt, R)[:, None],
            attention_bias=to_attention_bias(block_causal_mask(P + R, 1), checkpoint.model.dtype),
            cache=None,
            pixel_values=prompt.pixel_values,
            image_grid_thw=prompt.image_grid_thw,
        )[0]
    return torch.nn.functional.cross_entropy(logits[P - 1 : P + R - 1], seq[P:], reduction="none")


def test_causal_nll_is_the_next_token_loss(checkpoint, records):
    prompt, report = _prompt_and_report(checkpoint, records[0])
    [(nll, n)] = reference_nll(checkpoint, [prompt], [report], method="causal")
    resp = checkpoint.processor.tokenizer(report, add_special_tokens=False)["input_ids"] + [
        checkpoint.processor.eos_token_id
    ]
    ce = _causal_token_losses(checkpoint, prompt, resp)  # (R,)
    R = len(resp)
    expected = ce.mean().item()
    assert n == R and nll == pytest.approx(expected, rel=1e-5)


def test_all_masked_diffusion_nll_is_what_the_one_step_sampler_conditions_on(checkpoint, records):
    """RAD layout, all response tokens masked == for each block, a plain block-causal forward over
    [prompt | clean previous blocks | this block masked] (the inference-time view), summed over blocks."""
    ck = checkpoint
    b, proc = ck.model.block_length, ck.processor
    prompt, report = _prompt_and_report(ck, records[3])
    [(nll, n)] = reference_nll(ck, [prompt], [report], method="masked-diffusion")
    text = proc.tokenizer(report, add_special_tokens=False)["input_ids"] + [proc.eos_token_id]
    P = prompt.length
    resp = text + [proc.eos_token_id] * ((-(P + len(text))) % b)
    clean = torch.cat([prompt.input_ids, torch.tensor(resp)])
    positions = _full_positions(ck, prompt, len(resp))
    total, count = 0.0, 0
    for k in range(P // b, (P + len(resp)) // b):
        lo, hi = k * b, (k + 1) * b
        x = clean[:hi].clone()
        x[max(lo, P) : hi] = proc.mask_token_id
        with torch.no_grad():
            logits = ck.model(
                x[None],
                position_ids=positions[:, None, :hi],
                attention_bias=to_attention_bias(block_causal_mask(hi, b), ck.model.dtype),
                cache=None,
                pixel_values=prompt.pixel_values,
                image_grid_thw=prompt.image_grid_thw,
            )[0]
        for j in range(max(lo, P), min(hi, P + len(text))):
            total += torch.nn.functional.cross_entropy(logits[j], clean[j]).item()
            count += 1
    assert n == count == len(text)
    assert nll == pytest.approx(total / count, rel=1e-4)


def test_nll_does_not_depend_on_the_batch(checkpoint, records):
    pairs = [_prompt_and_report(checkpoint, r) for r in records[:3]]
    prompts, reports = [p for p, _ in pairs], [r for _, r in pairs]
    for method in ("causal", "masked-diffusion"):
        one = reference_nll(checkpoint, prompts, reports, method=method, batch_size=1)
        three = reference_nll(checkpoint, prompts, reports, method=method, batch_size=3)
        assert [n for _, n in one] == [n for _, n in three]
        assert [v for v, _ in one] == pytest.approx([v for v, _ in three], rel=1e-4)


def test_partial_masking_is_seeded_and_scores_only_masked_tokens(checkpoint, records):
    prompt, report = _prompt_and_report(checkpoint, records[2])
    m1 = response_mask(checkpoint, prompt, report, mask_ratio=0.5, seed=3)
    assert torch.equal(m1, response_mask(checkpoint, prompt, report, mask_ratio=0.5, seed=3))
    assert response_mask(checkpoint, prompt, report, mask_ratio=1.0) is None
    [(_, n_all)] = reference_nll(checkpoint, [prompt], [report], method="masked-diffusion")
    [(_, n_half)] = reference_nll(checkpoint, [prompt], [report], method="masked-diffusion", masks=[m1])
    assert 1 <= n_half < n_all
    with pytest.raises(ValueError, match="mask_ratio"):
        response_mask(checkpoint, prompt, report, mask_ratio=0.0)


# ---------------------------------------------------------------------------------------- the check
@pytest.mark.parametrize("sampler", ["echo", "ar"])
def test_a_blind_model_scores_exactly_zero(blind, records, sampler):
    res = image_sensitivity(
        records, blind, sampler=sampler, config=CFG, batch_size=2, n_resamples=100, progress=False
    )
    assert res.n == 4 and res.skipped == 1
    assert res.method == ("causal" if sampler == "ar" else "masked-diffusion")
    assert all(s.difference == 0.0 for s in res.studies)
    assert res.nll_difference == 0.0 and res.low == 0.0 and res.high == 0.0
    assert res.non_default.n == 4 and res.non_default.interval.delta == 0.0
    assert res.blank_change_share == 0.0
    assert res.shift_stable_share == 1.0 and res.blank_change_and_shift_stable_share == 0.0
    assert all(s.partner_id != s.id for s in res.studies)


@pytest.mark.parametrize("sampler", ["echo", "ar"])
def test_an_image_dominated_model_has_a_non_zero_difference(seeing, records, sampler):
    generation = sampler == "echo"  # decoding is exercised once; the AR run checks the causal NLL
    res = image_sensitivity(
        records,
        seeing,
        sampler=sampler,
        config=CFG,
        batch_size=4,
        n_resamples=100,
        generation=generation,
        progress=False,
    )
    assert res.n == 4
    assert all(abs(s.difference) > 1e-4 for s in res.studies)
    assert abs(res.nll_difference) > 1e-3
    assert all(abs(s.difference_non_default) > 1e-4 for s in res.studies)
    if generation:
        assert res.blank_change_share > 0.0
        md = res.markdown()
        assert "NLL own - partner" in md and "blank image" in md


def test_generation_check_can_be_skipped_and_json_has_both_parts(seeing, records):
    res = image_sensitivity(
        records, seeing, sampler="teacher", config=CFG, generation=False, n_resamples=50, progress=False
    )
    data = res.to_json()
    assert data["changes"] == [] and data["blank_change_share"] is None
    assert len(data["studies"]) == 4 and {"nll_own", "nll_partner", "difference", "partner_id"} <= set(
        data["studies"][0]
    )


def test_cli_sensitivity_mode(tmp_path, checkpoint, records, capsys):
    import dataclasses
    import json

    from echo_eval.eval_cli import main
    from echo_model.data.records import write_jsonl

    model = tmp_path / "model"
    checkpoint.save_pretrained(model)
    data = tmp_path / "studies.jsonl"
    write_jsonl([dataclasses.replace(r, split="test") for r in records], data)
    out = tmp_path / "sens.json"
    assert (
        main(
            [
                "--data",
                str(data),
                "--model",
                str(model),
                "--sensitivity",
                "--max-new-tokens",
                "4",
                "--limit",
                "3",
                "--n-resamples",
                "50",
                "--json",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["n"] == 3 and result["method"] == "masked-diffusion"
    assert {"nll_difference", "low", "high", "blank_change_share", "shift_stable_share"} <= set(result)
    assert result["non_default"]["n"] == 3 and result["non_default"]["skipped_no_statement"] == 0
    assert 1 <= result["distinct_reports"] <= 3
    assert "| NLL own - partner" in capsys.readouterr().out


# ------------------------------------------------------------------------------ non-default scope
def _normalized(findings: str, impression: str = "") -> str:
    from echo_model.data.normalize import normalize_sections

    r = normalize_sections(findings, impression)
    return StudyRecord(id="n", findings=r.findings, impression=r.impression).report


def test_default_statements_are_the_normalizers_normal_sentences():
    from echo_model.data.normalize import DEFAULT_IMPRESSION, REGIONS

    defaults = default_statements()
    assert DEFAULT_IMPRESSION in defaults and "The lungs are clear." in defaults
    assert "There is no pneumothorax." in defaults  # a part, written when the rest would contradict
    assert all(r.normal.split(". ")[0].rstrip(".") + "." in defaults for r in REGIONS if r.normal)
    assert "Mild cardiomegaly." not in defaults


def test_scope_tokens_select_only_the_non_default_sentences(tokenizer):
    report = _normalized("Mild cardiomegaly.", "Mild cardiomegaly.")
    assert "The hila are not enlarged." in report and report.count("Mild cardiomegaly.") == 2
    spans = statement_spans(report)
    non_default = [(a, b) for a, b, d in spans if not d]
    assert [report[a:b] for a, b in non_default] == ["Mild cardiomegaly.", "Mild cardiomegaly."]
    assert all(report[a:b] in default_statements() for a, b, d in spans if d)
    enc = tokenizer(report, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    keep = scope_tokens(report, offsets, scope="non-default")
    covered = {j for (a, b), k in zip(offsets, keep) if k for j in range(a, b) if not report[j].isspace()}
    wanted = {j for a, b in non_default for j in range(a, b) if not report[j].isspace()}
    assert covered == wanted  # exactly the two sentences' characters: no header, no default sentence
    assert scope_tokens(report, offsets, scope="all") == [True] * len(offsets)
    with pytest.raises(ValueError, match="'none'"):
        scope_tokens(report, offsets, scope="none")


def test_scope_tokens_on_hand_made_offsets():
    report = "Findings: The lungs are clear. Small effusion. Impression: Effusion."
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", report)]
    keep = scope_tokens(report, words, scope="non-default")
    assert [report[a:b] for (a, b), k in zip(words, keep) if k] == ["Small", "effusion.", "Effusion."]


@pytest.mark.parametrize("method", ["causal", "masked-diffusion"])
def test_non_default_scope_scores_fewer_tokens(checkpoint, records, method):
    prompt, report = _prompt_and_report(checkpoint, records[0])  # "The lungs are clear." and the default impression
    [(v_all, n_all)] = reference_nll(checkpoint, [prompt], [report], method=method)
    [(v_nd, n_nd)] = reference_nll(checkpoint, [prompt], [report], method=method, scope="non-default")
    heart = checkpoint.processor.tokenizer(" The heart is normal in size.", add_special_tokens=False)["input_ids"]
    assert 0 < n_nd < n_all and n_nd == len(heart)
    assert math.isfinite(v_nd) and v_nd != pytest.approx(v_all)
    with pytest.raises(ValueError, match="'everything'"):
        reference_nll(checkpoint, [prompt], [report], method=method, scope="everything")


def test_non_default_scope_equals_all_when_no_default_sentence(checkpoint, records):
    """A report with no default sentence: the scope is every report token but the headers and <eos>; scored on
    those same tokens, ``all`` gives the same value."""
    prompt, report = _prompt_and_report(checkpoint, records[2])
    assert not any(d for *_, d in statement_spans(report))
    proc = checkpoint.processor
    enc = proc.tokenizer(report, add_special_tokens=False, return_offsets_mapping=True)
    keep = scope_tokens(report, [tuple(o) for o in enc["offset_mapping"]], scope="non-default")
    headers = [report[a:b].strip() for (a, b), k in zip(enc["offset_mapping"], keep) if not k and report[a:b].strip()]
    assert "".join(headers) == "Findings:Impression:"
    [(_, n_all)] = reference_nll(checkpoint, [prompt], [report], method="causal")
    [(v_nd, n_nd)] = reference_nll(checkpoint, [prompt], [report], method="causal", scope="non-default")
    assert n_nd == sum(keep) == n_all - 1 - (len(keep) - sum(keep))
    # causal: the mean next-token loss over exactly those tokens
    resp = [*enc["input_ids"], proc.eos_token_id]
    P, R = prompt.length, len(resp)
    ce = _causal_token_losses(checkpoint, prompt, resp)  # (R,)
    assert v_nd == pytest.approx(ce[torch.tensor([*keep, False])].mean().item(), rel=1e-5)
    # masked-diffusion: masking exactly the scope's tokens, "all" scores the same tokens -> the same value
    R_padded = R + (-(P + R)) % checkpoint.model.block_length
    md_mask = torch.tensor(keep + [False] * (R_padded - len(keep)))
    [(v_all_m, n_all_m)] = reference_nll(checkpoint, [prompt], [report], method="masked-diffusion", masks=[md_mask])
    [(v_nd_m, n_nd_m)] = reference_nll(
        checkpoint, [prompt], [report], method="masked-diffusion", masks=[md_mask], scope="non-default"
    )
    assert n_all_m == n_nd_m == sum(keep) and v_nd_m == pytest.approx(v_all_m, rel=1e-6)


def test_non_default_partial_masking_masks_a_statement_token(checkpoint, records):
    prompt, report = _prompt_and_report(checkpoint, records[0])
    for seed in range(6):
        m_all = response_mask(checkpoint, prompt, report, mask_ratio=0.05, seed=seed)
        m_nd = response_mask(checkpoint, prompt, report, mask_ratio=0.05, seed=seed, scope="non-default")
        [(_, n)] = reference_nll(
            checkpoint, [prompt], [report], method="masked-diffusion", masks=[m_nd], scope="non-default"
        )
        assert n >= 1 and bool((m_all & ~m_nd).sum() == 0)  # the draw is shared, at most one token is added


@pytest.fixture(scope="module")
def records_with_default_only(records, tmp_path_factory) -> list[StudyRecord]:
    from echo_model.data.normalize import DEFAULT_IMPRESSION, REGIONS

    path = tmp_path_factory.mktemp("sens-default") / "d.png"
    synthetic_cxr(77, (100, 100)).save(path)
    findings = " ".join(r.normal for r in REGIONS if r.normal)
    default = StudyRecord(
        id="all-default", findings=findings, impression=DEFAULT_IMPRESSION, images=(ImageRef(path=str(path)),)
    )
    return [*records[:4], default]


@pytest.mark.parametrize("sampler", ["teacher", "ar"])
def test_a_report_of_default_statements_only_is_skipped_and_counted(
    checkpoint, records_with_default_only, sampler
):
    res = image_sensitivity(
        records_with_default_only, checkpoint, sampler=sampler, generation=False, n_resamples=50, progress=False
    )
    nd = res.non_default
    assert res.n == 5 and res.scope == "all" and nd.scope == "non-default"
    assert nd.n == 4 and nd.skipped_no_statement == 1
    [skipped] = [s for s in res.studies if s.tokens_non_default == 0]
    assert skipped.id == "all-default" and skipped.difference_non_default is None
    assert nd.tokens == sum(s.tokens_non_default for s in res.studies) < sum(s.tokens for s in res.studies)
    diffs = [s.difference_non_default for s in res.studies if s.tokens_non_default]
    assert nd.interval.delta == pytest.approx(sum(diffs) / 4)
    data = res.to_json()
    assert {"nll_difference", "low", "high", "p_value", "n", "nll_own", "nll_partner", "scope"} <= set(data)
    assert data["non_default"] == nd.to_json()
    assert {"nll_difference", "low", "high", "n", "tokens", "skipped_no_statement"} <= set(data["non_default"])
    assert data["non_default"]["nll_difference"] == pytest.approx(sum(diffs) / 4)
    assert "difference_non_default" in data["studies"][0]
    assert "non-default statements only" in res.markdown()


def test_distinct_reports_counts_the_true_image_drafts(checkpoint, records, monkeypatch):
    from types import SimpleNamespace

    import echo_model.drafting

    calls = []

    def fake_generate(ck, prompts, **kwargs):
        calls.append(len(prompts))
        true = ["A", "A", "B", "A"] if len(calls) == 1 else ["C"] * len(prompts)
        return [SimpleNamespace(text=t) for t in true[: len(prompts)]]

    monkeypatch.setattr(echo_model.drafting, "generate_reports", fake_generate)
    res = image_sensitivity(records, checkpoint, sampler="ar", batch_size=4, n_resamples=20, progress=False)
    assert calls == [4, 4, 4, 4]
    assert res.distinct_reports == 2 and res.distinct_report_share == 0.5
    data = res.to_json()
    assert data["distinct_reports"] == 2 and data["distinct_report_share"] == 0.5
    assert res.blank_change_share == 1.0
    assert "| distinct drafts from the true images | 2/4 (0.50) |" in res.markdown()
