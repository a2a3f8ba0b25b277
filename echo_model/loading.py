"""One entry point to get a checkpoint: the embedded ones (default), a local folder, or a hub id.

Loading rules (issue "inputs, loading"):

* ``mask_token_id`` is resolved as the official code does: config, then tokenizer, then ``<|MASK|>``.
* Missing or unexpected weights raise :class:`CheckpointError` (transformers only warns and initialises the
  missing ones at random, which would silently produce garbage reports).
* Device and dtype: bf16 on a GPU, fp32 on the CPU (these CPUs have no fast bf16). Before loading on the CPU
  the memory the weights need is estimated from the files and compared with what the machine has free.
* Only stock classes: the official checkpoints are Qwen2.5-VL weights; ``trust_remote_code`` is never used.
* Stored weights must be floating point (F32, BF16, F16, F64; the official ones are F32); a quantised file
  (int8, fp8, packed 4-bit) is refused by name, since the stock class would read it as garbage.
* A ``mask_token_id`` in the config must be the tokenizer's ``<|MASK|>`` and a row of the embedding.

docs/checkpoints.md states what this assumes about the official files.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from .checkpoint import EchoCheckpoint
from .modeling import EchoModel
from .processing import EchoProcessor
from .spec import CONFIG_KEY, MASK_TOKEN, ROLES, EchoSpec, read_spec

EMBEDDED_FAMILY = "echo-b8"
#: What the embedded family cannot know, in one plain sentence (shown by the app, the README and the model cards).
EMBEDDED_LIMITATION = (
    "The embedded models are tiny demonstration models: their image findings come from a small collection of "
    "radiographs with case notes (not radiology reports), so what they say about an image is not clinically "
    "meaningful."
)
#: How to draft with a real checkpoint instead (shown beside the sentence above).
REAL_CHECKPOINT_HINT = (
    "To draft with a real ECHO checkpoint, set ECHO_MODEL (app) or --model (command line) to its folder or hub id, "
    "e.g. ECHO_MODEL=Midea-AIRC/ECHO_block8 echo-app."
)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Bytes per parameter as stored, by safetensors dtype tag.
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "BOOL": 1}
# Stored dtypes the loader casts to its compute dtype; anything else is a quantised checkpoint.
_FLOAT_TAGS = frozenset({"F64", "F32", "F16", "BF16"})


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class DevicePolicy:
    device: torch.device
    dtype: torch.dtype


def assets_dir() -> Path:
    """The project's ``assets/`` folder (``ECHO_ASSETS_DIR`` overrides it)."""
    env = os.environ.get("ECHO_ASSETS_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "assets"


def embedded_path(role: str = "student", family: str = EMBEDDED_FAMILY) -> Path:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    return assets_dir() / "checkpoints" / family / role


def device_policy(device: str | torch.device | None = None) -> DevicePolicy:
    """bf16 on CUDA, fp32 on CPU; ``device=None`` picks CUDA when available."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return DevicePolicy(dev, torch.bfloat16 if dev.type == "cuda" else torch.float32)


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def stored_tensors(folder: Path) -> dict[str, tuple[str, int]]:
    """Tensor name -> (safetensors dtype tag, element count) of a folder's weights, from the headers only."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder} holds no *.safetensors weights")
    out: dict[str, tuple[str, int]] = {}
    for f in files:
        with f.open("rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name != "__metadata__":
                count = 1
                for d in info["shape"]:
                    count *= d
                out[name] = (info["dtype"], count)
    return out


def weight_parameters(folder: Path) -> int:
    """Number of parameters stored in a folder's safetensors files, read from their headers only."""
    return sum(count for _, count in stored_tensors(folder).values())


def check_stored_dtypes(folder: Path) -> None:
    """Refuse weights stored in a non-float dtype (a quantised checkpoint); the stock class casts only floats."""
    bad = {name: dtype for name, (dtype, _) in stored_tensors(folder).items() if dtype not in _FLOAT_TAGS}
    if bad:
        first = min(bad)
        raise CheckpointError(
            f"{folder.name}: {len(bad)} tensors are stored as {sorted(set(bad.values()))} (e.g. {first}: {bad[first]}); "
            f"the loader reads float weights ({', '.join(sorted(_FLOAT_TAGS))}) and casts them, quantised checkpoints "
            f"are not supported"
        )


def check_mask_token(folder: Path, config, processor: EchoProcessor, vocab_rows: int) -> None:
    """The config's ``mask_token_id`` (the key the official code reads) must be the tokenizer's ``<|MASK|>``, and
    the mask id must be a row of the embedding; otherwise every masked position would be fed a wrong token."""
    configured = getattr(config, "mask_token_id", None)
    tok = processor.tokenizer
    token_id = tok.convert_tokens_to_ids(MASK_TOKEN)
    if token_id is not None and token_id == tok.unk_token_id:
        token_id = None
    if configured is not None and token_id is not None and int(configured) != int(token_id):
        raise CheckpointError(f"{folder.name}: config mask_token_id is {configured} but the tokenizer's {MASK_TOKEN} "
                              f"is {token_id}; the checkpoint's config and tokenizer do not belong together")
    if not 0 <= processor.mask_token_id < vocab_rows:
        raise CheckpointError(f"{folder.name}: mask token id {processor.mask_token_id} is outside the embedding's "
                              f"{vocab_rows} rows")


def check_memory(folder: Path, policy: DevicePolicy, *, available: int | None = None) -> None:
    """Refuse to load on the CPU when the weights (plus 20 % working room) do not fit in free memory."""
    if policy.device.type != "cpu":
        return
    need = int(weight_parameters(folder) * torch.finfo(policy.dtype).bits // 8 * 1.2)
    free = available if available is not None else available_memory_bytes()
    if free is not None and need > free:
        raise CheckpointError(
            f"{folder.name}: needs about {need / 2**30:.1f} GiB of memory in {str(policy.dtype).split('.')[-1]} "
            f"on the CPU, only {free / 2**30:.1f} GiB is free; use a GPU machine or a smaller checkpoint"
        )


def resolve_source(model: str | None, role: str = "student") -> Path:
    """Map ``None`` / ``embedded`` / ``embedded:ROLE`` / folder / hub id to a local folder."""
    if model is None or model == "embedded":
        return embedded_path(role)
    if model.startswith("embedded:"):
        return embedded_path(model.split(":", 1)[1])
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise CheckpointError(f"{model}: not a checkpoint folder (needs config.json and *.safetensors)")
        return path
    if HUB_ID.match(model):
        return _from_hub(model)
    raise CheckpointError(f"{model!r} is neither an existing folder nor a hub id like 'Midea-AIRC/ECHO_block8'")


def _from_hub(repo_id: str) -> Path:
    """A hub id, from the local Hugging Face cache (downloads when the machine can reach the hub)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]))
    except Exception as err:  # network, auth, missing cache: all end the same way for the user
        raise CheckpointError(
            f"could not get {repo_id!r} from the Hugging Face Hub or its local cache ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}); download it where the hub is reachable "
            f"and pass the local folder instead"
        ) from None


def _spec_for(config, folder: Path) -> EchoSpec:
    """Spec from ``config.echo``; official checkpoints get b from their config or their name (``block4``)."""
    if isinstance(getattr(config, CONFIG_KEY, None), dict):
        return read_spec(config)
    spec = read_spec(config)
    has_b = getattr(config, "block_length", None) or getattr(config, "block_size", None)
    match = re.search(r"block[_-]?(\d+)", folder.as_posix(), re.IGNORECASE)
    if not has_b and match:
        spec = spec.replace(block_length=int(match.group(1)))
    return spec


def load_checkpoint(
    model: str | None = None,
    *,
    role: str = "student",
    device: str | torch.device | None = None,
    available_memory: int | None = None,
) -> EchoCheckpoint:
    """Load a checkpoint for inference.

    Args:
        model: None / ``"embedded"`` (the embedded checkpoint of ``role``), ``"embedded:ROLE"``, a local
            folder, or a hub id such as ``Midea-AIRC/ECHO_block8``.
        role: which embedded checkpoint ``None`` means (``ar``, ``teacher`` or ``student``).
        device: ``cpu``, ``cuda``, ``cuda:1``...; None picks CUDA when available.
        available_memory: override of the free-memory reading (tests).
    """
    folder = resolve_source(model, role)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: no config.json; is the embedded checkpoint missing from assets/?")
    policy = device_policy(device)
    check_memory(folder, policy, available=available_memory)
    check_stored_dtypes(folder)
    try:
        hf, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            str(folder), dtype=policy.dtype, output_loading_info=True
        )
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{folder}: cannot be loaded as Qwen2.5-VL weights: {err}") from None
    problems = {k: sorted(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        detail = "; ".join(f"{k.replace('_', ' ')}: {v[:5]}{' ...' if len(v) > 5 else ''} ({len(v)})" for k, v in problems.items())
        raise CheckpointError(f"{folder}: weights do not match the architecture ({detail})")
    hf = hf.to(policy.device).eval()
    spec = _spec_for(hf.config, folder)
    try:
        processor = EchoProcessor.from_pretrained(folder, spec)
    except ValueError as err:  # no mask token anywhere
        raise CheckpointError(f"{folder.name}: {err}") from None
    check_mask_token(folder, hf.config, processor, hf.get_input_embeddings().num_embeddings)
    spec = spec.replace(mask_token_id=processor.mask_token_id)
    processor = EchoProcessor(processor.tokenizer, processor.image_processor, spec)
    return EchoCheckpoint(EchoModel(hf, spec), processor, source=str(model or f"embedded:{role}"))
