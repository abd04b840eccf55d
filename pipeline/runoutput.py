"""Read a finished run's output prefix: current metadata rows, ``_stats.json``, image bytes.

Shared by ``fuzzy-people report`` and ``fuzzy-people audit``. The layout (written by the
pipeline) is ``OUTPUT/<key>.jpg`` plus ``OUTPUT/_metadata/*.parquet`` (one row per processed
input; when a key has several rows the one with the latest ``processed_at`` is current) and
``OUTPUT/_stats.json``. With ``--output-format parquet`` the JPEG bytes live in the shards'
``image`` column instead of files.
"""

from __future__ import annotations

import collections
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

METADATA_DIR = "_metadata"
STATS_FILE = "_stats.json"
IMAGE_COLUMN = "image"


class RunOutputError(RuntimeError):
    """The output prefix is missing, unreadable or not a fuzzy-people output."""


def join(url: str, *parts: str) -> str:
    """``url`` + ``/part``... without doubling slashes (works for local paths and s3://)."""
    out = url.rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out


def relative_key(url: str | None, prefix: str) -> str:
    """``url`` relative to ``prefix`` when it lies under it, else ``url`` unchanged."""
    if not url:
        return ""
    base = prefix.rstrip("/") + "/"
    for candidate in (url, url.removeprefix("file://")):
        if candidate.startswith(base):
            return candidate[len(base):]
    return url


def filesystem(url: str, storage_options: dict | None = None):
    """``(fsspec filesystem, path)`` for ``url``."""
    import fsspec

    return fsspec.core.url_to_fs(url, **(storage_options or {}))


class _Filesystems:
    """fsspec filesystems by protocol, so reading many objects reuses one client."""

    def __init__(self, storage_options: dict | None):
        self.storage_options = storage_options or {}
        self._cache: dict[str, Any] = {}

    def read(self, url: str) -> bytes:
        proto = url.split("://", 1)[0] if "://" in url else "file"
        fs = self._cache.get(proto)
        if fs is None:
            fs, path = filesystem(url, self.storage_options)
            self._cache[proto] = fs
        else:
            path = fs._strip_protocol(url)
        with fs.open(path, "rb") as f:
            return f.read()


def read_bytes(url: str, storage_options: dict | None = None) -> bytes:
    return _Filesystems(storage_options).read(url)


def write_bytes(url: str, data: bytes, storage_options: dict | None = None) -> None:
    fs, path = filesystem(url, storage_options)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)


def read_stats(output_url: str, storage_options: dict | None = None) -> dict | None:
    """The run's ``_stats.json`` as a dict, or None when the run wrote none."""
    fs, path = filesystem(join(output_url, STATS_FILE), storage_options)
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as f:
        data = f.read()
    try:
        value = json.loads(data)
    except json.JSONDecodeError as exc:
        raise RunOutputError(f"{join(output_url, STATS_FILE)}: not valid JSON ({exc.msg})") from None
    return value if isinstance(value, dict) else None


def committed_shards(fs, path: str) -> list[str]:
    """The Parquet shards directly under the metadata dir ``path``; names starting with ``_``
    or ``.`` (a running or crashed run's ``_staging/``, temporary files) are not committed."""
    try:
        entries = fs.ls(path, detail=False) if fs.isdir(path) else []
    except FileNotFoundError:
        return []
    names = (p.rstrip("/").rsplit("/", 1)[-1] for p in entries)
    return sorted(f"{path.rstrip('/')}/{n}" for n in names if n.endswith(".parquet") and not n.startswith(("_", ".")))


def _dataset(output_url: str, storage_options: dict | None):
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs
    from fsspec.implementations.local import LocalFileSystem

    url = join(output_url, METADATA_DIR)
    fs, path = filesystem(url, storage_options)
    try:
        shards = committed_shards(fs, path)
    except Exception as exc:  # noqa: BLE001 - credentials, network: say where
        raise RunOutputError(f"cannot list {url}: {exc}") from exc
    if not shards:
        raise RunOutputError(f"no Parquet metadata under {url}: is {output_url} a fuzzy-people output?")
    if isinstance(fs, LocalFileSystem):
        pa_fs = pafs.LocalFileSystem()
    else:
        pa_fs = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    return ds.dataset(shards, format="parquet", filesystem=pa_fs)


def _timestamps(column) -> list[int | None]:
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_timestamp(column.type):
        column = pc.cast(column, pa.int64())
    return column.to_pylist()


