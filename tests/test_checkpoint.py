"""Saving, loading and the loading rules (strict weights, memory check, official layout, hub ids)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from echo_model.loading import CheckpointError, load_checkpoint, weight_parameters
from echo_model.sampling import SamplerConfig, build_sampler
from echo_model.spec import EchoSpec
from conftest import synthetic_cxr


@pytest.fixture(scope="module")
def saved(tmp_path_factory, checkpoint):
    path = tmp_path_factory.mktemp("ck") / "echo-tiny"
    checkpoint.save_pretrained(path)
    return path


def test_save_load_keeps_everything(saved, checkpoint):
    ck = load_checkpoint(str(saved), device="cpu")
    assert ck.spec == checkpoint.spec
    assert ck.spec.block_length == 4 and ck.spec.mask_token_id == checkpoint.processor.mask_token_id
    assert ck.processor.tokenizer.get_vocab() == checkpoint.processor.tokenizer.get_vocab()
    assert ck.processor.prompt_text(1, indication="cough") == checkpoint.processor.prompt_text(1, indication="cough")
    assert ck.model.model.config.to_dict()["echo"] == checkpoint.model.model.config.to_dict()["echo"]
    assert ck.model.dtype == torch.float32
    img = synthetic_cxr(5)
    for name in ("ar", "teacher", "echo"):
        cfg = SamplerConfig(max_new_tokens=20)
        a = build_sampler(name, checkpoint.model, checkpoint.processor, cfg).generate(checkpoint.processor.encode([img]))[0]
        b = build_sampler(name, ck.model, ck.processor, cfg).generate(ck.processor.encode([img]))[0]
        assert a.token_ids == b.token_ids


def _copy(saved, dst):
    dst.mkdir()
    for f in saved.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_missing_weights_raise(saved, tmp_path):
    folder = _copy(saved, tmp_path / "broken")
    tensors = load_file(str(folder / "model.safetensors"))
    dropped = next(k for k in tensors if "layers.1.mlp" in k)
    del tensors[dropped]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing keys"):
        load_checkpoint(str(folder), device="cpu")


def test_unexpected_weights_raise(saved, tmp_path):
    folder = _copy(saved, tmp_path / "extra")
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["model.language_model.layers.9.mlp.up_proj.weight"] = torch.zeros(2, 2)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="unexpected keys"):
        load_checkpoint(str(folder), device="cpu")


def test_refuses_when_memory_is_short(saved, checkpoint):
    assert weight_parameters(saved) == sum(p.numel() for p in checkpoint.model.model.parameters())
    with pytest.raises(CheckpointError, match=r"needs about .* GiB of memory .* only 0.0 GiB is free"):
        load_checkpoint(str(saved), device="cpu", available_memory=1000)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        load_checkpoint(str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match="neither an existing folder nor a hub id"):
        load_checkpoint("no such thing here")


def test_uncached_hub_id_fails_with_advice(monkeypatch):
    import huggingface_hub

    def offline(*a, **k):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError, match="Midea-AIRC/ECHO_block8.*pass the local folder"):
        load_checkpoint("Midea-AIRC/ECHO_block8")


def _official_layout(saved, folder, **config_changes):
    folder = _copy(saved, folder)
    cfg = json.loads((folder / "config.json").read_text())
    mask_id = cfg.pop("echo")["mask_token_id"]
    cfg.update({"mask_token_id": mask_id, **config_changes})
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder, mask_id


def test_official_layout_reconstruction(saved, tmp_path):
    """UNVERIFIED RECONSTRUCTION of the official ECHO_block4 folder (the real one cannot be downloaded here):
    a stock Qwen2.5-VL config with a top-level ``mask_token_id``, no ``echo`` key, an ``auto_map`` to the
    authors' remote code (which we ignore), and b only in the folder name."""
    folder, mask_id = _official_layout(
        saved, tmp_path / "ECHO_block4", auto_map={"AutoModelForCausalLM": "modeling_echo.ECHOForConditionalGeneration"})
    ck = load_checkpoint(str(folder), device="cpu")
    assert ck.spec.block_length == 4
    assert ck.spec.mask_token_id == mask_id
    assert ck.spec.languages == ("en", "zh")
    assert "Review this chest X-ray" in ck.processor.prompt_text(0)


def test_config_mask_token_id_must_be_the_tokenizers_mask(saved, tmp_path, checkpoint):
    mask_id = checkpoint.processor.mask_token_id
    folder, _ = _official_layout(saved, tmp_path / "ECHO_block4", mask_token_id=mask_id + 1)
    with pytest.raises(CheckpointError, match=rf"config mask_token_id is {mask_id + 1} but the tokenizer's <\|MASK\|> is {mask_id}"):
        load_checkpoint(str(folder), device="cpu")


def test_quantised_weights_are_refused_by_dtype(saved, tmp_path):
    folder = _copy(saved, tmp_path / "int8")
    tensors = load_file(str(folder / "model.safetensors"))
    name = next(k for k in tensors if k.endswith("mlp.up_proj.weight"))
    tensors[name] = tensors[name].to(torch.int8)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"1 tensors are stored as \['I8'\] \(e.g. {name}: I8\)"):
        load_checkpoint(str(folder), device="cpu")
    # the stored float dtype itself is free: bf16 files load and are cast to the device's dtype
    for key in tensors:
        tensors[key] = tensors[key].to(torch.bfloat16)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    assert load_checkpoint(str(folder), device="cpu").model.dtype == torch.float32


def test_spec_validation():
    with pytest.raises(ValueError, match="block_length"):
        EchoSpec(block_length=0)
    with pytest.raises(ValueError, match="role"):
        EchoSpec(role="oracle")
    with pytest.raises(ValueError, match="language 'fr' has no instruction"):
        EchoSpec(languages=("fr",))
    spec = EchoSpec(languages=("en", "zh"))
    assert spec.instruction("zh", "咳嗽").startswith("临床指征：咳嗽")
    with pytest.raises(ValueError, match="not supported"):
        EchoSpec().instruction("zh")
    assert EchoSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="unknown ECHO config keys"):
        EchoSpec.from_dict({"block_length": 8, "colour": 1})
