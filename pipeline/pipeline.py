"""The Ray Data job: list -> read+decode (+CPU proposals) -> find people -> anonymize+encode+write
-> Parquet metadata. The only module that imports Ray.

Rows carry ``status``/``error_message`` from the first stage on: a stage that fails on one image
marks that row ``error`` and passes it on; every listed or manifest key ends as exactly one row.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from . import metastore, storage
from .config import RunConfig
from .metastore import METADATA_SCHEMA
from .segment import FinderSettings

META_DIR = "_metadata"
STAGING_DIR = "_staging"  # under _metadata/; '_' keeps it out of every reader's dataset

BASE_SCHEMA = pa.schema([
    ("key", pa.string()), ("rel", pa.string()), ("out_rel", pa.string()),
    ("source_size", pa.int64()), ("source_etag", pa.string()),
    ("status", pa.string()), ("error_message", pa.string()),
])

IMAGE_FIELD = pa.field("image", pa.binary())


def log(msg: str) -> None:
    print(f"[fuzzy-people] {msg}", file=sys.stderr, flush=True)


_ONE_THREAD = False


def _one_thread() -> None:
    """OpenCV at one thread in every worker, like onnxruntime: parallelism comes from the
    processes (one per core), and OpenCV's own pool would oversubscribe the cores."""
    global _ONE_THREAD
    if not _ONE_THREAD:
        import cv2

        cv2.setNumThreads(1)
        _ONE_THREAD = True


# ------------------------------------------------------------------------------ stage 1: read + decode

@dataclass(frozen=True)
class DecodeParams:
    storage_options: dict
    max_pixels: int
    settings: FinderSettings
    cpu_proposals: bool


def read_decode_batch(batch: pa.Table, p: DecodeParams) -> pa.Table:
    """Fetch each object's bytes, decode upright RGB, run the CPU proposers (HOG)."""
    from .decode import decode_image
    from .segment import hog_proposals

    _one_thread()
    cols: dict[str, list] = {k: [] for k in ("pixels", "width", "height", "exif", "xmp", "icc", "panorama", "proposals", "seconds_decode")}
    status = batch.column("status").to_pylist()
    errors = batch.column("error_message").to_pylist()
    for i, key in enumerate(batch.column("key").to_pylist()):
        t0 = time.perf_counter()
        img = None
        if status[i] == "pending":
            try:
                fs, path = storage.filesystem(key, p.storage_options)
                with fs.open(path, "rb") as f:
                    data = f.read()
                dec = decode_image(data, p.max_pixels)
                img = dec
            except FileNotFoundError:
                status[i], errors[i] = "error", "input object not found (deleted after listing?)"
            except Exception as exc:  # DecodeError and anything unexpected: one error row
                status[i], errors[i] = "error", _message(exc)
        props = np.zeros((0, 4), np.float32)
        if img is not None and p.cpu_proposals:
            try:
                props = hog_proposals(img.image, p.settings, img.panorama)
            except Exception as exc:
                status[i], errors[i], img = "error", f"proposals failed: {_message(exc)}", None
        cols["pixels"].append(img.image.tobytes() if img is not None else b"")
        cols["width"].append(img.width if img is not None else 0)
        cols["height"].append(img.height if img is not None else 0)
        cols["exif"].append(img.exif if img is not None else None)
        cols["xmp"].append(img.xmp if img is not None else None)
        cols["icc"].append(img.icc if img is not None else None)
        cols["panorama"].append(bool(img.panorama) if img is not None else False)
        cols["proposals"].append(props.astype(np.float32).tobytes())
        cols["seconds_decode"].append(time.perf_counter() - t0)
    out = batch.set_column(batch.schema.get_field_index("status"), "status", pa.array(status, pa.string()))
    out = out.set_column(out.schema.get_field_index("error_message"), "error_message", pa.array(errors, pa.string()))
    types = {"pixels": pa.binary(), "width": pa.int32(), "height": pa.int32(), "exif": pa.binary(),
             "xmp": pa.binary(), "icc": pa.binary(), "panorama": pa.bool_(), "proposals": pa.binary(),
             "seconds_decode": pa.float64()}
    for name, values in cols.items():
        out = out.append_column(name, pa.array(values, types[name]))
    return out