def current_indices(keys: list[str], stamps: list[int | None]) -> list[int]:
    """Indices of the current row per key: latest ``processed_at`` (null = oldest; a tie goes
    to the later row). Returned in row order."""
    best: dict[str, tuple[float, int]] = {}
    for i, (k, t) in enumerate(zip(keys, stamps)):
        stamp = float("-inf") if t is None else t
        prev = best.get(k)
        if prev is None or stamp >= prev[0]:
            best[k] = (stamp, i)
    return sorted(i for _, i in best.values())


def read_current(output_url: str, storage_options: dict | None = None, columns: list[str] | None = None):
    """The current metadata rows as a pyarrow Table (never the ``image`` column), plus a
    ``_stamp`` int64 column (``processed_at`` in its unit) used to find a row's image bytes.
    Also returns whether the shards hold an ``image`` column: ``(table, has_image_column)``."""
    import pyarrow as pa

    dataset = _dataset(output_url, storage_options)
    names = dataset.schema.names
    for required in ("key", "status"):
        if required not in names:
            raise RunOutputError(f"{join(output_url, METADATA_DIR)}: no '{required}' column")
    wanted = [c for c in (columns or names) if c in names and c != IMAGE_COLUMN]
    for extra in ("key", "processed_at"):
        if extra in names and extra not in wanted:
            wanted.append(extra)
    table = dataset.to_table(columns=wanted)
    stamps = _timestamps(table["processed_at"]) if "processed_at" in names else [None] * table.num_rows
    keep = current_indices(table["key"].to_pylist(), stamps)
    table = table.take(pa.array(keep, type=pa.int64()))
    table = table.append_column("_stamp", pa.array([stamps[i] for i in keep], type=pa.int64()))
    return table, IMAGE_COLUMN in names


def _windowed(fn: Callable[[T], R], items: Iterable[T], workers: int = 8) -> Iterator[tuple[T, R | None, Exception | None]]:
    """``(item, fn(item), None)`` or ``(item, None, error)`` in order, at most ``2*workers``
    calls in flight (objects are read ahead without holding the whole run in memory)."""
    def call(item):
        try:
            return fn(item), None
        except Exception as exc:  # noqa: BLE001 - reported per item
            return None, exc

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append((item, pool.submit(call, item)))
            if len(pending) >= 2 * workers:
                it, fut = pending.popleft()
                yield (it, *fut.result())
        while pending:
            it, fut = pending.popleft()
            yield (it, *fut.result())


def iter_urls(urls: Iterable[T], storage_options: dict | None, url_of: Callable[[T], str] = lambda u: u,
              workers: int = 8) -> Iterator[tuple[T, bytes | None, Exception | None]]:
    """Read many objects with read-ahead: yields ``(item, bytes, None)`` or ``(item, None, error)``."""
    fss = _Filesystems(storage_options)
    return _windowed(lambda item: fss.read(url_of(item)), urls, workers)


def iter_output_images(output_url: str, table, has_image_column: bool, indices: Iterable[int],
                       storage_options: dict | None = None) -> Iterator[tuple[int, bytes | None, Exception | None]]:
    """The anonymized JPEG bytes of rows ``indices`` of ``table`` (from :func:`read_current`):
    yields ``(index, bytes, None)`` or ``(index, None, error)``. Rows whose bytes are in the
    ``image`` column come from one streaming scan of the shards (in scan order); the others are
    read from ``output_key``."""
    indices = list(indices)
    keys = table["key"].to_pylist()
    stamps = table["_stamp"].to_pylist()
    out_keys = table["output_key"].to_pylist() if "output_key" in table.column_names else [None] * len(keys)
    from_files = indices
    if has_image_column:
        wanted = {(keys[i], stamps[i]): i for i in indices}
        found: set[int] = set()
        dataset = _dataset(output_url, storage_options)
        cols = ["key", IMAGE_COLUMN] + (["processed_at"] if "processed_at" in dataset.schema.names else [])
        for batch in dataset.to_batches(columns=cols, batch_size=64):
            bkeys = batch.column(batch.schema.get_field_index("key")).to_pylist()
            bstamps = (_timestamps(batch.column(batch.schema.get_field_index("processed_at")))
                       if "processed_at" in cols else [None] * len(bkeys))
            images = batch.column(batch.schema.get_field_index(IMAGE_COLUMN))
            for j, (k, t) in enumerate(zip(bkeys, bstamps)):
                i = wanted.get((k, t))
                if i is None or i in found:
                    continue
                data = images[j].as_py()
                if data:
                    found.add(i)
                    yield i, data, None
        from_files = [i for i in indices if i not in found]
    with_key = [i for i in from_files if out_keys[i]]
    for i in from_files:
        if not out_keys[i]:
            yield i, None, RunOutputError(f"{keys[i]}: no output_key and no image bytes")
    yield from iter_urls(with_key, storage_options, url_of=lambda i: out_keys[i])
