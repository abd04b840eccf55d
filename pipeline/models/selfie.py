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

from .fetch import cache_dir, cached_converted, prepare_converted, recorded_sha256, sidecar_path  # noqa: F401 (re-exported)
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


def onnx_sha256(path: Path | None = None) -> str | None:
    """sha256 of the prepared ONNX model as recorded when it was written (None if not prepared)."""
    return recorded_sha256(path or onnx_path())


def _provenance(spec: dict) -> str:
    # A comment line (``sha256sum -c`` skips it): a new source file or converter redoes the model.
    return f"# from {spec['member']} sha256 {spec['sha256']}, converter {CONVERTER_VERSION}"


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
    if cached_converted(target, _provenance(spec)):
        return target
    from .tflite_onnx import convert_bytes

    digest = prepare_converted(
        target, spec, _provenance(spec),
        lambda data: convert_bytes(data, input_name=INPUT_NAME, output_name=OUTPUT_NAME),
        "the selfie segmentation model", say)
    if digest != REFERENCE_ONNX_SHA256:
        say(f"note: the ONNX bytes differ from the reference build's ({REFERENCE_ONNX_SHA256[:12]}...); "
            "another onnx release serialises differently, the parity test checks the outputs")
    return target