def _message(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    name = type(exc).__name__
    return text if name in ("DecodeError", "StorageError", "ModelError") else f"{name}: {text}"


def _image(row_pixels: pa.Scalar, w: int, h: int) -> np.ndarray:
    buf = row_pixels.as_buffer()
    return np.frombuffer(buf, np.uint8).reshape(h, w, 3)


# ------------------------------------------------------------------------------ stage 2: find people

class SegmentActor:
    """Holds one PersonFinder (one onnxruntime session) per actor; CUDA when given a GPU."""

    def __init__(self, model_ref, ssd_ref, settings: FinderSettings, use_gpu: bool, threads: int,
                 fault: tuple[int | None, str | None, str | None] | None = None):
        import ray

        from .segment import PersonFinder

        _one_thread()
        model = ray.get(model_ref) if isinstance(model_ref, ray.ObjectRef) else model_ref
        ssd = ray.get(ssd_ref) if isinstance(ssd_ref, ray.ObjectRef) else ssd_ref
        self.finder = PersonFinder(model, settings, use_gpu=use_gpu, threads=threads, ssd_bytes=ssd)
        # test hooks, set on the driver: FUZZY_PEOPLE_FAULT_AFTER=N + FUZZY_PEOPLE_FAULT_MARKER=path
        # make the worker process exit once after N batches, as a crashed native library would;
        # FUZZY_PEOPLE_FAULT_KEY=text makes it exit on every batch holding a key with that text
        self.fault = fault
        self.batches = 0

    def __call__(self, batch: pa.Table) -> pa.Table:
        self.batches += 1
        if self.fault is not None:
            after, marker, poison = self.fault
            if poison and any(poison in k for k in batch.column("key").to_pylist()):
                os._exit(1)  # a poison image: kills the worker every time
            if after is not None and self.batches > after and marker and not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)
        return segment_batch(batch, self.finder)


def segment_batch(batch: pa.Table, finder) -> pa.Table:
    status = batch.column("status").to_pylist()
    errors = batch.column("error_message").to_pylist()
    widths = batch.column("width").to_pylist()
    heights = batch.column("height").to_pylist()
    panos = batch.column("panorama").to_pylist()
    pixels = batch.column("pixels")
    props = batch.column("proposals")
    idx = [i for i, s in enumerate(status) if s == "pending"]
    masks: list[bytes] = [b""] * len(status)
    seconds = [0.0] * len(status)
    images = [_image(pixels[i], widths[i], heights[i]) for i in idx]
    proposals = [np.frombuffer(props[i].as_buffer(), np.float32).reshape(-1, 4) for i in idx]
    t0 = time.perf_counter()
    try:
        found = finder.find(images, [panos[i] for i in idx], proposals)
    except Exception:
        found = None  # isolate the failing image: one by one
    if found is not None:
        per = (time.perf_counter() - t0) / max(1, len(idx))
        for j, i in enumerate(idx):
            masks[i] = np.packbits(found[j].mask, axis=None).tobytes()
            seconds[i] = per
    else:
        for j, i in enumerate(idx):
            t1 = time.perf_counter()
            try:
                f = finder.find([images[j]], [panos[i]], [proposals[j]])[0]
                masks[i] = np.packbits(f.mask, axis=None).tobytes()
            except Exception as exc:
                status[i], errors[i] = "error", f"person finder failed: {_message(exc)}"
            seconds[i] = time.perf_counter() - t1
    out = batch.drop_columns(["proposals"])
    out = out.set_column(out.schema.get_field_index("status"), "status", pa.array(status, pa.string()))
    out = out.set_column(out.schema.get_field_index("error_message"), "error_message", pa.array(errors, pa.string()))
    out = out.append_column("mask", pa.array(masks, pa.binary()))
    return out.append_column("seconds_segment", pa.array(seconds, pa.float64()))


