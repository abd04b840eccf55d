"""Record MediaPipe's own selfie-segmentation output as the parity fixture for our ONNX conversion.

Run once, by hand, in a throwaway venv (mediapipe is never a dependency of the product):

    python3 -m venv /tmp/mpvenv
    /tmp/mpvenv/bin/pip install mediapipe==0.10.14 pillow numpy
    /tmp/mpvenv/bin/python scripts/parity_selfie.py            # from the repository root

Options: ``--images DIR`` (default ``../shared/data/pennfudan-dev/images``), ``--count N``
(default 10), ``--out PATH`` (default ``tests/fixtures/selfie_parity.npz``).

What it does: takes ``--count`` images evenly spaced over the sorted PNG names of the dev set
(deterministic), resizes each once with PIL bilinear to 256x256 uint8 RGB, so that MediaPipe
resizes nothing (its ImageToTensor warps 256x256 to 256x256 as uint8 and scales by 1/255), runs
``mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)`` (the general 256x256
model, the same .tflite file as ``pipeline.models.selfie.SELFIE``: its sha256 is checked), one
fresh graph per image so that no state carries over, and saves with ``np.savez_compressed``:

* ``input_sha256``: sha256 of each 256x256 uint8 input exactly as given to MediaPipe (the dev
  photos themselves are not copied into the repo: the test rebuilds the inputs from ../shared);
* ``masks``: float16 ``[N,256,256]``, MediaPipe's confidence maps (``segmentation_mask``);
* ``names``: the source file names; ``mediapipe_version``, ``tflite_sha256``.

``tests/models/test_tflite_onnx.py`` runs our ONNX model on ``images / 255`` and compares.
"""

from __future__ import annotations

import argparse
import hashlib
import hashlib
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.models.selfie import INPUT_SIZE, SELFIE  # noqa: E402


def pick(names: list[str], count: int) -> list[str]:
    """``count`` names evenly spaced over the sorted list (all of them when there are fewer)."""
    names = sorted(names)
    if count >= len(names):
        return names
    return [names[i * len(names) // count] for i in range(count)]


def load_256(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB").resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8).copy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path,
                    default=ROOT.parent / "shared" / "data" / "pennfudan-dev" / "images")
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "selfie_parity.npz")
    args = ap.parse_args(argv)

    import mediapipe as mp

    packaged = Path(mp.__file__).parent / "modules" / "selfie_segmentation" / (
        "selfie_segmentation.tflite")
    got = hashlib.sha256(packaged.read_bytes()).hexdigest()
    if mp.__version__ != SELFIE["version"] or got != SELFIE["sha256"]:
        print(f"mediapipe {mp.__version__} ships {packaged.name} with sha256 {got}; expected "
              f"{SELFIE['version']} with {SELFIE['sha256']}", file=sys.stderr)
        return 1

    names = pick([p.name for p in args.images.glob("*.png")], args.count)
    if not names:
        print(f"no PNG images in {args.images}", file=sys.stderr)
        return 1
    images, masks = [], []
    for name in names:
        img = load_256(args.images / name)
        with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as seg:
            mask = seg.process(img).segmentation_mask
        if mask is None or mask.shape != (INPUT_SIZE, INPUT_SIZE):
            shape = None if mask is None else mask.shape
            print(f"{name}: unexpected segmentation mask {shape}", file=sys.stderr)
            return 1
        images.append(img)
        masks.append(np.asarray(mask, dtype=np.float32))
        print(f"{name}: person share {float((masks[-1] > 0.5).mean()):.3f}", file=sys.stderr)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".part.npz")
    np.savez_compressed(
        tmp,
        input_sha256=np.array([hashlib.sha256(i.tobytes()).hexdigest() for i in images]),
        masks=np.stack(masks).astype(np.float16),
        names=np.array(names),
        mediapipe_version=np.array(mp.__version__),
        tflite_sha256=np.array(got),
    )
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes, {len(names)} images)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
