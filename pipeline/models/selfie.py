"""The default segmentation model: MediaPipe's Selfie Segmentation (general, 256x256), as ONNX.

The TFLite file ships inside the PyPI wheel ``mediapipe==0.10.14`` (Apache-2.0); we take that one
member out of the wheel (mediapipe itself is never installed), check its sha256, and convert it
with our own converter (:mod:`pipeline.models.tflite_onnx`).

ONNX contract: input ``image`` float32 ``[N,256,256,3]``, RGB scaled to [0, 1]; output ``person``
float32 ``[N,256,256,1]``, person probability. The batch dimension is dynamic.

This module imports only the standard library and numpy at import time (onnx and tflite are
imported when a conversion is needed), so ``scripts/parity_selfie.py`` can read the constants from
a throwaway venv that has mediapipe but not our other dependencies.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from .fetch import atomic_write, cache_dir, sha256_bytes, sha256_file, wheel_member
from .tflite_onnx import CONVERTER_VERSION  # numpy only at import; onnx/tflite when converting

SELFIE = dict(
    package="mediapipe",
    version="0.10.14",
    member="mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
    sha256="9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
    size=249_505,
)

INPUT_NAME = "image"
OUTPUT_NAME = "person"
INPUT_SIZE = 256  # the model sees 256x256 RGB

ONNX_NAME = "selfie_segmentation.onnx"
# What the converter emitted for the file above when this was written (onnx 1.23, numpy 2.4).
# Informational: a different onnx release may serialize differently; the cache is keyed on the
# sidecar, and parity is what the tests check.
REFERENCE_ONNX_SHA256 = "23c9129b54f30d26d8eaab8ef299465e8dfaeb675c93fa564ef4045ea7146f5a"


def onnx_path() -> Path:
    """Where :func:`prepare_selfie` keeps the converted model."""
    return cache_dir() / "models" / ONNX_NAME


def sidecar_path(path: Path) -> Path:
    """``model.onnx`` -> ``model.onnx.sha256`` (``sha256sum -c`` format)."""
    return path.with_name(path.name + ".sha256")


def recorded_sha256(path: Path) -> str | None:
    """The sha256 recorded in the sidecar of ``path``, or None when there is none."""
    try:
        text = sidecar_path(path).read_text().split()
    except OSError:
        return None
    return text[0].lower() if text else None


def onnx_sha256(path: Path | None = None) -> str | None:
    """sha256 of the prepared ONNX model as recorded when it was written (None if not prepared)."""
    return recorded_sha256(path or onnx_path())


def _provenance(spec: dict) -> str:
    # A comment line (``sha256sum -c`` skips it): a new source file or converter redoes the model.
    return f"# from {spec['member']} sha256 {spec['sha256']}, converter {CONVERTER_VERSION}"


def _cached(path: Path, spec: dict) -> str | None:
    """The sha256 of a cached model whose sidecar matches it and its provenance, else None."""
    recorded = recorded_sha256(path)
    if not recorded or not path.exists():
        return None
    lines = sidecar_path(path).read_text().splitlines()
    if _provenance(spec) not in lines[1:] or sha256_file(path) != recorded:
        return None
    return recorded


def prepare_selfie(
    progress: Callable[[str], None] | None = None, *, spec: dict | None = None
) -> Path:
    """Path of the selfie model as ONNX: fetched, verified, converted once, cached.

    Idempotent: when ``<cache_dir()>/models/selfie_segmentation.onnx`` exists and its sidecar
    ``.sha256`` matches its bytes, it is returned as it is (no network, no conversion).
    Otherwise the TFLite file is taken out of the wheel (``wheel_member`` checks its sha256 and
    raises :class:`ModelError` on a mismatch), converted, and the ONNX file and its sidecar are
    written atomically. ``spec`` overrides :data:`SELFIE` (tests use it).
    """
    say = progress or (lambda msg: print(f"[fuzzy-people] {msg}", file=sys.stderr))
    spec = dict(SELFIE, **(spec or {}))
    target = onnx_path()
    if _cached(target, spec):
        return target

    say(f"preparing the selfie segmentation model from {spec['package']}=={spec['version']}")
    tflite_path = wheel_member(
        spec["package"], spec["version"], spec["member"], spec["sha256"], progress=say
    )
    data = tflite_path.read_bytes()

    from .tflite_onnx import convert_bytes

    say(f"converting {Path(spec['member']).name} ({len(data):,} bytes) to ONNX")
    onnx_bytes = convert_bytes(data, input_name=INPUT_NAME, output_name=OUTPUT_NAME)
    digest = sha256_bytes(onnx_bytes)
    atomic_write(target, onnx_bytes)
    sidecar = f"{digest}  {target.name}\n{_provenance(spec)}\n"
    atomic_write(sidecar_path(target), sidecar.encode())
    note = "" if digest == REFERENCE_ONNX_SHA256 else " (differs from the reference build's)"
    say(f"wrote {target} ({len(onnx_bytes):,} bytes, sha256 {digest}){note}")
    return target
