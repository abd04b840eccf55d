"""The run configuration: one frozen, validated object; every CLI flag maps to one field.

Validation happens before anything is read or written, and every error names the flag.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

PRESETS = ("fast", "balanced", "max")
MODES = ("shuffle", "blur", "pixelate", "fill")
RADIUS_MODES = ("person", "pixels", "image")
METADATA_POLICIES = ("keep", "strip")
OUTPUT_FORMATS = ("jpeg", "parquet")
DEFAULT_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "tif", "tiff")
DEFAULT_MODEL = "selfie"

# Secret-bearing storage option names: never logged, never written to _stats.json / Parquet.
SECRET_OPTION_WORDS = ("secret", "token", "password", "passwd", "key_id", "access_key", "credential", "auth")
SECRET_OPTION_NAMES = ("key", "secret", "token", "password", "sas_token", "account_key", "private_key")


class ConfigError(ValueError):
    """A bad setting; the message starts with the flag that carries it."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class RunConfig:
    # where
    input: str | None = None
    output: str = ""
    manifest: str | None = None
    manifest_column: str = "key"
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    limit: int | None = None
    # storage
    storage_options: dict[str, Any] = field(default_factory=dict, hash=False)
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    anonymous: bool = False
    # finding people
    model: str = DEFAULT_MODEL
    model_sha256: str | None = None
    recall: str = "max"
    threshold: float | None = None
    # anonymizing
    mode: str = "shuffle"
    radius_mode: str = "person"
    radius: float = 0.20
    min_radius: int = 4
    dilate: int = 3
    dissolve: float = 1.0
    fill_color: tuple[int, int, int] = (128, 128, 128)
    secret_file: str | None = None
    # output
    metadata: str = "keep"
    output_format: str = "jpeg"
    jpeg_quality: int = 90
    max_pixels: int = 100_000_000
    # resources
    num_gpus: float = 0.0
    segment_actors: tuple[int, int] | None = None  # None: one per GPU, or one per CPU on a CPU-only node
    batch_size: int = 8
    # behaviour
    max_error_rate: float = 0.05
    force: bool = False
    wait_for_lock: bool = False
    lock_lease: float = 300.0

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        def bad(name: str, msg: str) -> ConfigError:
            return ConfigError(f"{_flag(name)}: {msg}")

        if not self.output:
            raise bad("output", "is required (an fsspec URL prefix or a local directory)")
        if not self.input and not self.manifest:
            raise bad("input", "give --input URL or --manifest FILE")
        if self.recall not in PRESETS:
            raise bad("recall", f"must be one of {', '.join(PRESETS)}, got {self.recall!r}")
        if self.mode not in MODES:
            raise bad("mode", f"must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.radius_mode not in RADIUS_MODES:
            raise bad("radius_mode", f"must be one of {', '.join(RADIUS_MODES)}, got {self.radius_mode!r}")
        if not (self.radius > 0):
            raise bad("radius", f"must be > 0, got {self.radius}")
        if self.radius_mode in ("person", "image") and self.radius > 1:
            raise bad("radius", f"with --radius-mode {self.radius_mode} it is a fraction (0, 1], got {self.radius}")
        if self.radius_mode == "pixels" and self.radius != int(self.radius):
            raise bad("radius", f"with --radius-mode pixels it is a whole number of pixels, got {self.radius}")
        if self.min_radius < 0:
            raise bad("min_radius", f"must be >= 0, got {self.min_radius}")
        if self.dilate < 0 or self.dilate > 256:
            raise bad("dilate", f"must be 0..256 pixels, got {self.dilate}")
        if not (0 <= self.dissolve <= 4):
            raise bad("dissolve", f"must be 0..4 (a multiple of each person's radius), got {self.dissolve}")
        if len(self.fill_color) != 3 or any(not (0 <= c <= 255) for c in self.fill_color):
            raise bad("fill_color", f"must be three values 0..255, got {self.fill_color}")
        if self.threshold is not None and not (0 < self.threshold < 1):
            raise bad("threshold", f"must be in (0, 1), got {self.threshold}")
        if self.metadata not in METADATA_POLICIES:
            raise bad("metadata", f"must be one of {', '.join(METADATA_POLICIES)}, got {self.metadata!r}")
        if self.output_format not in OUTPUT_FORMATS:
            raise bad("output_format", f"must be one of {', '.join(OUTPUT_FORMATS)}, got {self.output_format!r}")
        if not (1 <= self.jpeg_quality <= 100):
            raise bad("jpeg_quality", f"must be 1..100, got {self.jpeg_quality}")
        if self.max_pixels < 1:
            raise bad("max_pixels", f"must be >= 1, got {self.max_pixels}")
        if self.num_gpus < 0:
            raise bad("num_gpus", f"must be >= 0, got {self.num_gpus}")
        if self.segment_actors is not None:
            lo, hi = self.segment_actors
            if lo < 1 or hi < lo:
                raise bad("segment_actors", f"must be MIN:MAX with 1 <= MIN <= MAX, got {lo}:{hi}")
        if self.batch_size < 1:
            raise bad("batch_size", f"must be >= 1, got {self.batch_size}")
        if not (0 <= self.max_error_rate <= 1):
            raise bad("max_error_rate", f"must be in [0, 1], got {self.max_error_rate}")
        if self.lock_lease < 5:
            raise bad("lock_lease", f"must be >= 5 seconds, got {self.lock_lease}")
        if self.limit is not None and self.limit < 1:
            raise bad("limit", f"must be >= 1, got {self.limit}")
        if not self.extensions:
            raise bad("extensions", "must list at least one extension")
        if self.model_sha256 is not None:
            h = self.model_sha256.lower()
            if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
                raise bad("model_sha256", "must be 64 hexadecimal characters")
        if self.secret_file is not None and not os.path.isfile(self.secret_file):
            raise bad("secret_file", f"no such file: {self.secret_file}")

    # ------------------------------------------------------------------ views
    def fsspec_options(self) -> dict[str, Any]:
        """Storage options for fsspec/s3fs, with the convenience flags folded in."""
        opts = dict(self.storage_options)
        client_kwargs = dict(opts.get("client_kwargs") or {})
        if self.endpoint_url:
            opts["endpoint_url"] = self.endpoint_url
        if self.region:
            client_kwargs["region_name"] = self.region
        if client_kwargs:
            opts["client_kwargs"] = client_kwargs
        if self.profile:
            opts["profile"] = self.profile
        if self.anonymous:
            opts["anon"] = True
        return opts

    def public_dict(self) -> dict[str, Any]:
        """The config as JSON-able data with every secret-bearing storage option redacted."""
        out = asdict(self)
        out["storage_options"] = redact(self.storage_options)
        out["extensions"] = list(self.extensions)
        out["segment_actors"] = list(self.segment_actors) if self.segment_actors else None
        out["fill_color"] = list(self.fill_color)
        return out


def redact(value: Any) -> Any:
    """Replace values of secret-looking keys (recursively) with '***'."""
    if isinstance(value, dict):
        return {
            k: ("***" if _secret_name(str(k)) else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def _secret_name(name: str) -> bool:
    low = name.lower()
    return low in SECRET_OPTION_NAMES or any(w in low for w in SECRET_OPTION_WORDS)


def parse_storage_options(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        # never echo the text: it may hold credentials
        raise ConfigError(f"--storage-options: not valid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(value, dict):
        raise ConfigError("--storage-options: must be a JSON object")
    return value


def field_names() -> list[str]:
    return [f.name for f in fields(RunConfig)]
