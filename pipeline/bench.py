"""``fuzzy-people bench``: the pipeline's throughput against two bounds measured in the same run,
and (``--memory``) its peak memory at two dataset sizes.

Throughput (``fuzzy-people bench --n N [--s3] [--recall PRESET ...]``):

* N photo-like 1920x1080 JPEGs are made in a temp dir from the Penn-Fudan dev photos (else the
  bundled samples), resized and tiled (1, 2x2, 3x3, and one big + four small) so people appear
  at several sizes; with ``--s3`` they are uploaded to a moto S3 server on 127.0.0.1 and both
  input and output are S3 prefixes (s3fs with endpoint_url; fake credentials in the environment
  before Ray starts).
* **codec bound**: ``decode_image`` + ``encode_jpeg`` of the same files, one process per core.
* **work bound**: the same plus ``PersonFinder.find`` and ``anonymize`` at the same preset, called
  directly, one process per core, onnxruntime and OpenCV at 1 thread each.
* **pipeline**: ``run_job`` on the same files. A first, small run starts Ray and warms its
  workers; the timed run is the second one (fresh output dir, every image processed), timed from
  the call to its return (listing, actor start, the dataset's fill and drain and the metadata
  commit count, Ray's start-up does not) and by Ray Data's own execution time of that dataset
  (its "execution finished in X seconds" log record). The ratios use the execution time; the
  wall-clock ratio is printed beside it.
* CPU accounting (/proc, per process, sampled every 0.25 s so that Ray workers which exit still
  count): the CPU seconds per image of the bound's processes and of the pipeline's whole process
  tree (driver, gcs, raylet, agents, workers) give ``cpu_ratio`` (overhead only, insensitive to
  other load on a shared machine), and the share of the machine's CPU used by other processes
  during each timed phase is printed, so a wall-clock ratio taken under uneven load shows as such.

The last line is ``ratio=<pipeline / work bound>`` at ``max`` (or at the first preset asked for
when max is not among them); ``codec_ratio=`` lines give pipeline / codec bound per preset.

Memory (``fuzzy-people bench --memory [--memory-sizes 1000,10000] [--recall fast]``): 640x480
JPEGs; each size runs in its own child process (own driver, own local Ray); the parent sums,
every 0.5 s, RSS (and PSS, which counts shared pages such as the object store once) of the
child and all its descendants (gcs_server, raylet, agents, workers) from /proc. The child polls
the object store's usage (Plasma) through Ray every 0.5 s.

No Ray import at module level: Ray is used only through ``run_job``, and for the object-store
probe through the lazily imported helper :func:`_plasma_used_mib`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SECRET_ENV = "FUZZY_PEOPLE_SECRET"
BENCH_SECRET = "fuzzy-people-bench-secret-0123456789"
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
PACKAGE_ROOT = Path(__file__).resolve().parent
DEV_PHOTOS = PACKAGE_ROOT.parent.parent / "shared" / "data" / "pennfudan-dev" / "images"
LAYOUTS = ("1x1", "2x2", "3x3", "1+4")
UNIQUE_IMAGES = 256  # distinct composites; larger N cycles them (the work per image is the same)
SAMPLE_SECONDS = 0.5
PAGE = os.sysconf("SC_PAGE_SIZE")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def say(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------- arguments

def _sizes(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,M,..., got {text!r}") from None
    if not out or any(n < 1 for n in out):
        raise argparse.ArgumentTypeError(f"sizes must be >= 1, got {text!r}")
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .config import PRESETS

    p.add_argument("--n", type=int, default=100, help="images for the throughput bench (default: %(default)s)")
    p.add_argument("--s3", action="store_true", help="input and output on a moto S3 server on 127.0.0.1 (s3fs over HTTP)")
    p.add_argument("--recall", choices=PRESETS, action="append",
                   help="preset(s) to measure; repeat for several (default: max; fast with --memory)")
    p.add_argument("--cores", type=int, default=None, help="processes for the bounds (default: all cores)")
    p.add_argument("--warmup", type=int, default=None,
                   help="images in the untimed first run that starts Ray (default: min(N, 2 x batch size))")
    p.add_argument("--photos", default=None, help="folder of source photos (default: the dev photos, else the bundled samples)")
    p.add_argument("--keep", default=None, help="keep the images and outputs in this folder (default: a temp dir, removed)")
    p.add_argument("--segment-actors", default=None,
                   help="passed to the run (N or MIN:MAX; default: the run's own default, one per CPU on CPU)")
    p.add_argument("--skip-bounds", action="store_true", help=argparse.SUPPRESS)
    g = p.add_argument_group("memory")
    g.add_argument("--memory", action="store_true", help="measure peak memory (driver + Ray session) at --memory-sizes 640x480 images")
    g.add_argument("--memory-sizes", type=_sizes, default=[1000, 10000], help="default: 1000,10000")
    g.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)


def command(ns: argparse.Namespace) -> int:
    if ns.memory_child:
        return _memory_child(ns.memory_child)
    if os.environ.pop("RAY_ADDRESS", None):
        log("RAY_ADDRESS unset for the bench: it measures a local Ray on this machine's cores")
    if ns.memory:
        return memory_bench(ns)
    return throughput_bench(ns)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fuzzy-people bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return command(parser.parse_args(argv))


# ---------------------------------------------------------------------------------- images

def source_photos(folder: str | None):
    """RGB arrays of the source photos and a label saying where they came from."""
    import numpy as np
    from PIL import Image

    cands = [Path(folder)] if folder else [DEV_PHOTOS, PACKAGE_ROOT / "samples"]
    for d in cands:
        if not d.is_dir():
            continue
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if files:
            photos = []
            for f in files:
                with Image.open(f) as im:
                    photos.append(np.asarray(im.convert("RGB")))
            return photos, f"{len(photos)} photos from {d}"
    raise SystemExit(f"bench: no source photos found in {', '.join(map(str, cands))}")


def _cover(img, w: int, h: int):
    """Resize to cover w x h (aspect kept), centre crop."""
    import cv2

    ih, iw = img.shape[:2]
    s = max(w / iw, h / ih)
    nw, nh = max(w, round(iw * s)), max(h, round(ih * s))
    r = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    x0, y0 = (nw - w) // 2, (nh - h) // 2
    return r[y0:y0 + h, x0:x0 + w]


def compose(photos, rng, w: int, h: int, layout: str):
    """One photo-like image: dev photos tiled so people appear at several sizes."""
    import numpy as np

    out = np.empty((h, w, 3), np.uint8)

    def put(x0, y0, x1, y1):
        out[y0:y1, x0:x1] = _cover(photos[int(rng.integers(len(photos)))], x1 - x0, y1 - y0)

    def grid(x0, y0, x1, y1, k):
        xs = [x0 + (x1 - x0) * i // k for i in range(k + 1)]
        ys = [y0 + (y1 - y0) * j // k for j in range(k + 1)]
        for j in range(k):
            for i in range(k):
                put(xs[i], ys[j], xs[i + 1], ys[j + 1])

    if layout == "1x1":
        put(0, 0, w, h)
    elif layout == "2x2":
        grid(0, 0, w, h, 2)
    elif layout == "3x3":
        grid(0, 0, w, h, 3)
    else:  # "1+4": one big on the left, 2x2 small on the right
        put(0, 0, w // 2, h)
        grid(w // 2, 0, w, h, 2)
    return out


def make_images(dest: Path, n: int, w: int, h: int, photos, seed: int = 0, quality: int = 90) -> list[Path]:
    """n JPEGs (q90) in dest; at most UNIQUE_IMAGES distinct ones, cycled beyond that."""
    import io

    import numpy as np
    from PIL import Image

    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pool: list[bytes] = []
    paths = []
    for i in range(n):
        if len(pool) < UNIQUE_IMAGES:
            buf = io.BytesIO()
            Image.fromarray(compose(photos, rng, w, h, LAYOUTS[i % len(LAYOUTS)])).save(buf, "JPEG", quality=quality)
            pool.append(buf.getvalue())
        p = dest / f"img_{i:06d}.jpg"
        p.write_bytes(pool[i % len(pool)])
        paths.append(p)
    return paths


# ---------------------------------------------------------------------------------- bounds (no Ray)

_W: dict = {}


def _bound_init(kind: str, preset: str | None, model: bytes | None, ssd: bytes | None, run: dict, ready) -> None:
    import cv2
    import numpy as np

    cv2.setNumThreads(1)  # one process per core: single-threaded OpenCV, like onnxruntime
    _W.clear()
    _W.update(kind=kind, run=run)
    if kind == "work":
        from .anonymize import AnonymizeParams, Secret, warm_up
        from .segment import FinderSettings, PersonFinder

        warm_up()
        finder = PersonFinder(model, FinderSettings.preset(preset), threads=1, ssd_bytes=ssd)
        finder.find([np.zeros((480, 640, 3), np.uint8)])  # onnxruntime's first-call set-up
        _W.update(finder=finder, params=AnonymizeParams(**run["anonymize"]), secret=Secret(run["secret"].encode(), "bench"))
    ready.put(os.getpid())


def _bound_one(path: str) -> dict[str, float]:
    from .decode import decode_image
    from .encode import encode_jpeg

    run = _W["run"]
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        data = f.read()
    dec = decode_image(data, run["max_pixels"])
    t1 = time.perf_counter()
    out = dec.image
    t_find = t_anon = 0.0
    if _W["kind"] == "work":
        from .anonymize import anonymize, keyed_rng
        from .segment import instances

        found = _W["finder"].find([dec.image], [dec.panorama])[0]  # HOG proposals computed inside
        t2 = time.perf_counter()
        labels, people = instances(found.mask, wrap=dec.panorama)  # as finish_batch does
        out = anonymize(dec.image, labels, [pp.height for pp in people], _W["params"],
                        keyed_rng(_W["secret"], path), wrap=dec.panorama).image
        t3 = time.perf_counter()
        t_find, t_anon = t2 - t1, t3 - t2
        t1 = t3
    encode_jpeg(out, run["jpeg_quality"], run["metadata"], dec.exif, dec.xmp, dec.icc)
    t4 = time.perf_counter()
    return {"decode": t1 - t0 - t_find - t_anon, "find": t_find, "anonymize": t_anon, "encode": t4 - t1}


@dataclass
class Bound:
    images: int
    wall: float
    seconds: dict[str, float]
    foreign: float = 0.0
    cpu: float = 0.0  # CPU seconds used by the pool's processes while timed

    @property
    def rate(self) -> float:
        return self.images / self.wall


def run_bound(kind: str, paths: list[Path], cores: int, run: dict, preset: str | None = None,
              model: bytes | None = None, ssd: bytes | None = None) -> Bound:
    """Process every file once over ``cores`` spawned processes; timed after all are ready."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # never fork a process that may hold Ray's threads
    ready = ctx.Queue()
    with ctx.Pool(cores, initializer=_bound_init, initargs=(kind, preset, model, ssd, run, ready)) as pool:
        for _ in range(cores):
            ready.get(timeout=600)
        meter = CpuMeter()
        t0 = time.perf_counter()
        results = list(pool.imap_unordered(_bound_one, [str(p) for p in paths], chunksize=1))
        wall = time.perf_counter() - t0
        foreign, cpu = meter.read()
    sums = {k: sum(r[k] for r in results) for k in results[0]}
    return Bound(len(results), wall, sums, foreign, cpu)


