import pytest

from conftest import synthetic_cxr


def test_prompt_has_one_pad_per_merged_patch_and_the_indication(checkpoint):
    proc = checkpoint.processor
    imgs = [synthetic_cxr(0), synthetic_cxr(1, size=(90, 140))]
    p = proc.encode(imgs, indication="  shortness   of breath ")
    n_pad = int((p.input_ids == proc.image_token_id).sum())
    assert n_pad == int(p.image_grid_thw.prod(-1).sum()) // 4
    assert p.image_grid_thw.shape == (2, 3)
    text = proc.tokenizer.decode(p.input_ids)
    assert "Indication: shortness of breath\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert text.count("<|vision_start|>") == 2


def test_text_only_and_language_checks(checkpoint):
    proc = checkpoint.processor
    p = proc.encode([])
    assert p.pixel_values is None and p.image_grid_thw is None
    assert "Indication" not in proc.tokenizer.decode(p.input_ids)
    with pytest.raises(ValueError, match="language 'zh' is not supported"):
        proc.encode([], lang="zh")


def test_decode_cuts_at_eos_and_drops_specials(checkpoint):
    proc = checkpoint.processor
    ids = proc.tokenizer("The lungs are clear.", add_special_tokens=False)["input_ids"]
    assert proc.decode(ids + [proc.eos_token_id] + ids) == "The lungs are clear."
    assert proc.decode([proc.mask_token_id] + ids) == "The lungs are clear."
