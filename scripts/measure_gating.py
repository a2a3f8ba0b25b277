"""Measure the chest-likeness gate: false alarms on real CXRs, detection on synthetic non-CXRs.

Usage::

    python scripts/measure_gating.py FOLDER_OF_REAL_CXRS [--threshold 0.5] [--per-kind 50] [--list]
                                     [--robustness]

Every file in FOLDER (PNG, JPEG or DICOM; other files are counted as load errors) goes through
the full ``load_image`` pipeline; a false alarm is a real radiograph whose ``cxr_likeness`` is
under the threshold, i.e. one that would show the "does not look like a chest radiograph"
warning. Detection is measured on ``--per-kind`` seeded pictures of every kind in
``echo_model.imaging.synthetic.NON_CXR_KINDS``, encoded as PNG and loaded the same way.
``--robustness`` also re-measures the false alarms on perturbed copies of the real images
(rotated 7 degrees, 85 % centre crop, JPEG quality 70, upscaled to 1024 px), because the
gate's ramps were chosen while looking at this same folder: a rate that holds under such
perturbations is less likely to be an overfit. The figures go into docs/inputs.md; the real
images stay where they are.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from echo_model.imaging import CXR_LIKENESS_THRESHOLD, ImageInputError, cxr_likeness, load_image
from echo_model.imaging.synthetic import NON_CXR_KINDS, non_cxr_example


@dataclass
class RealResult:
    """False alarms on a folder of real chest radiographs."""

    total: int = 0
    errors: list[str] = field(default_factory=list)
    flagged: list[tuple[str, float]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        loaded = self.total - len(self.errors)
        return len(self.flagged) / loaded if loaded else float("nan")


def measure_real(folder: Path, threshold: float) -> RealResult:
    """Load every file in ``folder`` and count those scored under ``threshold``."""
    result = RealResult()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        result.total += 1
        try:
            loaded = load_image(path, cxr_threshold=threshold)
        except ImageInputError as exc:
            result.errors.append(str(exc))
            continue
        if loaded.cxr_likeness < threshold:
            result.flagged.append((path.name, loaded.cxr_likeness))
    return result


PERTURBATIONS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "rotated 7 deg": lambda im: im.rotate(7, resample=Image.Resampling.BILINEAR),
    "centre crop 85 %": lambda im: im.crop(
        (int(0.075 * im.width), int(0.075 * im.height), int(0.925 * im.width), int(0.925 * im.height))
    ),
    "JPEG quality 70": lambda im: _jpeg_round_trip(im, 70),
    "upscaled to 1024": lambda im: im.resize(
        (1024, round(1024 * im.height / im.width)), Image.Resampling.BICUBIC
    ),
}


def _jpeg_round_trip(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("L")


def measure_robustness(folder: Path, threshold: float) -> dict[str, float]:
    """False-alarm rate on perturbed copies of the real images, per perturbation."""
    images = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            images.append(load_image(path).image)
        except ImageInputError:
            continue
    return {
        label: sum(cxr_likeness(perturb(image)) < threshold for image in images) / max(len(images), 1)
        for label, perturb in PERTURBATIONS.items()
    }


def measure_synthetic(per_kind: int, threshold: float) -> dict[str, float]:
    """Detection rate (share scored under ``threshold``) per synthetic non-CXR kind."""
    rates: dict[str, float] = {}
    for kind in NON_CXR_KINDS:
        caught = 0
        for seed in range(per_kind):
            buffer = io.BytesIO()
            non_cxr_example(kind, seed=seed).save(buffer, format="PNG")
            loaded = load_image(buffer.getvalue(), name=f"{kind}-{seed}.png", cxr_threshold=threshold)
            caught += loaded.cxr_likeness < threshold
        rates[kind] = caught / per_kind
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path, help="folder of real chest radiographs (PNG/JPEG/DICOM)")
    parser.add_argument("--threshold", type=float, default=CXR_LIKENESS_THRESHOLD)
    parser.add_argument("--per-kind", type=int, default=50, help="synthetic pictures per non-CXR kind")
    parser.add_argument("--list", action="store_true", help="print the file names of the false alarms")
    parser.add_argument("--robustness", action="store_true", help="also measure on perturbed real images")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"not a folder: {args.folder}")
    started = time.perf_counter()
    real = measure_real(args.folder, args.threshold)
    loaded = real.total - len(real.errors)
    print(f"threshold {args.threshold:.2f}")
    print(
        f"real CXRs: {loaded} loaded ({len(real.errors)} load errors), {len(real.flagged)} false alarms "
        f"= {100 * real.rate:.1f} %"
    )
    if args.list:
        for file_name, score in real.flagged:
            print(f"  false alarm: {file_name} score {score:.3f}")
        for error in real.errors:
            print(f"  load error: {error}")
    if args.robustness:
        for label, rate in measure_robustness(args.folder, args.threshold).items():
            print(f"real CXRs, {label:18s}: {100 * rate:.1f} % false alarms")
    rates = measure_synthetic(args.per_kind, args.threshold)
    for kind, rate in rates.items():
        print(f"synthetic {kind:22s}: {100 * rate:5.1f} % detected ({args.per_kind} pictures)")
    overall = sum(rates.values()) / len(rates)
    print(f"synthetic overall           : {100 * overall:5.1f} % detected")
    print(f"({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
