"""Shared fixtures: a tokenizer trained on hand-written sentences and tiny seeded checkpoints."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from echo_model.checkpoint import EchoCheckpoint, build_tiny_checkpoint
from echo_model.modeling import TinyModelSize
from echo_model.spec import EchoSpec
from echo_model.tokenization import train_report_tokenizer

SENTENCES = [
    "Findings: The heart is normal in size. The lungs are clear.",
    "Impression: No acute cardiopulmonary abnormality.",
    "There is a small left pleural effusion with adjacent atelectasis.",
    "No pneumothorax. No focal consolidation. Mediastinal contours are unremarkable.",
    "Mild cardiomegaly. Pulmonary vascular congestion without frank edema.",
    "Review this chest X-ray and write a report. Use this format: Findings: {}, Impression: {}.",
    "Indication: cough and fever. Comparison: none.",
    "Degenerative changes of the thoracic spine. Sternotomy wires are intact.",
]
TINY = TinyModelSize(
    text_hidden=64, text_layers=2, text_heads=4, text_kv_heads=2, text_intermediate=128,
    vision_hidden=32, vision_depth=2, vision_heads=2, vision_intermediate=64, max_positions=2048,
)


@pytest.fixture(scope="session")
def tokenizer():
    return train_report_tokenizer(SENTENCES * 20, vocab_size=320)


def make_checkpoint(tokenizer, *, block_length: int = 4, seed: int = 0, std: float = 0.3, sharpen: float = 3.0,
                    role: str = "student") -> EchoCheckpoint:
    """A tiny seeded checkpoint whose outputs depend on the input.

    Stock initialisation (std 0.02) makes a tiny random model emit one token forever, which would make parity
    tests vacuous. Re-drawing the matrices with a larger ``std`` and scaling the final norm by ``sharpen``
    gives varied tokens with confidences spread over (0, 1), so both branches of the commit rule (above tau,
    top-n) are exercised.
    """
    ck = build_tiny_checkpoint(tokenizer, EchoSpec(block_length=block_length, role=role), size=TINY, seed=seed, image_size=112)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in ck.model.model.parameters():
            if param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
        ck.model.model.model.language_model.norm.weight.mul_(sharpen)
    return ck


@pytest.fixture(scope="session")
def checkpoint(tokenizer) -> EchoCheckpoint:
    return make_checkpoint(tokenizer, block_length=4)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, checkpoint) -> Path:
    """The tiny checkpoint saved as a ``save_pretrained`` folder (read-only: copy it to change it)."""
    path = tmp_path_factory.mktemp("model") / "tiny"
    checkpoint.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def checkpoint_b8(tokenizer) -> EchoCheckpoint:
    return make_checkpoint(tokenizer, block_length=8, seed=1)


def synthetic_cxr(seed: int = 0, size: tuple[int, int] = (120, 100)) -> Image.Image:
    """A grey image with a radiograph-like layout (bright centre, dark lung fields) plus seeded noise."""
    rng = np.random.RandomState(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    body = 180 - 90 * np.exp(-(((xx - w * 0.3) / (w * 0.15)) ** 2 + ((yy - h * 0.5) / (h * 0.3)) ** 2))
    body -= 90 * np.exp(-(((xx - w * 0.7) / (w * 0.15)) ** 2 + ((yy - h * 0.5) / (h * 0.3)) ** 2))
    img = np.clip(body + rng.normal(0, 25, size=(h, w)), 0, 255).astype(np.uint8)
    return Image.fromarray(img, mode="L")


@pytest.fixture
def cxr_image() -> Image.Image:
    return synthetic_cxr(0)


def free_port() -> int:
    """A free TCP port on loopback, for an app served by a test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: What a failed rendezvous of ``accelerate launch`` says: the port chosen by :func:`free_port` was taken by
#: another socket before torchrun bound it (a race of the machine, not of the code under test).
RENDEZVOUS_FAILURE = re.compile(r"EADDRINUSE|address already in use|DistNetworkError|failed to listen|"
                                r"TCPStore|Connection refused", re.IGNORECASE)


def accelerate_launch(launcher: str, args: Sequence[str], *, env: Mapping[str, str],
                      timeout: float = 600) -> subprocess.CompletedProcess:
    """``accelerate launch`` with two CPU processes (gloo) on a free loopback port, running ``args``; launched
    again on another port once when the first try failed in the rendezvous. Fails the test with the end of the
    launcher's stderr otherwise."""
    for attempt in (1, 2):
        run = subprocess.run([launcher, "launch", "--num_processes", "2", "--num_machines", "1", "--multi_gpu",
                              "--mixed_precision", "no", "--main_process_port", str(free_port()),
                              "--dynamo_backend", "no", *args],
                             check=False, env=dict(env), capture_output=True, text=True, timeout=timeout)
        if run.returncode == 0 or attempt == 2 or not RENDEZVOUS_FAILURE.search(run.stderr):
            break
    assert run.returncode == 0, f"accelerate launch failed (exit {run.returncode}):\n{run.stderr[-3000:]}"
    return run


def pg_unavailable(reason: str) -> None:
    """Skip a PostgreSQL test with ``reason``; under ``CI=true`` fail it instead (CI installs the server)."""
    message = f"PostgreSQL unavailable: {reason}"
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(message + " (CI=true: a skipped PostgreSQL test fails the run)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_cluster():
    """One throwaway PostgreSQL cluster for the session (see tests/pg_cluster.py), stopped at the end."""
    from pg_cluster import ClusterUnavailable, start_cluster

    try:
        cluster = start_cluster()
    except ClusterUnavailable as err:
        pg_unavailable(str(err))
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster) -> str:
    """The SQLAlchemy URL of a fresh, empty database of the session's cluster (one per test)."""
    return pg_cluster.create_database(f"t{len(pg_cluster.databases)}_{os.getpid()}")


def run_at_once(count: int, fn) -> None:
    """Call ``fn(0)`` ... ``fn(count - 1)`` in threads released together by a barrier, and wait for all."""
    import threading

    start = threading.Barrier(count)

    def one(i: int) -> None:
        start.wait()
        fn(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