# ---------------------------------------------------------------------------------- the pipeline

@dataclass
class PipelineRun:
    code: int
    wall: float  # around run_job, seconds
    stats_wall: float  # run_job's own wall_seconds (_stats.json)
    ok: int
    errors: int
    busy: dict[str, float]  # summed per-stage seconds from the metadata
    exec_s: float | None  # Ray Data's own "execution finished in X seconds" for the dataset
    foreign: float  # share of the machine's CPU used by other processes during the run
    cpu: float  # CPU seconds used by this process and all its descendants (Ray included) during the run


def _read_run(out_url: str, opts: dict) -> tuple[dict, "object"]:
    from . import metastore, storage

    fs, root = storage.filesystem(out_url, opts)
    stats = json.loads(fs.cat_file(root.rstrip("/") + "/_stats.json"))
    cols = ["status", "seconds_decode", "seconds_segment", "seconds_anonymize", "seconds_encode"]
    return stats, metastore.current_rows(fs, root, cols)


def run_pipeline(input_url: str, out_url: str, preset: str, opts: dict, endpoint: str | None,
                 limit: int | None = None, segment_actors: tuple[int, int] | None = None) -> PipelineRun:
    from .config import RunConfig
    from .pipeline import run_job

    cfg = RunConfig(input=input_url, output=out_url, recall=preset, endpoint_url=endpoint, limit=limit, force=True,
                    segment_actors=segment_actors)
    old = os.environ.get(SECRET_ENV)
    os.environ[SECRET_ENV] = BENCH_SECRET
    catcher = _ExecutionTime()
    meter = CpuMeter()
    try:
        catcher.attach()
        t0 = time.perf_counter()
        code = run_job(cfg)
        wall = time.perf_counter() - t0
        foreign, cpu = meter.read()
    finally:
        catcher.detach()
        if old is None:
            os.environ.pop(SECRET_ENV, None)
        else:
            os.environ[SECRET_ENV] = old
    stats, table = _read_run(out_url, cfg.fsspec_options())
    rows = table.to_pydict() if table is not None else {"status": []}
    ok = sum(1 for s in rows["status"] if s == "ok")
    busy = {}
    for stage in ("decode", "segment", "anonymize", "encode"):
        busy[stage] = float(sum(v for v in rows.get(f"seconds_{stage}", []) if v is not None))
    return PipelineRun(code, wall, float(stats.get("wall_seconds") or wall), ok, len(rows["status"]) - ok,
                       busy, catcher.seconds, foreign, cpu)