# ------------------------------------------------------------------------------ stage 3: anonymize + encode + write

@dataclass(frozen=True)
class FinishParams:
    output: str
    storage_options: dict
    anonymize: Any  # AnonymizeParams
    secret: Any  # Secret
    jpeg_quality: int
    metadata: str
    output_format: str
    model: str
    model_sha256: str
    run_id: str


def finish_batch(batch: pa.Table, p: FinishParams) -> pa.Table:
    """Anonymize, encode JPEG, write it (jpeg format), and build the metadata rows."""
    from . import rle
    from .anonymize import anonymize, keyed_rng
    from .encode import encode_jpeg
    from .segment import instances

    _one_thread()
    now = datetime.now(timezone.utc)
    rule = f"{p.anonymize.radius_mode}:{p.anonymize.radius:g}"
    rows: dict[str, list] = {f.name: [] for f in METADATA_SCHEMA}
    images: list[bytes | None] = []
    fs = None
    n = batch.num_rows
    cols = {name: batch.column(name) for name in batch.column_names}
    py = {name: cols[name].to_pylist() for name in ("key", "out_rel", "status", "error_message", "width", "height",
                                                    "panorama", "source_size", "source_etag", "seconds_decode", "seconds_segment")}
    for i in range(n):
        status, err = py["status"][i], py["error_message"][i]
        w, h = py["width"][i], py["height"][i]
        r = dict(key=py["key"][i], output_key=None, status=status, error_message=err, width=w or None,
                 height=h or None, person_pixels=None, person_fraction=None, num_people=None, boxes=None,
                 mask_rle=None, model=p.model, model_sha256=p.model_sha256, mode=p.anonymize.mode,
                 radius=rule, radii=None, source_size=py["source_size"][i], source_etag=py["source_etag"][i],
                 metadata=p.metadata, panorama=py["panorama"][i], seconds_decode=py["seconds_decode"][i],
                 seconds_segment=py["seconds_segment"][i], seconds_anonymize=None, seconds_encode=None,
                 run_id=p.run_id, processed_at=now)
        jpeg = None
        if status == "pending":
            try:
                image = _image(cols["pixels"][i], w, h)
                mask = np.unpackbits(np.frombuffer(cols["mask"][i].as_buffer(), np.uint8), count=w * h).reshape(h, w).astype(bool)
                t0 = time.perf_counter()
                labels, people = instances(mask, wrap=bool(py["panorama"][i]))
                result = anonymize(image, labels, [pp.height for pp in people], p.anonymize,
                                   keyed_rng(p.secret, py["key"][i]), wrap=bool(py["panorama"][i]))
                t1 = time.perf_counter()
                jpeg = encode_jpeg(result.image, p.jpeg_quality, p.metadata,
                                   _scalar_bytes(cols["exif"][i]), _scalar_bytes(cols["xmp"][i]), _scalar_bytes(cols["icc"][i]))
                t2 = time.perf_counter()
                final = result.mask
                out_url = storage.join_url(p.output, py["out_rel"][i])
                if p.output_format == "jpeg":
                    if fs is None:
                        fs, _ = storage.filesystem(p.output, p.storage_options)
                    storage.write_bytes(fs, storage.filesystem(out_url, p.storage_options)[1], jpeg)
                    r["output_key"] = out_url
                else:
                    r["output_key"] = None
                npix = int(final.sum())
                r.update(status="ok", error_message=None, person_pixels=npix, person_fraction=npix / float(w * h),
                         num_people=len(people), boxes=[list(pp.box) for pp in people], mask_rle=rle.encode(final),
                         radii=[int(x) for x in result.radii], seconds_anonymize=t1 - t0, seconds_encode=t2 - t1)
            except Exception as exc:
                r.update(status="error", error_message=f"anonymize/encode/write failed: {_message(exc)}")
                jpeg = None
        elif status != "error":
            r.update(status="error", error_message=err or f"unexpected status {status!r}")
        for k in rows:
            rows[k].append(r[k])
        images.append(jpeg if p.output_format == "parquet" else None)
    table = pa.Table.from_pydict(rows, schema=METADATA_SCHEMA)
    if p.output_format == "parquet":
        table = table.append_column(IMAGE_FIELD, pa.array(images, pa.binary()))
    return table


