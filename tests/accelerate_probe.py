"""Run one Stage I optimiser step under ``accelerate`` and dump what each rank saw and the new weights.

Used by test_distributed.py: ``accelerate launch --num_processes 2 --cpu tests/accelerate_probe.py OUT`` vs
``python tests/accelerate_probe.py OUT --batch 4``. The checkpoint comes from a folder (``--model``) so both
runs start from identical weights and tokenizer (BPE training is not deterministic across processes).
"""

import json
import sys
from pathlib import Path

import torch

from echo_model.loading import load_checkpoint  # noqa: E402
from echo_model.data.records import StudyRecord  # noqa: E402
from train.engine import TrainConfig, make_accelerator, train  # noqa: E402
from train.items import encode_items  # noqa: E402
from train.objectives import AutoregressiveObjective  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    batch = int(sys.argv[sys.argv.index("--batch") + 1]) if "--batch" in sys.argv else 2
    out.mkdir(parents=True, exist_ok=True)
    ck = load_checkpoint(sys.argv[sys.argv.index("--model") + 1], device="cpu")
    # Same report (so every sample has the same number of target tokens), different indications.
    recs = [StudyRecord(id=f"s{i}", findings="The lungs are clear.", impression="Normal.", indication=w)
            for i, w in enumerate(["cough", "fever", "pain", "trauma"])]
    items = encode_items(recs, ck.model, ck.processor, block_pad=False)
    objective = AutoregressiveObjective(ck.processor.pad_token_id)
    seen: list[str] = []
    collate = objective.collate

    def logging_collate(batch_items):
        seen.extend(it.record_id for it in batch_items)
        return collate(batch_items)

    objective.collate = logging_collate
    cfg = TrainConfig(out_dir=out / "run", steps=1, batch_size=batch, lr=1.0, warmup=1,
                      shuffle=False, max_grad_norm=0.0, optimizer="sgd")
    acc = make_accelerator(cfg, cpu=True)
    cfg.out_dir = out / f"rank{acc.process_index}"
    if acc.is_main_process:
        torch.save({k: v.clone() for k, v in ck.model.model.state_dict().items()}, out / "initial.pt")
    train(ck, objective, items, cfg, accelerator=acc)
    (out / f"seen{acc.process_index}.json").write_text(json.dumps(seen))
    if acc.is_main_process:
        torch.save({k: v.clone() for k, v in ck.model.model.state_dict().items()}, out / "weights.pt")


if __name__ == "__main__":
    main()