class _ExecutionTime:
    """Catches Ray Data's "Dataset ... execution finished in X seconds" log record in this process.

    Attached only once Ray Data has been imported (by an earlier run), so that Ray's own logging
    set-up cannot disable the logger; ``seconds`` stays None when the record is not seen.
    """

    LOGGER = "ray.data._internal.execution.streaming_executor"
    PATTERN = re.compile(r"execution finished in ([0-9.]+) seconds")

    def __init__(self) -> None:
        import logging

        self.seconds: float | None = None
        catcher = self

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                try:
                    m = catcher.PATTERN.search(record.getMessage())
                except Exception:
                    return
                if m:
                    catcher.seconds = float(m.group(1))

        self.handler = Handler()
        self.attached = False

    def attach(self) -> None:
        import logging

        if "ray.data" in sys.modules:
            logging.getLogger(self.LOGGER).addHandler(self.handler)
            self.attached = True

    def detach(self) -> None:
        import logging

        if self.attached:
            logging.getLogger(self.LOGGER).removeHandler(self.handler)


class CpuMeter:
    """CPU used by this process's tree (Ray's processes included) and by everything else on the
    machine, from start to :meth:`read`.

    The tree's utime+stime is sampled per process every 0.25 s (a process's last sample counts
    after it exits: Ray's raylet does not collect its workers' times, so ``cutime`` would lose
    them); the rest of /proc/stat's busy time is other processes: the shared machine's noise.
    """

    def __init__(self, interval: float = 0.25) -> None:
        self.base: dict[tuple[int, int], float] = {}
        self.last: dict[tuple[int, int], float] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sample(first=True)
        self.t0 = time.perf_counter()
        self.sys0 = self._system()
        self._thread = threading.Thread(target=self._loop, args=(interval,), daemon=True)
        self._thread.start()

    @staticmethod
    def _system() -> float:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        busy = v[0] + v[1] + v[2] + sum(v[5:8])  # user nice system irq softirq steal (guest is in user)
        return busy / CLK_TCK

    def _sample(self, first: bool = False) -> None:
        for pid in _tree(os.getpid()):
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    stat = f.read()
                fields = stat[stat.rindex(b")") + 2:].split()
                key = (pid, int(fields[19]))  # starttime: a reused pid is another process
                cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, all threads
            except (OSError, ValueError, IndexError):
                continue
            with self._lock:
                if first:
                    self.base[key] = cpu
                self.base.setdefault(key, 0.0)
                self.last[key] = cpu

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._sample()

    def read(self) -> tuple[float, float]:
        """(share of the machine's CPU used by other processes, CPU seconds used by this tree)."""
        self._sample()
        wall = time.perf_counter() - self.t0
        system = self._system() - self.sys0
        self._stop.set()
        self._thread.join(5)
        with self._lock:
            own = sum(self.last[k] - self.base[k] for k in self.last)
        foreign = system - own
        share = min(1.0, max(0.0, foreign / (wall * (os.cpu_count() or 1)))) if wall > 0 else 0.0
        return share, own