def _scalar_bytes(s: pa.Scalar) -> bytes | None:
    return s.as_py() if s.is_valid else None


# ------------------------------------------------------------------------------ driver

def _init_ray(cfg: RunConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        log(f"connecting to the Ray cluster at RAY_ADDRESS ({address})")
        ray.init(address=address, log_to_driver=True)
    else:
        log("starting a local Ray instance (set RAY_ADDRESS to use a cluster)")
        ray.init(address="local", include_dashboard=False, log_to_driver=True)


def _items_table(items: list[storage.InputItem]) -> pa.Table:
    taken: set[str] = set()
    rows: dict[str, list] = {f.name: [] for f in BASE_SCHEMA}
    for it in items:
        out_rel, error = None, it.error
        if not error:
            try:
                out_rel = storage.output_rel(it.rel, taken)
            except storage.StorageError as exc:
                error = str(exc)
        rows["key"].append(it.key)
        rows["rel"].append(it.rel)
        rows["out_rel"].append(out_rel)
        rows["source_size"].append(it.size)
        rows["source_etag"].append(it.etag)
        rows["status"].append("error" if error else "pending")
        rows["error_message"].append(error)
    return pa.Table.from_pydict(rows, schema=BASE_SCHEMA)


def segment_pool(cfg: RunConfig, cluster_cpus: float, cluster_gpus: float) -> tuple[int, int]:
    """Actor pool bounds: the flag, else one actor per GPU (GPU) or one per CPU (CPU-only).

    On CPU every actor runs one single-threaded onnxruntime session, and the person finder is
    most of the work (about 90 % of it at the default preset), so one actor per core keeps every
    core busy; the CPU stages fit beside them because the actors ask for a fraction of a CPU
    each (see :func:`plan_resources`)."""
    if cfg.segment_actors is not None:
        return cfg.segment_actors
    if cfg.num_gpus > 0:
        return 1, max(1, int(cluster_gpus // cfg.num_gpus))
    n = max(1, int(cluster_cpus))
    return n, n


@dataclass(frozen=True)
class ResourcePlan:
    """Logical resources of the three stages and the object-store budget of one run."""

    pool: tuple[int, int]  # segment actor pool (min, max)
    actor_cpus: float  # num_cpus of each segment actor
    actor_gpus: float | None  # num_gpus of each segment actor (None on CPU)
    task_cpus: float  # num_cpus of each decode / finish(+write) task
    tasks_in_flight_per_actor: int
    object_store_blocks: int  # blocks of batch_size images the run may hold in the object store

    def object_store_limit(self, image_bytes: int | None, batch_size: int) -> int | None:
        """The object-store budget in bytes for images of ``image_bytes`` (decoded), or None."""
        if not image_bytes:
            return None
        return int(self.object_store_blocks * batch_size * image_bytes)


def plan_resources(cfg: RunConfig, cluster_cpus: float, cluster_gpus: float) -> ResourcePlan:
    """How the cluster's logical CPUs are split so that the pipeline can never deadlock.

    Ray admits a task or an actor only when its logical CPUs are free, and the segment actors
    hold theirs for the whole run. So ``reserve`` CPUs (one, or half the node when it has
    fewer than two) stay outside the pool, enough for one decode and one finish task at
    ``task_cpus`` each, and the pool's ``max`` actors share the rest (at most one CPU each).
    On a CPU-only node this oversubscribes the cores a little (an actor with 0.5 CPU still
    runs a full thread), which is the point: the finder dominates, and a core left to the CPU
    stages alone sat idle most of the time.

    The object-store budget is counted in blocks of ``batch_size`` images: per actor, the
    batches in flight to it plus its output waiting for the finish stage, plus one block per
    running decode / finish task; Ray Data splits its budget across its operators (each gets
    about its share, half of it reserved for its outputs), so the count is taken once per
    stage. Without a budget Ray Data lets decoded images queue ahead of the actors up to half
    of the object store, so the peak memory grew with the dataset.
    """
    lo, hi = segment_pool(cfg, cluster_cpus, cluster_gpus)
    cpus = max(float(cluster_cpus), 0.0)
    reserve = min(1.0, cpus / 2) if cpus > 0 else 1.0
    task_cpus = _floor4(reserve / 2)
    actor_cpus = _floor4(min(1.0, max(cpus - reserve, 0.0) / hi)) if cpus > 0 else 1.0
    use_gpu = cfg.num_gpus > 0
    # CPU: one batch at a time per actor, so the last batches spread over all actors (a second
    # queued batch would only save a few ms of fetch on a batch that runs for seconds).
    # GPU: a second batch in flight hides the fetch behind a much shorter batch.
    in_flight = 2 if use_gpu else 1
    task_slots = max(2, int(round((cpus - hi * actor_cpus) / task_cpus))) if cpus > 0 else 2
    stages = 3  # decode, segment, finish
    blocks = stages * (hi * (in_flight + 1) + task_slots)
    return ResourcePlan((lo, hi), actor_cpus, cfg.num_gpus if use_gpu else None, task_cpus, in_flight, blocks)


def _floor4(x: float) -> float:
    """Rounded down to Ray's resource precision (1e-4), so that shares never add up to more."""
    return math.floor(x * 10_000 + 1e-9) / 10_000


def probe_image_bytes(table: pa.Table, storage_options: dict, max_pixels: int, sample: int) -> int | None:
    """Decoded bytes (RGB) of the largest of the first ``sample`` readable inputs, from their
    headers only (a few KB each); None when none can be read. Sizes the object-store budget."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    best, tried = 0, 0
    for key, status in zip(table.column("key").to_pylist(), table.column("status").to_pylist()):
        if status != "pending":
            continue
        if tried >= 2 * sample or (best and tried >= sample):
            break
        tried += 1
        try:
            fs, path = storage.filesystem(key, storage_options)
            with fs.open(path, "rb") as f, Image.open(f) as im:
                w, h = im.size
        except Exception:
            continue
        best = max(best, min(w * h, max_pixels) * 3)
    return best or None


def _fault_hook() -> tuple | None:
    fault_after, marker = os.environ.get("FUZZY_PEOPLE_FAULT_AFTER"), os.environ.get("FUZZY_PEOPLE_FAULT_MARKER")
    poison = os.environ.get("FUZZY_PEOPLE_FAULT_KEY")
    if (fault_after and marker) or poison:
        return int(fault_after) if fault_after else None, marker, poison
    return None


def _stage_params(cfg: RunConfig, settings: FinderSettings, secret, run_id: str, model_name: str,
                  model_sha: str) -> tuple[DecodeParams, FinishParams]:
    from .anonymize import AnonymizeParams

    opts = cfg.fsspec_options()
    decode = DecodeParams(opts, cfg.max_pixels, settings, "hog" in settings.proposers)
    finish = FinishParams(cfg.output, opts, AnonymizeParams.from_config(cfg), secret, cfg.jpeg_quality, cfg.metadata,
                          cfg.output_format, model_name, model_sha, run_id)
    return decode, finish


def build_dataset(cfg: RunConfig, table: pa.Table, model_ref, ssd_ref, secret, run_id: str,
                  model_name: str, model_sha: str, settings: FinderSettings, plan: ResourcePlan):
    import ray
    from ray.data import ActorPoolStrategy

    decode, finish = _stage_params(cfg, settings, secret, run_id, model_name, model_sha)
    rows_per_block = max(1, cfg.batch_size)
    blocks = [table.slice(k, rows_per_block) for k in range(0, table.num_rows, rows_per_block)] or [table]
    ds = ray.data.from_arrow(blocks)
    # Retry limits can only be set through **ray_remote_args in Ray 2.60 (deprecated for 2.64,
    # which offers no replacement yet); silence that warning for these calls only.
    warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated", category=Warning)
    ds = ds.map_batches(read_decode_batch, fn_kwargs={"p": decode}, batch_format="pyarrow",
                        batch_size=cfg.batch_size, num_cpus=plan.task_cpus, max_retries=2)
    lo, hi = plan.pool
    use_gpu = cfg.num_gpus > 0
    fault = _fault_hook()
    ds = ds.map_batches(
        SegmentActor,
        fn_constructor_args=(model_ref, ssd_ref, settings, use_gpu, 1, fault),
        compute=ActorPoolStrategy(min_size=lo, max_size=hi, max_tasks_in_flight_per_actor=plan.tasks_in_flight_per_actor),
        batch_format="pyarrow",
        batch_size=int(cfg.batch_size),
        num_gpus=plan.actor_gpus,
        num_cpus=plan.actor_cpus,
        # Deliberate, both bounded: a batch is retried at most twice and an actor restarts at
        # most 4 times, so a poison image cannot crash-loop an actor forever (Ray Data's default
        # is -1 for both). Batches still lost are redone by the driver one image per task
        # (process_alone), so only the poison image ends as an error row.
        max_restarts=4,
        max_task_retries=2,
    )
    ds = ds.map_batches(finish_batch, fn_kwargs={"p": finish}, batch_format="pyarrow",
                        batch_size=cfg.batch_size, num_cpus=plan.task_cpus, max_retries=2)
    return ds


def process_alone(row: pa.Table, model: bytes, ssd: bytes | None, settings: FinderSettings, use_gpu: bool,
                  decode: DecodeParams, finish: FinishParams, fault: tuple | None) -> pa.Table:
    """One image through every stage in one worker process (a plain Ray task): used for the
    images of batches that were lost, so a crash takes only its own image down."""
    from .segment import PersonFinder

    if fault is not None and fault[2] and any(fault[2] in k for k in row.column("key").to_pylist()):
        os._exit(1)  # test hook: the poison image kills this worker too
    finder = PersonFinder(model, settings, use_gpu=use_gpu, threads=1, ssd_bytes=ssd)
    return finish_batch(segment_batch(read_decode_batch(row, decode), finder), finish)


def retry_alone(cfg: RunConfig, lost: pa.Table, model_ref, ssd_ref, settings: FinderSettings, secret,
                run_id: str, model_name: str, model_sha: str, plan: ResourcePlan) -> tuple[pa.Table | None, list[str]]:
    """Process each lost image in its own task; return (rows produced, keys that failed)."""
    import ray

    decode, finish = _stage_params(cfg, settings, secret, run_id, model_name, model_sha)
    use_gpu = cfg.num_gpus > 0
    # the CPUs of a task stage: they fit even while the pool's actors still hold theirs
    task = ray.remote(process_alone).options(num_cpus=plan.task_cpus, num_gpus=cfg.num_gpus if use_gpu else 0,
                                             max_retries=1)
    fault = _fault_hook()
    refs = {task.remote(lost.slice(i, 1), model_ref, ssd_ref, settings, use_gpu, decode, finish, fault): key
            for i, key in enumerate(lost.column("key").to_pylist())}
    tables, failed = [], []
    for ref, key in refs.items():
        try:
            tables.append(ray.get(ref))
        except Exception as exc:  # the worker died (crash, OOM) on this image, twice
            log(f"{key}: failed alone too ({type(exc).__name__})")
            failed.append(key)
    return (pa.concat_tables(tables) if tables else None), failed


def _shard_names(run_id: str):
    from ray.data.datasource import FilenameProvider

    class ShardNames(FilenameProvider):
        # Ray 2.60's Parquet sink asks for one file per write task
        def get_filename_for_task(self, write_uuid, task_index):
            return metastore.shard_name(run_id, task_index, 0, write_uuid)

        def get_filename_for_block(self, block, write_uuid, task_index, block_index):
            return metastore.shard_name(run_id, task_index, block_index, write_uuid)

    return ShardNames()


def pyarrow_fs(fs):
    from fsspec.implementations.local import LocalFileSystem
    from pyarrow.fs import FSSpecHandler, LocalFileSystem as PaLocal, PyFileSystem

    if isinstance(fs, LocalFileSystem):
        return PaLocal()
    return PyFileSystem(FSSpecHandler(fs))


def run_job(cfg: RunConfig) -> int:
    from .anonymize import resolve_secret
    from .models.registry import resolve_model
    from .segment import load_ssd_bytes

    started = time.time()
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]
    opts = cfg.fsspec_options()
    if cfg.input:
        storage.check_no_overlap(cfg.input, cfg.output)
    secret = resolve_secret(cfg.secret_file)
    log(f"run {run_id}: anonymization secret from {secret.source}")
    out_fs, out_root = storage.filesystem(cfg.output, opts)
    lock = metastore.RunLock(out_fs, out_root, owner=f"{socket.gethostname()}:{os.getpid()}:{run_id}",
                             lease=cfg.lock_lease, wait=cfg.wait_for_lock, progress=log)
    with lock:
        metastore.recover(out_fs, out_root, progress=log)
        # ---- inputs
        if cfg.manifest:
            items = storage.read_manifest(cfg.manifest, cfg.manifest_column, opts, cfg.input)
            items = storage.stat_items(items, opts)
            log(f"manifest {cfg.manifest}: {len(items):,} keys")
        else:
            log(f"listing {cfg.input} ...")
            items = storage.list_inputs(cfg.input, opts, cfg.extensions, exclude_prefix=cfg.output)
            log(f"listed {len(items):,} images under {cfg.input}")
        if cfg.limit:
            items = items[: cfg.limit]
        total = len(items)
        skipped = 0
        if not cfg.force:
            done = metastore.current_ok(out_fs, out_root)
            keep = [it for it in items if not _unchanged(it, done)]
            skipped = total - len(keep)
            items = keep
            if skipped:
                log(f"incremental: {skipped:,} inputs already anonymized and unchanged, skipped (--force reprocesses)")
        table = _items_table(items)
        # ---- models (resolved once, on the driver)
        settings = FinderSettings.preset(cfg.recall, tile_threshold=cfg.threshold)
        model = resolve_model(cfg.model, cfg.model_sha256, opts, progress=log)
        ssd = load_ssd_bytes() if "ssd" in settings.proposers else None
        if "ssd" in settings.proposers and ssd is None:
            log("person SSD proposer not available: running without it")
        import ray

        _init_ray(cfg)
        staging = metastore.staging_path(out_root, run_id)
        counts = {"ok": 0, "error": 0, "skipped": skipped}
        if table.num_rows:
            model_ref, ssd_ref = ray.put(model.data), (ray.put(ssd) if ssd else None)
            ctx = ray.data.DataContext.get_current()
            # a batch whose worker died for good must not fail the job: its keys are retried
            # one image at a time, and what still fails becomes error rows (reconciled below)
            ctx.max_errored_blocks = max(1, table.num_rows)
            resources = ray.cluster_resources()
            plan = plan_resources(cfg, resources.get("CPU", 1), resources.get("GPU", 0))
            image_bytes = probe_image_bytes(table, opts, cfg.max_pixels, cfg.batch_size)
            limit = plan.object_store_limit(image_bytes, cfg.batch_size)
            ds = build_dataset(cfg, table, model_ref, ssd_ref, secret, run_id, model.name, model.sha256, settings, plan)
            if limit is not None:
                # decoded images must not queue ahead of the actors without bound (peak memory
                # would grow with the dataset): a budget of plan.object_store_blocks batches
                ds.context.execution_options.resource_limits = ray.data.ExecutionResources(object_store_memory=limit)
            log(f"segment actors {plan.pool[0]}..{plan.pool[1]} x {plan.actor_cpus:g} CPU"
                + (f" + {plan.actor_gpus:g} GPU" if plan.actor_gpus else "")
                + f", decode/finish tasks {plan.task_cpus:g} CPU; object store budget "
                + (f"{limit / 2**20:,.0f} MiB ({plan.object_store_blocks} batches of {cfg.batch_size} images "
                   f"of up to {image_bytes / 2**20:.1f} MiB decoded)" if limit else "Ray Data's default (no input header readable)"))
            ds.write_parquet(staging, filesystem=pyarrow_fs(out_fs), filename_provider=_shard_names(run_id),
                             ray_remote_args={"num_cpus": plan.task_cpus, "max_retries": 2})
            missing = _missing_keys(out_fs, staging, table)
            if missing:
                log(f"{len(missing):,} inputs lost with their batch (a worker died): retrying them one image per task")
                lost = table.filter(pa.compute.is_in(table.column("key"), value_set=pa.array(missing, pa.string())))
                rows, _failed = retry_alone(cfg, lost, model_ref, ssd_ref, settings, secret, run_id,
                                            model.name, model.sha256, plan)
                if rows is not None:
                    metastore.write_table(out_fs, f"{staging}/{metastore.shard_name(run_id, 999998, 0)}", rows)
                missing = _missing_keys(out_fs, staging, table)
            if missing:
                log(f"{len(missing):,} inputs failed even alone: recording them as errors")
                metastore.write_error_rows(out_fs, staging, run_id, missing, table,
                                           "no result: the worker processing this image died every time it "
                                           "tried (a crash in native code or out of memory; see the job log)")
            metastore.commit(out_fs, out_root, staging, progress=log)
            c = metastore.run_counts(out_fs, out_root, run_id)
            counts["ok"], counts["error"] = c.get("ok", 0), c.get("error", 0)
        wall = time.time() - started
        processed = counts["ok"] + counts["error"]
        stats = {
            "run_id": run_id, "output": storage.redact_url(cfg.output),
            "counts": counts, "inputs": total, "processed": processed,
            "wall_seconds": round(wall, 3),
            "images_per_second": round(processed / wall, 3) if wall > 0 else None,
            "model": model.name, "model_sha256": model.sha256,
            "secret_source": secret.source, "finished_at": datetime.now(timezone.utc).isoformat(),
            "skipped_inputs_have_rows": False,
            "config": cfg.public_dict(),
        }
        storage.write_bytes(out_fs, out_root.rstrip("/") + "/_stats.json",
                            json.dumps(stats, indent=2, default=str).encode())
    error_rate = counts["error"] / processed if processed else 0.0
    print(f"fuzzy-people: {counts['ok']} ok, {counts['error']} error, {counts['skipped']} skipped; "
          f"{stats['images_per_second']} images/s over {wall:.1f} s; output {storage.redact_url(cfg.output)} "
          f"(metadata in {META_DIR}/)", flush=True)
    if error_rate > cfg.max_error_rate:
        print(f"fuzzy-people: error share {error_rate:.3f} exceeds --max-error-rate {cfg.max_error_rate}", file=sys.stderr)
        return 3
    return 0


def _missing_keys(fs, staging: str, table: pa.Table) -> list[str]:
    written = metastore.staged_keys(fs, staging)
    return [k for k in table.column("key").to_pylist() if k not in written]


def _unchanged(item: storage.InputItem, done: dict[str, tuple[int | None, str | None]]) -> bool:
    prev = done.get(item.key)
    if prev is None or item.error:
        return False
    size, etag = prev
    return size == item.size and etag == item.etag
