"""Object storage: filesystems, input listing and manifests, output keys, atomic writes.

Every URL goes through fsspec with an explicit filesystem object (s3fs for ``s3://``, which
honours ``AWS_ENDPOINT_URL`` and the other AWS_* variables through botocore). Storage options
may hold credentials: they are never logged and never part of an error message.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa


class StorageError(RuntimeError):
    pass


def filesystem(url: str, options: dict[str, Any] | None = None):
    """(fsspec filesystem, path without protocol) for a URL or local path."""
    import fsspec

    opts = dict(options or {})
    protocol = split_protocol(url)[0]
    if protocol in ("s3", "s3a"):
        endpoint = opts.pop("endpoint_url", None) or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["endpoint_url"] = endpoint
    elif protocol == "file":
        opts = {k: v for k, v in opts.items() if k in ("auto_mkdir",)}
    try:
        fs, path = fsspec.core.url_to_fs(url, **opts)
    except (ImportError, ValueError, OSError) as exc:
        raise StorageError(f"cannot open {redact_url(url)}: {type(exc).__name__}: {exc}") from None
    return fs, path


def split_protocol(url: str) -> tuple[str, str]:
    if "://" in url:
        proto, rest = url.split("://", 1)
        return proto.lower(), rest
    return "file", url


def is_local(url: str) -> bool:
    return split_protocol(url)[0] in ("file", "local")


def redact_url(url: str) -> str:
    """Drop any user:password@ part of a URL before it is shown."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        return url.replace(parts.netloc, parts.hostname or "", 1)
    return url


def join_url(prefix: str, rel: str) -> str:
    return prefix.rstrip("/") + "/" + rel.lstrip("/")


def normalize_prefix(url: str) -> str:
    """Canonical form used for overlap checks: protocol + absolute path, no trailing slash."""
    proto, rest = split_protocol(url)
    if proto in ("file", "local"):
        return "file://" + os.path.realpath(os.path.expanduser(rest))
    return f"{proto}://{rest.rstrip('/')}"


def check_no_overlap(input_url: str, output_url: str) -> None:
    """Refuse an output prefix that equals, contains or is inside the input prefix."""
    a, b = normalize_prefix(input_url), normalize_prefix(output_url)
    if a == b or b.startswith(a + "/") or a.startswith(b + "/"):
        raise StorageError(
            f"--output {output_url} overlaps --input {input_url}: the job would read its own output; "
            "choose an output prefix outside the input prefix"
        )


# ------------------------------------------------------------------------------ inputs

@dataclass(frozen=True)
class InputItem:
    key: str  # full input URL
    rel: str  # path relative to the input prefix ('' when invalid)
    size: int | None
    etag: str | None
    error: str | None = None


def _etag(info: dict) -> str | None:
    for k in ("ETag", "etag", "e_tag"):
        if info.get(k):
            return str(info[k]).strip('"')
    m = info.get("mtime") or info.get("LastModified") or info.get("created")
    if m is not None:
        return f"mtime:{m.timestamp() if hasattr(m, 'timestamp') else m}"
    return None


def list_inputs(input_url: str, options: dict[str, Any], extensions: tuple[str, ...],
                exclude_prefix: str | None = None) -> list[InputItem]:
    """Recursive listing under the input prefix, filtered by extension, sorted by key."""
    fs, root = filesystem(input_url, options)
    proto = split_protocol(input_url)[0]
    root = root.rstrip("/")
    try:
        if not fs.exists(root):
            raise FileNotFoundError(root)
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        raise StorageError(f"--input {input_url}: no such prefix") from None
    except Exception as exc:
        raise StorageError(f"--input {input_url}: cannot list: {type(exc).__name__}: {exc}") from None
    exts = {"." + e.lower().lstrip(".") for e in extensions}
    excl = normalize_prefix(exclude_prefix) if exclude_prefix else None
    items = []
    for path, info in sorted(found.items()):
        if info.get("type") == "directory":
            continue
        if os.path.splitext(path)[1].lower() not in exts:
            continue
        rel = path[len(root):].lstrip("/")
        key = _to_url(proto, path, input_url)
        if excl and (normalize_prefix(key) + "/").startswith(excl + "/"):
            continue
        items.append(InputItem(key, rel, info.get("size"), _etag(info)))
    return items


def _to_url(proto: str, path: str, like: str) -> str:
    if proto in ("file", "local"):
        return path if "://" not in like else "file://" + path
    return f"{proto}://{path}"


