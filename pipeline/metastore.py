"""The output's bookkeeping: metadata shards, commit and compaction, the run lock.

Layout under the output prefix::

    _metadata/part-<run_id>-<task>-<block>.parquet   committed shards (what readers read)
    _metadata/_staging/<run_id>/...                  a running (or crashed) run's shards
    _lock.json                                       the run lock
    _stats.json                                      the last run's summary

Readers read ``_metadata/`` as one Parquet dataset (pyarrow, pandas, DuckDB
``read_parquet('OUTPUT/_metadata/*.parquet')``): ``_staging`` starts with ``_`` and is skipped by
dataset discovery. The invariant readers rely on: **one row per input key**. A run writes its
rows to staging; the commit step moves each shard into ``_metadata/`` (a rename on local disk,
copy + delete on object stores) and then compacts: any older row of a key that this run
processed again is removed by rewriting that shard in place (an atomic replace of the same
name). A run that dies before or during its commit leaves staged shards; the next run (holding
the lock) commits the readable ones first, so the work is kept, and drops unreadable ones.
Every row has ``processed_at``; should two rows for a key ever be visible, the latest is current.
"""

from __future__ import annotations

import io
import json
import threading
import time
from datetime import datetime, timezone
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from . import storage

META_DIR = "_metadata"
STAGING = "_staging"
LOCK_NAME = "_lock.json"

METADATA_SCHEMA = pa.schema([
    ("key", pa.string()), ("output_key", pa.string()), ("status", pa.string()),
    ("error_message", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
    ("person_pixels", pa.int64()), ("person_fraction", pa.float64()), ("num_people", pa.int32()),
    ("boxes", pa.list_(pa.list_(pa.int32()))),
    ("mask_rle", pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])),
    ("model", pa.string()), ("model_sha256", pa.string()), ("mode", pa.string()),
    ("radius", pa.string()), ("radii", pa.list_(pa.int32())),
    ("source_size", pa.int64()), ("source_etag", pa.string()), ("metadata", pa.string()),
    ("panorama", pa.bool_()), ("seconds_decode", pa.float64()), ("seconds_segment", pa.float64()),
    ("seconds_anonymize", pa.float64()), ("seconds_encode", pa.float64()),
    ("run_id", pa.string()), ("processed_at", pa.timestamp("us", tz="UTC")),
])

Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


def meta_path(root: str) -> str:
    return root.rstrip("/") + "/" + META_DIR


def staging_path(root: str, run_id: str) -> str:
    return f"{meta_path(root)}/{STAGING}/{run_id}"


def shard_name(run_id: str, task_index: int, block_index: int, write_uuid: str = "") -> str:
    tag = f"-{write_uuid}" if write_uuid else ""
    return f"part-{run_id}{tag}-{task_index:06d}-{block_index:06d}.parquet"


def _parquet_files(fs, path: str) -> list[str]:
    try:
        if not fs.exists(path):
            return []
        return sorted(p for p in fs.find(path) if p.endswith(".parquet"))
    except FileNotFoundError:
        return []


def committed_files(fs, root: str) -> list[str]:
    base = meta_path(root)
    try:
        entries = fs.ls(base, detail=False) if fs.exists(base) else []
    except FileNotFoundError:
        return []
    return sorted(p for p in entries if p.rsplit("/", 1)[-1].endswith(".parquet")
                  and not p.rsplit("/", 1)[-1].startswith(("_", ".")))


def _read(fs, path: str, columns: list[str] | None = None) -> pa.Table:
    with fs.open(path, "rb") as f:
        return pq.read_table(io.BytesIO(f.read()), columns=columns)


