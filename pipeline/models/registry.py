"""Resolve ``--model`` to ONNX bytes once, on the driver.

``selfie`` (the default) is prepared from the mediapipe wheel by our own converter and
cached; anything else is an fsspec URL or a local path of an ONNX segmentation model,
checked against ``--model-sha256`` when given. The driver hands the bytes to the actors
through Ray's object store, so workers need neither pip nor the cache.

Segmentation model contract (for your own models): one input, float32 NHWC
``[N, S, S, 3]`` RGB scaled to [0, 1] with a static square S (the batch dimension may be
dynamic or fixed at 1); one output ``[N, S, S, 1]`` or ``[N, S, S]`` holding the person
probability in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .fetch import ModelError, check_sha256

BUILTIN_MODELS = ("selfie",)


@dataclass(frozen=True)
class ModelBlob:
    name: str
    data: bytes
    sha256: str

    def __repr__(self) -> str:  # keep logs short
        return f"ModelBlob(name={self.name!r}, sha256={self.sha256[:12]}..., {len(self.data):,} bytes)"


def resolve_model(
    spec: str,
    expected_sha256: str | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ModelBlob:
    if spec == "selfie":
        from .selfie import prepare_selfie

        path = prepare_selfie(progress=progress)
        data = path.read_bytes()
        sha = check_sha256(data, expected_sha256, "--model selfie")
        return ModelBlob("selfie", data, sha)
    import fsspec

    try:
        with fsspec.open(spec, "rb", **(storage_options or {})) as f:
            data = f.read()
    except FileNotFoundError:
        raise ModelError(f"--model: no such model file: {spec}") from None
    except Exception as exc:  # network, permissions, unknown protocol
        raise ModelError(f"--model: cannot read {spec}: {type(exc).__name__}: {exc}") from None
    if not data:
        raise ModelError(f"--model: {spec} is empty")
    sha = check_sha256(data, expected_sha256, f"--model {spec}")
    return ModelBlob(spec, data, sha)