def read_manifest(manifest: str, column: str, options: dict[str, Any], input_url: str | None) -> list[InputItem]:
    """Keys from a manifest: text (one key per line), CSV or Parquet with a key column.

    S3 Inventory CSVs have no header (bucket, key, ...): they are recognised and the bucket is
    joined with the (URL-encoded) key. Keys may be full URLs or relative to ``--input``.
    Keys with ``..`` segments or absolute paths (when relative) are rejected per row.
    """
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    from urllib.parse import unquote_plus

    fs, path = filesystem(manifest, options)
    try:
        with fs.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise StorageError(f"--manifest {manifest}: no such file") from None
    low = path.lower()
    keys: list[str]
    if low.endswith(".parquet"):
        table = pq.read_table(pa.BufferReader(data))
        if column not in table.column_names:
            raise StorageError(f"--manifest-column: {column!r} not in {manifest} (columns: {', '.join(table.column_names)})")
        keys = [str(k) for k in table.column(column).to_pylist() if k is not None]
        if "bucket" in table.column_names and column == "key":
            keys = [f"s3://{b}/{k}" for b, k in zip(table.column("bucket").to_pylist(), keys)]
    elif low.endswith(".csv") or low.endswith(".csv.gz"):
        if low.endswith(".gz"):
            import gzip

            data = gzip.decompress(data)
        text = data.decode("utf-8")
        first = text.splitlines()[0] if text else ""
        header = [h.strip().strip('"') for h in first.split(",")]
        header_like = bool(header) and all(h and "/" not in h and "." not in h for h in header)
        if column in header:
            table = pacsv.read_csv(pa.BufferReader(data), convert_options=pacsv.ConvertOptions(column_types={column: pa.string()}))
            keys = [str(k) for k in table.column(column).to_pylist() if k]
        elif header_like:
            raise StorageError(f"--manifest-column: {column!r} not in {manifest} (columns: {', '.join(header)})")
        else:  # S3 Inventory: no header, bucket then URL-encoded key
            table = pacsv.read_csv(pa.BufferReader(data), read_options=pacsv.ReadOptions(autogenerate_column_names=True),
                                   convert_options=pacsv.ConvertOptions(column_types={"f0": pa.string(), "f1": pa.string()}))
            keys = [f"s3://{b}/{unquote_plus(k)}" for b, k in zip(table.column("f0").to_pylist(), table.column("f1").to_pylist())]
    else:
        keys = [line.strip() for line in data.decode("utf-8").splitlines() if line.strip() and not line.startswith("#")]
    return [manifest_item(k, input_url) for k in keys]


def manifest_item(key: str, input_url: str | None) -> InputItem:
    if "://" in key:
        full = key
        if input_url and normalize_prefix(key).startswith(normalize_prefix(input_url) + "/"):
            rel = normalize_prefix(key)[len(normalize_prefix(input_url)) + 1:]
        else:
            rel = split_protocol(key)[1].split("/", 1)[1] if split_protocol(key)[0] not in ("file", "local") and "/" in split_protocol(key)[1] else key.split("://", 1)[1].lstrip("/")
    else:
        if key.startswith("/") and not input_url:
            full, rel = key, key.lstrip("/")
        elif key.startswith("/"):
            return InputItem(key, "", None, None, error=f"absolute key {key!r} in a manifest with --input: keys must be relative to --input")
        elif not input_url:
            full, rel = os.path.abspath(key), key
        else:
            full, rel = join_url(input_url, key), key
    if any(seg == ".." for seg in rel.replace("\\", "/").split("/")):
        return InputItem(full, "", None, None, error=f"key {key!r} has a '..' segment: refused (it could escape the output prefix)")
    return InputItem(full, rel.lstrip("/"), None, None)


def stat_items(items: list[InputItem], options: dict[str, Any]) -> list[InputItem]:
    """Fill size/etag for manifest items (one HEAD per key; errors become row errors)."""
    out = []
    for it in items:
        if it.error or it.size is not None:
            out.append(it)
            continue
        try:
            fs, path = filesystem(it.key, options)
            info = fs.info(path)
            out.append(InputItem(it.key, it.rel, info.get("size"), _etag(info)))
        except FileNotFoundError:
            out.append(InputItem(it.key, it.rel, None, None, error="input object not found"))
        except Exception as exc:
            out.append(InputItem(it.key, it.rel, None, None, error=f"cannot stat input: {type(exc).__name__}: {exc}"))
    return out


# ------------------------------------------------------------------------------ outputs

def output_rel(rel: str, taken: set[str] | None = None) -> str:
    """Relative output key: the input's relative key with a .jpg extension.

    ``a/b.png`` -> ``a/b.jpg``. When two inputs would collide (``x.png`` and ``x.jpg``), the
    later one in key order keeps its extension: ``x.png.jpg``. Never escapes the prefix.
    """
    rel = rel.replace("\\", "/").lstrip("/")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise StorageError(f"invalid relative key {rel!r}")
    stem, ext = posixpath.splitext(parts[-1])
    name = stem + ".jpg" if ext.lower() in (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff") else parts[-1] + ".jpg"
    candidate = "/".join(parts[:-1] + [name])
    if taken is not None:
        n = 1
        while candidate in taken:  # x.png after x.jpg -> x.png.jpg, then x.png-2.jpg, ...
            suffix = "" if n == 1 else f"-{n}"
            candidate = "/".join(parts[:-1] + [parts[-1] + suffix + ".jpg"])
            n += 1
        taken.add(candidate)
    return candidate


def write_bytes(fs, path: str, data: bytes) -> None:
    """Write so that no partial object is ever visible under its final name.

    Local disk: a hidden temporary name in the same directory, then an atomic rename.
    Object stores: a PUT (or a multipart upload) only becomes visible when complete.
    """
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        atomic_write(path, data)
    else:
        fs.pipe_file(path, data)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Local file written under a hidden temporary name in its directory, then renamed."""
    d, name = os.path.split(os.fspath(path))
    os.makedirs(d or ".", exist_ok=True)
    tmp = os.path.join(d, f".{name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