def write_table(fs, path: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(fs, path, buf.getvalue())


def staged_keys(fs, staging: str) -> set[str]:
    keys: set[str] = set()
    for p in _parquet_files(fs, staging):
        keys.update(_read(fs, p, ["key"]).column("key").to_pylist())
    return keys


def write_error_rows(fs, staging: str, run_id: str, keys: list[str], base: pa.Table, message: str) -> None:
    index = {k: i for i, k in enumerate(base.column("key").to_pylist())}
    now = datetime.now(timezone.utc)
    rows = {f.name: [None] * len(keys) for f in METADATA_SCHEMA}
    rows["key"] = keys
    rows["status"] = ["error"] * len(keys)
    rows["error_message"] = [message] * len(keys)
    rows["source_size"] = [base.column("source_size")[index[k]].as_py() for k in keys]
    rows["source_etag"] = [base.column("source_etag")[index[k]].as_py() for k in keys]
    rows["run_id"] = [run_id] * len(keys)
    rows["processed_at"] = [now] * len(keys)
    table = pa.Table.from_pydict(rows, schema=METADATA_SCHEMA)
    write_table(fs, f"{staging}/{shard_name(run_id, 999999, 0)}", table)


def _move(fs, src: str, dst: str) -> None:
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        import os

        os.replace(src, dst)
    else:
        fs.copy(src, dst)
        fs.rm(src)


def commit(fs, root: str, staging: str, progress: Progress = _quiet) -> int:
    """Move a run's staged shards into ``_metadata/`` and drop the rows they supersede."""
    files = _parquet_files(fs, staging)
    moved = []
    for p in files:
        dst = meta_path(root) + "/" + p.rsplit("/", 1)[-1]
        _move(fs, p, dst)
        moved.append(dst)
    for leftover in (staging, f"{meta_path(root)}/{STAGING}"):
        try:  # the run's folder, then the staging folder itself when no other run uses it
            if fs.exists(leftover) and (leftover == staging or not fs.ls(leftover)):
                fs.rm(leftover, recursive=True)
        except (FileNotFoundError, OSError):
            pass
    compact(fs, root, progress)
    return len(moved)


def compact(fs, root: str, progress: Progress = _quiet) -> int:
    """Keep only the current row (latest processed_at) of each key; rewrite shards in place."""
    files = committed_files(fs, root)
    if not files:
        return 0
    latest: dict[str, tuple] = {}
    per_file: dict[str, pa.Table] = {}
    for p in files:
        t = _read(fs, p, ["key", "processed_at"])
        per_file[p] = t
        for k, ts in zip(t.column("key").to_pylist(), t.column("processed_at").to_pylist()):
            cand = (ts, p)
            if k not in latest or cand > latest[k]:
                latest[k] = cand
    rewritten = 0
    for p, t in per_file.items():
        keep = [latest[k] == (ts, p) for k, ts in zip(t.column("key").to_pylist(), t.column("processed_at").to_pylist())]
        if all(keep):
            continue
        # exact duplicates inside one file: keep the first occurrence only
        seen: set[str] = set()
        for i, k in enumerate(t.column("key").to_pylist()):
            if keep[i]:
                if k in seen:
                    keep[i] = False
                seen.add(k)
        full = _read(fs, p)
        filtered = full.filter(pa.array(keep))
        if filtered.num_rows == 0:
            fs.rm(p)
        else:
            write_table(fs, p, filtered)
        rewritten += 1
    if rewritten:
        progress(f"compacted metadata: {rewritten} shard(s) rewritten to keep one row per key")
    return rewritten


def recover(fs, root: str, progress: Progress = _quiet) -> None:
    """Commit what crashed runs left in staging (readable shards only), then compact."""
    base = f"{meta_path(root)}/{STAGING}"
    try:
        runs = fs.ls(base, detail=False) if fs.exists(base) else []
    except FileNotFoundError:
        runs = []
    for run_dir in runs:
        good = 0
        for p in _parquet_files(fs, run_dir):
            try:
                pq.read_metadata(io.BytesIO(fs.cat_file(p)))
                good += 1
            except Exception:
                fs.rm(p)  # a shard cut off mid-write: its images are redone by this run
        progress(f"recovering {good} metadata shard(s) of an interrupted run ({run_dir.rsplit('/', 1)[-1]})")
        commit(fs, root, run_dir)
    compact(fs, root, progress)


def current_rows(fs, root: str, columns: list[str]) -> pa.Table | None:
    files = committed_files(fs, root)
    if not files:
        return None
    return pa.concat_tables([_read(fs, p, columns) for p in files])


def current_ok(fs, root: str) -> dict[str, tuple[int | None, str | None]]:
    """key -> (source_size, source_etag) of the current ``ok`` rows."""
    t = current_rows(fs, root, ["key", "status", "source_size", "source_etag", "processed_at"])
    if t is None:
        return {}
    latest: dict[str, tuple] = {}
    for k, st, size, etag, ts in zip(*(t.column(c).to_pylist() for c in t.column_names)):
        if k not in latest or ts > latest[k][0]:
            latest[k] = (ts, st, size, etag)
    return {k: (v[2], v[3]) for k, v in latest.items() if v[1] == "ok"}


def run_counts(fs, root: str, run_id: str) -> dict[str, int]:
    t = current_rows(fs, root, ["run_id", "status"])
    counts: dict[str, int] = {}
    if t is None:
        return counts
    for r, s in zip(t.column("run_id").to_pylist(), t.column("status").to_pylist()):
        if r == run_id:
            counts[s] = counts.get(s, 0) + 1
    return counts


# ------------------------------------------------------------------------------ the run lock

class LockHeld(RuntimeError):
    pass


class RunLock:
    """One run at a time per output prefix.

    The lock is an object ``_lock.json`` (owner, start time, last renewal, lease). It is taken
    with a conditional create: ``O_CREAT|O_EXCL`` on local disk, ``If-None-Match: *`` on S3
    (AWS S3 and servers that implement conditional writes). Stores without conditional
    creates fall back to write-then-read-back, which narrows but does not close the race
    between two runs starting in the same instant. A background thread renews it every
    lease/3; a lock whose renewal is older than its lease is taken over.
    """

    def __init__(self, fs, root: str, owner: str, lease: float = 300.0, wait: bool = False,
                 progress: Progress = _quiet, poll: float = 5.0):
        self.fs, self.root, self.owner, self.lease, self.wait = fs, root.rstrip("/"), owner, lease, wait
        self.path = f"{self.root}/{LOCK_NAME}"
        self.progress, self.poll = progress, poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = time.time()

    def _body(self) -> bytes:
        now = time.time()
        return json.dumps({"owner": self.owner, "started": self.started, "renewed": now,
                           "lease_seconds": self.lease}).encode()

    def _create(self) -> bool:
        from fsspec.implementations.local import LocalFileSystem
        import os

        if isinstance(self.fs, LocalFileSystem):
            os.makedirs(self.root, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(self._body())
            return True
        try:
            self.fs.pipe_file(self.path, self._body(), mode="create")
        except (FileExistsError, OSError) as exc:
            if isinstance(exc, FileExistsError) or "PreconditionFailed" in str(exc) or "412" in str(exc):
                return False
            raise
        except TypeError:  # a filesystem without mode="create": write, then read back
            if self.fs.exists(self.path):
                return False
            self.fs.pipe_file(self.path, self._body())
            return self.read().get("owner") == self.owner
        return True

    def read(self) -> dict:
        try:
            return json.loads(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return {}
        except Exception:
            return {"owner": "unreadable lock", "renewed": 0, "started": 0, "lease_seconds": 0}

    def acquire(self) -> None:
        announced = False
        while True:
            if self._create():
                break
            held = self.read()
            if not held:
                continue  # released between our attempt and the read
            age = time.time() - float(held.get("started", 0))
            idle = time.time() - float(held.get("renewed", 0))
            if idle > float(held.get("lease_seconds", self.lease)):
                self.progress(f"taking over an expired run lock of {held.get('owner')} (last renewed {idle:.0f} s ago)")
                try:
                    self.fs.rm(self.path)
                except FileNotFoundError:
                    pass
                continue
            msg = (f"another run holds the lock on this output: owner {held.get('owner')}, "
                   f"started {age:.0f} s ago, renewed {idle:.0f} s ago ({self.path})")
            if not self.wait:
                raise LockHeld(msg + "; use --wait-for-lock to wait for it")
            if not announced:
                self.progress(msg + "; waiting (--wait-for-lock)")
                announced = True
            time.sleep(self.poll)
        self._thread = threading.Thread(target=self._renew, name="fuzzy-people-lock", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                if self.read().get("owner") == self.owner:
                    self.fs.pipe_file(self.path, self._body())
            except Exception as exc:  # keep running; a lost lease shows up as a takeover
                self.progress(f"could not renew the run lock: {type(exc).__name__}")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if self.read().get("owner") == self.owner:
                self.fs.rm(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