def _run_settings(cfg_preset: str = "max") -> dict:
    """The run's anonymize/encode settings (RunConfig defaults), as the bounds' workers get them."""
    from .config import RunConfig

    cfg = RunConfig(input="x", output="y", recall=cfg_preset)
    return {
        "anonymize": dict(mode=cfg.mode, radius_mode=cfg.radius_mode, radius=cfg.radius, min_radius=cfg.min_radius,
                          dilate=cfg.dilate, dissolve=cfg.dissolve, fill_color=tuple(cfg.fill_color)),
        "jpeg_quality": cfg.jpeg_quality, "metadata": cfg.metadata, "max_pixels": cfg.max_pixels,
        "secret": BENCH_SECRET, "batch_size": cfg.batch_size,
    }


class _S3:
    """moto's S3 server on 127.0.0.1 at a free port."""

    def __init__(self) -> None:
        import socket

        from moto.server import ThreadedMotoServer

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
        self.server.start()
        self.endpoint = f"http://127.0.0.1:{port}"

    def fs(self):
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        return s3fs.S3FileSystem(endpoint_url=self.endpoint)

    def stop(self) -> None:
        self.server.stop()


def throughput_bench(ns: argparse.Namespace) -> int:
    presets = list(dict.fromkeys(ns.recall or ["max"]))
    main_preset = "max" if "max" in presets else presets[0]
    cores = ns.cores or os.cpu_count() or 1
    n = ns.n
    if n < 1:
        raise SystemExit("bench: --n must be >= 1")
    run = _run_settings()
    warm_n = min(n, ns.warmup if ns.warmup else 2 * run["batch_size"])
    actors = None
    if ns.segment_actors:
        from .cli import _actors

        actors = _actors(ns.segment_actors)
    if ns.s3:
        # before Ray starts, so its workers inherit them (moto accepts any credentials)
        os.environ.update(FAKE_AWS)
    base = Path(ns.keep) if ns.keep else Path(tempfile.mkdtemp(prefix="fuzzy-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    s3 = None
    try:
        t0 = time.perf_counter()
        photos, where = source_photos(ns.photos)
        paths = make_images(base / "input", n, 1920, 1080, photos)
        log(f"made {n} images in {time.perf_counter() - t0:.1f} s")
        input_url, out_prefix, endpoint, opts = str(base / "input"), str(base / "out"), None, {}
        if ns.s3:
            s3 = _S3()
            endpoint, opts = s3.endpoint, {"endpoint_url": s3.endpoint}
            fs = s3.fs()
            fs.mkdir("bench-in")
            fs.mkdir("bench-out")
            fs.put([str(p) for p in paths], "bench-in/images/")
            input_url, out_prefix = "s3://bench-in/images/", "s3://bench-out/run"
        say(f"bench: {n} JPEGs 1920x1080 q90 (layouts {'/'.join(LAYOUTS)}; {min(n, UNIQUE_IMAGES)} distinct) "
            f"composed from {where}; input {'S3 (moto on 127.0.0.1, s3fs)' if ns.s3 else 'local dir'}; "
            f"{cores} cores ({os.cpu_count()} on this machine)"
            + (f"; the runs get --segment-actors {ns.segment_actors}" if actors else ""))
        from .models.registry import resolve_model
        from .segment import FinderSettings, load_ssd_bytes

        model = resolve_model("selfie").data
        bounds: dict[str, Bound] = {}
        if not ns.skip_bounds:
            # the bounds read the local copies; all of them run before Ray starts
            codec = run_bound("codec", paths, cores, run)
            say(f"codec bound: {codec.rate:.2f} images/s ({n} images in {codec.wall:.1f} s; decode_image + encode_jpeg "
                f"q{run['jpeg_quality']}, {cores} processes; other processes used {codec.foreign:.0%} of the CPU)")
            for preset in presets:
                settings = FinderSettings.preset(preset)
                ssd = load_ssd_bytes() if "ssd" in settings.proposers else None
                bounds[preset] = run_bound("work", paths, cores, run, preset, model, ssd)
                b = bounds[preset]
                say(f"[{preset}] work bound: {b.rate:.2f} images/s ({n} images in {b.wall:.1f} s; decode + PersonFinder.find"
                    f" + anonymize + encode, {cores} processes, onnxruntime/OpenCV 1 thread each; other processes used "
                    f"{b.foreign:.0%} of the CPU); per image: "
                    + ", ".join(f"{k} {1000 * v / n:.0f} ms" for k, v in b.seconds.items()))
                say(f"[{preset}] finder alone (work bound): {n / b.seconds['find']:.2f} images/s per core "
                    f"(HOG proposals included), {cores * n / b.seconds['find']:.2f} on {cores} cores")
        ratios: dict[str, float] = {}
        for k, preset in enumerate(presets):
            # untimed first run: starts Ray (once) and warms the workers' imports and caches
            warm = run_pipeline(input_url, f"{out_prefix}/warm-{preset}", preset, opts, endpoint, warm_n, actors)
            timed = run_pipeline(input_url, f"{out_prefix}/{preset}", preset, opts, endpoint, None, actors)
            if timed.code != 0 or timed.ok + timed.errors != n:
                say(f"[{preset}] pipeline: exit {timed.code}, {timed.ok} ok, {timed.errors} errors of {n}")
                return timed.code or 1
            wall_rate = n / timed.wall
            label = "Ray start-up + " if k == 0 else ""
            say(f"[{preset}] pipeline first run ({label}{warm_n} images; not used below): {warm.wall:.1f} s")
            say(f"[{preset}] pipeline wall-clock: {wall_rate:.2f} images/s over the second run ({n} images in "
                f"{timed.wall:.1f} s from the run_job call to its return, Ray already up: listing, model resolve, "
                f"actor start, fill/drain and metadata commit included; other processes used {timed.foreign:.0%} of the CPU)")
            rate, what = wall_rate, "wall-clock"
            if timed.exec_s:
                rate, what = n / timed.exec_s, "dataset execution"
                say(f"[{preset}] pipeline dataset execution: {rate:.2f} images/s ({n} images in {timed.exec_s:.1f} s, "
                    f"Ray Data's own execution time of the second run: actor start and fill/drain included; "
                    f"{timed.wall - timed.exec_s:.1f} s of the run_job call fell outside it)")
            busy = timed.busy
            total = sum(busy.values())
            span = (timed.exec_s or timed.wall) * cores
            say(f"[{preset}] stage busy seconds (metadata sums; decode includes fetch + HOG): "
                + ", ".join(f"{s} {v:.1f}" for s, v in busy.items())
                + f"; total {total:.1f} of {span:.1f} core-seconds ({total / span:.0%}) over the {what}")
            if busy["segment"] > 0:
                say(f"[{preset}] finder in the pipeline: {timed.ok / busy['segment']:.2f} images per busy second of "
                    f"the segment stage (HOG excluded: it runs in the decode stage)")
            if not ns.skip_bounds:
                b = bounds[preset]
                ratios[preset] = rate / b.rate
                say(f"[{preset}] codec_ratio={rate / codec.rate:.3f}")
                say(f"[{preset}] CPU per image: work bound {b.cpu / n:.2f} s, pipeline {timed.cpu / n:.2f} s (driver + "
                    f"every Ray process); cpu_ratio={b.cpu / timed.cpu:.3f} (bound CPU / pipeline CPU: overhead only, "
                    f"insensitive to other load; idle bubbles do not show in it); pipeline used "
                    f"{timed.cpu / (timed.wall * cores):.0%} of {cores} cores, the bound {b.cpu / (b.wall * cores):.0%}")
                say(f"[{preset}] ratio={ratios[preset]:.3f} on the {what}; ratio_wall={wall_rate / b.rate:.3f}; "
                    f"other processes used {b.foreign:.0%} of the CPU during the bound, {timed.foreign:.0%} during "
                    f"the pipeline")
                if abs(b.foreign - timed.foreign) > 0.10:
                    say(f"[{preset}] WARNING: other load differed between the bound and the pipeline "
                        f"({b.foreign:.0%} vs {timed.foreign:.0%} of the CPU): this ratio is not a fair comparison; "
                        f"rerun on a quieter machine (cpu_ratio is not affected)")
        if not ns.skip_bounds:
            say(f"ratio={ratios[main_preset]:.3f}")
        return 0
    finally:
        if s3 is not None:
            s3.stop()
        if not ns.keep:
            shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------------- memory



def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _tree(root: int) -> list[int]:
    kids, out, todo = _children_map(), [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _proc_mem(pid: int) -> tuple[int, int, str] | None:
    """(rss bytes, pss bytes, short name) of one process; None when it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * PAGE
        pss = 0
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                    break
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    name = os.path.basename(cmd[0].decode(errors="replace")) if cmd and cmd[0] else "?"
    if name.startswith("ray::"):
        name = "ray worker"
    elif name.startswith("python"):
        name = "python " + " ".join(os.path.basename(c.decode(errors="replace")) for c in cmd[1:3])
    return rss, pss, name


@dataclass
class MemPeak:
    rss: int = 0
    pss: int = 0
    rss_parts: dict = field(default_factory=dict)
    driver_rss: int = 0
    processes: int = 0
    samples: int = 0


def _sample_tree(root: int, stop: threading.Event, peak: MemPeak) -> None:
    while not stop.is_set():
        total_rss = total_pss = 0
        parts: dict[str, int] = {}
        pids = _tree(root)
        for pid in pids:
            m = _proc_mem(pid)
            if m is None:
                continue
            rss, pss, name = m
            total_rss += rss
            total_pss += pss
            key = "driver" if pid == root else name
            parts[key] = parts.get(key, 0) + rss
            if pid == root:
                peak.driver_rss = max(peak.driver_rss, rss)
        peak.samples += 1
        if total_rss > peak.rss:
            peak.rss, peak.rss_parts, peak.processes = total_rss, parts, len(pids)
        peak.pss = max(peak.pss, total_pss)
        stop.wait(SAMPLE_SECONDS)


def _plasma_used_mib() -> tuple[float, float] | None:
    """(object store used MiB, spilled MiB) of the local Ray session, via Ray's memory summary."""
    import ray
    from ray._private.internal_api import memory_summary

    if not ray.is_initialized():
        return None
    text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    used = re.search(r"Plasma memory usage (\d+(?:\.\d+)?) MiB", text)
    spilled = re.search(r"Spilled (\d+(?:\.\d+)?) MiB", text)
    return (float(used.group(1)) if used else 0.0, float(spilled.group(1)) if spilled else 0.0)


def _memory_child(spec_text: str) -> int:
    """One memory run in its own process (own driver, own local Ray)."""
    spec = json.loads(spec_text)
    os.environ[SECRET_ENV] = BENCH_SECRET
    peak = {"plasma_mib": 0.0, "spilled_mib": 0.0, "samples": 0, "error": None}
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            if "ray" in sys.modules:
                try:
                    got = _plasma_used_mib()
                    if got:
                        peak["plasma_mib"] = max(peak["plasma_mib"], got[0])
                        peak["spilled_mib"] = max(peak["spilled_mib"], got[1])
                        peak["samples"] += 1
                except Exception as exc:  # the probe must never break the run
                    peak["error"] = f"{type(exc).__name__}: {exc}"[:200]
            stop.wait(SAMPLE_SECONDS)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    from .config import RunConfig
    from .pipeline import run_job

    cfg = RunConfig(input=spec["input"], output=spec["output"], recall=spec["recall"], force=True)
    t0 = time.perf_counter()
    code = run_job(cfg)
    wall = time.perf_counter() - t0
    stop.set()
    thread.join(5)
    stats, _ = _read_run(spec["output"], {})
    Path(spec["result"]).write_text(json.dumps({"code": code, "wall": wall, "stats_wall": stats.get("wall_seconds"),
                                                "counts": stats.get("counts"), **peak}))
    return code


def memory_bench(ns: argparse.Namespace) -> int:
    preset = (ns.recall or ["fast"])[0]
    sizes = ns.memory_sizes
    base = Path(ns.keep) if ns.keep else Path(tempfile.mkdtemp(prefix="fuzzy-bench-mem-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        photos, where = source_photos(ns.photos)
        say(f"memory bench: 640x480 JPEGs q90 composed from {where}; --recall {preset}; each size in its own "
            f"process with its own local Ray; sums over the driver and all its descendants, every {SAMPLE_SECONDS} s")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT.parent)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        results = {}
        for size in sizes:
            inp = base / f"in-{size}"
            make_images(inp, size, 640, 480, photos, seed=1)
            spec = {"input": str(inp), "output": str(base / f"out-{size}"), "recall": preset,
                    "result": str(base / f"result-{size}.json")}
            child = subprocess.Popen([sys.executable, "-m", "pipeline.bench", "--memory-child", json.dumps(spec)],
                                     env=env, stdout=subprocess.DEVNULL, stderr=open(base / f"log-{size}.txt", "wb"))
            peak, stop = MemPeak(), threading.Event()
            sampler = threading.Thread(target=_sample_tree, args=(child.pid, stop, peak), daemon=True)
            sampler.start()
            code = child.wait()
            stop.set()
            sampler.join(5)
            if code != 0:
                say(f"memory {size}: child exited {code}; log {base / f'log-{size}.txt'}")
                ns.keep = ns.keep or str(base)
                return code
            res = json.loads(Path(spec["result"]).read_text())
            results[size] = (peak, res)
            mib = 1 / 2**20
            parts = ", ".join(f"{k} {v * mib:.0f}" for k, v in sorted(peak.rss_parts.items(), key=lambda kv: -kv[1]))
            say(f"memory {size} images: peak RSS sum {peak.rss * mib:.0f} MiB over {peak.processes} processes "
                f"(at that sample: {parts}); peak PSS sum {peak.pss * mib:.0f} MiB; driver peak RSS "
                f"{peak.driver_rss * mib:.0f} MiB; object store peak {res['plasma_mib']:.0f} MiB used, "
                f"{res['spilled_mib']:.0f} MiB spilled; {peak.samples} samples; run {res['wall']:.0f} s "
                f"({size / res['wall']:.2f} images/s incl. Ray start-up), counts {res['counts']}")
            shutil.rmtree(inp, ignore_errors=True)
            shutil.rmtree(base / f"out-{size}", ignore_errors=True)
        if len(sizes) >= 2:
            lo, hi = min(sizes), max(sizes)
            say(f"memory_pss_ratio={results[hi][0].pss / results[lo][0].pss:.3f} ({hi} vs {lo} images)")
            say(f"memory_ratio={results[hi][0].rss / results[lo][0].rss:.3f} ({hi} vs {lo} images, peak RSS sums; target <= 1.2)")
        return 0
    finally:
        if not ns.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
