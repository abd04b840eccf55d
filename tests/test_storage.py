"""pipeline/storage.py: output keys, prefix overlap, manifests, listings (local and a real S3
server on loopback), atomic writes."""

from __future__ import annotations

import gzip
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.storage import (
    InputItem, StorageError, check_no_overlap, filesystem, list_inputs, manifest_item, output_rel,
    read_manifest, redact_url, stat_items, write_bytes,
)

EXTS = ("jpg", "jpeg", "png", "webp", "tif", "tiff")
ODD_KEYS = [  # keys a person's photo library really has
    "a.jpg",
    "sub dir/b c.JPG",
    "ünïcødé/東京 駅.png",
    "odd/100%+plus#hash.jpeg",
    "odd/x%20y.jpg",  # a literal %20, not a space
    "deep/er/still/UPPER.TIFF",
]


# ------------------------------------------------------------------------------ output keys

@pytest.mark.parametrize("rel,expected", [
    ("a/b.png", "a/b.jpg"),
    ("a/b.JPEG", "a/b.jpg"),
    ("b.webp", "b.jpg"),
    ("b.tif", "b.jpg"),
    ("b.jpg", "b.jpg"),
    ("dir/b.gif", "dir/b.gif.jpg"),  # unknown extension kept, .jpg appended
    ("noext", "noext.jpg"),
    ("/leading/slash.png", "leading/slash.jpg"),
    ("a\\windows\\path.png", "a/windows/path.jpg"),
    ("a/./b//c.png", "a/b/c.jpg"),
    ("sub dir/ünï 東.png", "sub dir/ünï 東.jpg"),
])
def test_output_rel_maps_to_jpg(rel, expected):
    assert output_rel(rel) == expected


@pytest.mark.parametrize("rel", ["../x.png", "a/../../x.png", "a/..", "..", "", "/", "./", "a\\..\\..\\x.jpg"])
def test_output_rel_refuses_keys_that_escape_or_are_empty(rel):
    with pytest.raises(StorageError, match="invalid relative key"):
        output_rel(rel)


def test_output_rel_collision_keeps_the_extension_of_the_later_key():
    taken: set[str] = set()
    assert output_rel("x.jpg", taken) == "x.jpg"
    assert output_rel("x.png", taken) == "x.png.jpg"
    assert output_rel("x.webp", taken) == "x.webp.jpg"
    assert output_rel("other/x.png", taken) == "other/x.jpg"  # another folder: no collision
    assert taken == {"x.jpg", "x.png.jpg", "x.webp.jpg", "other/x.jpg"}


names = st.lists(st.sampled_from(["x.jpg", "x.png", "x.png.png", "x.png.jpg", "x.jpeg", "x.JPG", "x", "x.jpg.jpg",
                                  "d/x.png", "d/x.jpg"]), min_size=1, max_size=8, unique=True)


@settings(max_examples=200, deadline=None)
@given(names)
def test_output_rel_never_maps_two_sorted_keys_to_one_output(keys):
    taken: set[str] = set()
    outs = [output_rel(k, taken) for k in sorted(keys)]  # list_inputs hands them over sorted
    assert len(set(outs)) == len(outs), list(zip(sorted(keys), outs))


def test_output_rel_never_maps_two_manifest_keys_to_one_output():
    taken: set[str] = set()
    outs = [output_rel(k, taken) for k in ["x.png.png", "x.jpg", "x.png"]]  # manifest order
    assert len(set(outs)) == 3, outs


# ------------------------------------------------------------------------------ overlap

@pytest.mark.parametrize("inp,out", [
    ("s3://b/in", "s3://b/in"),
    ("s3://b/in/", "s3://b/in"),
    ("s3://b/in", "s3://b/in//"),
    ("s3://b/in", "s3://b/in/out"),        # output inside input
    ("s3://b/in/sub", "s3://b/in"),        # output contains input
    ("s3://b", "s3://b/anything"),         # bucket root
    ("S3://b/in", "s3://b/in/x"),          # protocol case
])
def test_overlapping_prefixes_are_refused(inp, out):
    with pytest.raises(StorageError, match="overlaps --input"):
        check_no_overlap(inp, out)


@pytest.mark.parametrize("inp,out", [
    ("s3://b/in", "s3://b/input"),         # sibling sharing a string prefix
    ("s3://b/input", "s3://b/in"),
    ("s3://b/in", "s3://b/out"),
    ("s3://b/in", "s3://c/in"),            # another bucket
    ("s3://b/in", "gs://b/in/out"),        # another store
])
def test_disjoint_prefixes_are_accepted(inp, out):
    check_no_overlap(inp, out)


def test_local_overlap_relative_absolute_and_symlinked(tmp_path, monkeypatch):
    (tmp_path / "in").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "in")
    monkeypatch.chdir(tmp_path)
    refused = [
        ("in", str(tmp_path / "in")),
        ("in/", f"file://{tmp_path}/in/out"),
        (f"file://{tmp_path}/in", "in/out/"),
        ("./in/sub", "in"),
        ("in", "link/out"),  # the same directory under another name
        ("in", "in/../in/out"),
    ]
    for inp, out in refused:
        with pytest.raises(StorageError, match="overlaps"):
            check_no_overlap(inp, out)
    for inp, out in [("in", "input"), ("in", str(tmp_path / "out")), ("link", "linked")]:
        check_no_overlap(inp, out)


# ------------------------------------------------------------------------------ manifests

def write(path: Path, data: bytes | str) -> str:
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return str(path)


def ok_keys(items: list[InputItem]) -> list[tuple[str, str]]:
    return [(i.key, i.rel) for i in items if not i.error]


def test_text_manifest_relative_and_full_keys(tmp_path):
    m = write(tmp_path / "keys.txt",
              "a.jpg\n# a comment\n\n  sub dir/b.png  \ns3://bkt/in/c.jpg\ns3://other/x/y.jpg\n100%+#.jpg\n")
    items = read_manifest(m, "key", {}, "s3://bkt/in")
    assert ok_keys(items) == [
        ("s3://bkt/in/a.jpg", "a.jpg"),
        ("s3://bkt/in/sub dir/b.png", "sub dir/b.png"),
        ("s3://bkt/in/c.jpg", "c.jpg"),  # a full URL under --input: relative to it
        ("s3://other/x/y.jpg", "x/y.jpg"),
        ("s3://bkt/in/100%+#.jpg", "100%+#.jpg"),  # text manifests are not URL-decoded
    ]
    assert all(i.size is None and i.etag is None for i in items)


def test_csv_manifest_with_a_key_column(tmp_path):
    m = write(tmp_path / "m.csv",
              'id,key,size\n1,photos/a.jpg,10\n2,"photos/with, comma.jpg",20\n3,12345,30\n4,,40\n')
    items = read_manifest(m, "key", {}, "s3://bkt/in")
    assert ok_keys(items) == [
        ("s3://bkt/in/photos/a.jpg", "photos/a.jpg"),
        ("s3://bkt/in/photos/with, comma.jpg", "photos/with, comma.jpg"),
        ("s3://bkt/in/12345", "12345"),  # a numeric-looking key stays text
    ]
    # another column name, gzipped
    gz = write(tmp_path / "m.csv.gz", gzip.compress(b"path\nx/y.png\n"))
    assert ok_keys(read_manifest(gz, "path", {}, "s3://bkt/in")) == [("s3://bkt/in/x/y.png", "x/y.png")]


def test_headerless_s3_inventory_csv_is_url_decoded(tmp_path):
    m = write(tmp_path / "inventory.csv",
              '"my-bucket","photos/my%20photo.jpg","123","2024-01-01T00:00:00.000Z"\n'
              '"my-bucket","photos/a+b%2Bc.jpg","1","2024-01-01T00:00:00.000Z"\n'
              '"my-bucket","photos/%E6%9D%B1%E4%BA%AC.png","1","2024-01-01T00:00:00.000Z"\n'
              '"my-bucket","photos/100%25.jpg","1","2024-01-01T00:00:00.000Z"\n')
    items = read_manifest(m, "key", {}, None)
    assert ok_keys(items) == [
        ("s3://my-bucket/photos/my photo.jpg", "photos/my photo.jpg"),
        ("s3://my-bucket/photos/a b+c.jpg", "photos/a b+c.jpg"),
        ("s3://my-bucket/photos/東京.png", "photos/東京.png"),
        ("s3://my-bucket/photos/100%.jpg", "photos/100%.jpg"),
    ]
    # with --input the keys are relative to it
    under = read_manifest(m, "key", {}, "s3://my-bucket/photos")
    assert [i.rel for i in under] == ["my photo.jpg", "a b+c.jpg", "東京.png", "100%.jpg"]


def test_parquet_manifests(tmp_path):
    plain = tmp_path / "keys.parquet"
    pq.write_table(pa.table({"key": ["a.jpg", None, "sub/b.png"], "n": [1, 2, 3]}), plain)
    assert ok_keys(read_manifest(str(plain), "key", {}, "s3://bkt/in")) == [
        ("s3://bkt/in/a.jpg", "a.jpg"), ("s3://bkt/in/sub/b.png", "sub/b.png")]
    inventory = tmp_path / "inventory.parquet"  # S3 Inventory in Parquet: bucket + key, not URL-encoded
    pq.write_table(pa.table({"bucket": ["b1", "b1"], "key": ["p/x y.jpg", "p/100%20.jpg"], "size": [1, 2]}), inventory)
    assert ok_keys(read_manifest(str(inventory), "key", {}, None)) == [
        ("s3://b1/p/x y.jpg", "p/x y.jpg"), ("s3://b1/p/100%20.jpg", "p/100%20.jpg")]
    with pytest.raises(StorageError, match=r"'path' not in .*columns: key, n"):
        read_manifest(str(plain), "path", {}, None)


def test_missing_manifest_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError, match="no such file"):
        read_manifest(str(tmp_path / "nope.txt"), "key", {}, None)


@pytest.mark.parametrize("key,input_url,fragment", [
    ("../up.jpg", "s3://bkt/in", "'..' segment"),
    ("a/../../up.jpg", "s3://bkt/in", "'..' segment"),
    ("a\\..\\..\\up.jpg", "s3://bkt/in", "'..' segment"),
    ("s3://bkt/in/../secret/x.jpg", "s3://bkt/in", "'..' segment"),
    ("s3://bkt/../x.jpg", None, "'..' segment"),
    ("../up.jpg", None, "'..' segment"),
    ("/etc/passwd.jpg", "s3://bkt/in", "absolute key"),
    ("/abs/x.jpg", "/data/in", "absolute key"),
])
def test_escaping_manifest_keys_become_row_errors(key, input_url, fragment):
    item = manifest_item(key, input_url)
    assert item.error and fragment in item.error
    assert item.rel == ""


def test_row_errors_do_not_stop_the_manifest(tmp_path):
    m = write(tmp_path / "m.txt", "good.jpg\n../bad.jpg\n/abs.jpg\nalso/good.png\n")
    items = read_manifest(m, "key", {}, "s3://bkt/in")
    assert [bool(i.error) for i in items] == [False, True, True, False]
    # absolute keys are fine without --input (local paths)
    alone = manifest_item("/data/photos/x.jpg", None)
    assert alone.error is None and alone.key == "/data/photos/x.jpg" and alone.rel == "data/photos/x.jpg"


# ------------------------------------------------------------------------------ local listing

def make_tree(root: Path) -> None:
    files = ["a.jpg", "B.JPG", "c.Png", "d.jpeg", "e.txt", "f.gif", "sub/g.webp", "sub/deeper/h.TIF",
             "sub/.i.jpg.1234abcd.part", "sp ace/ünï 東.jpg"]
    for rel in files:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rel.encode())
    (root / "dir.jpg").mkdir()  # a directory with an image-like name
    (root / "dir.jpg" / "inside.png").write_bytes(b"x")


def test_list_inputs_local_filters_case_insensitively_and_sorts(tmp_path):
    root = tmp_path / "in"
    make_tree(root)
    items = list_inputs(str(root), {}, ("JPG", ".jpeg", "png", "webp", "tif"))
    rels = [i.rel for i in items]
    assert rels == ["B.JPG", "a.jpg", "c.Png", "d.jpeg", "dir.jpg/inside.png", "sp ace/ünï 東.jpg",
                    "sub/deeper/h.TIF", "sub/g.webp"]
    assert [i.key for i in items] == sorted(i.key for i in items)
    for i in items:
        assert i.key == str(root / i.rel)
        assert i.size == len(i.rel.encode()) or i.rel == "dir.jpg/inside.png"
        assert i.etag and i.error is None
    # a file:// input gives file:// keys
    assert [i.key for i in list_inputs(f"file://{root}", {}, ("jpg",))][:1] == [f"file://{root}/B.JPG"]


def test_list_inputs_skips_the_output_prefix_but_not_its_siblings(tmp_path):
    root = tmp_path / "in"
    for rel in ("a.jpg", "out/x.jpg", "out/deep/y.jpg", "outside/z.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"1")
    items = list_inputs(str(root), {}, ("jpg",), exclude_prefix=str(root / "out") + "/")
    assert [i.rel for i in items] == ["a.jpg", "outside/z.jpg"]


def test_list_inputs_etag_changes_when_a_file_changes(tmp_path):
    f = tmp_path / "in" / "a.jpg"
    f.parent.mkdir()
    f.write_bytes(b"one")
    before = list_inputs(str(tmp_path / "in"), {}, ("jpg",))[0]
    os.utime(f, (1_000_000_000, 1_000_000_000))
    after = list_inputs(str(tmp_path / "in"), {}, ("jpg",))[0]
    assert before.etag != after.etag


def test_list_inputs_missing_local_prefix_is_an_error(tmp_path):
    with pytest.raises(StorageError, match="no such prefix"):
        list_inputs(str(tmp_path / "typo"), {}, ("jpg",))


# ------------------------------------------------------------------------------ atomic writes

def test_write_bytes_creates_folders_and_leaves_no_temporary_file(tmp_path):
    fs, path = filesystem(str(tmp_path / "out" / "a" / "b.jpg"))
    write_bytes(fs, path, b"new bytes")
    assert (tmp_path / "out" / "a" / "b.jpg").read_bytes() == b"new bytes"
    assert [p.name for p in (tmp_path / "out" / "a").iterdir()] == ["b.jpg"]


def test_write_bytes_replaces_atomically(tmp_path):
    target = tmp_path / "x.jpg"
    target.write_bytes(b"old content")
    fs, path = filesystem(str(target))
    with open(target, "rb") as reader:  # a reader that opened the old file ...
        write_bytes(fs, path, b"new content")
        assert reader.read() == b"old content"  # ... keeps a whole old file, never a mix
    assert target.read_bytes() == b"new content"
    assert os.listdir(tmp_path) == ["x.jpg"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "x.jpg"
    target.write_bytes(b"old content")
    fs, path = filesystem(str(target))
    with pytest.raises(TypeError):
        write_bytes(fs, path, object())  # the write itself fails
    assert target.read_bytes() == b"old content"
    assert os.listdir(tmp_path) == ["x.jpg"]


# ------------------------------------------------------------------------------ a real S3 server

@pytest.fixture
def bucket(s3fs_client) -> str:
    name = f"storage-{uuid.uuid4().hex[:12]}"
    s3fs_client.mkdir(name)
    return name


def test_list_inputs_on_s3_with_odd_keys(s3_server, s3fs_client, bucket):
    for rel in ODD_KEYS + ["notes.txt"]:
        s3fs_client.pipe_file(f"{bucket}/in/{rel}", rel.encode())
    s3fs_client.pipe_file(f"{bucket}/input-sibling/z.jpg", b"z")
    s3fs_client.pipe_file(f"{bucket}/in/out/skip.jpg", b"s")
    opts = {"endpoint_url": s3_server}
    items = list_inputs(f"s3://{bucket}/in", opts, EXTS, exclude_prefix=f"s3://{bucket}/in/out")
    assert [i.rel for i in items] == sorted(ODD_KEYS)
    for i in items:
        assert i.key == f"s3://{bucket}/in/{i.rel}"
        assert i.size == len(i.rel.encode()) and i.etag and '"' not in i.etag
        fs, path = filesystem(i.key, opts)  # the listed key reads back the right object
        assert fs.cat_file(path) == i.rel.encode()
    trailing = list_inputs(f"s3://{bucket}/in/", opts, EXTS)
    assert [i.rel for i in trailing] == sorted(ODD_KEYS + ["out/skip.jpg"])


def test_stat_items_on_s3_fills_size_and_etag_and_reports_missing(s3_server, s3fs_client, bucket):
    for rel in ODD_KEYS:
        s3fs_client.pipe_file(f"{bucket}/in/{rel}", rel.encode() * 3)
    opts = {"endpoint_url": s3_server}
    listed = {i.rel: i for i in list_inputs(f"s3://{bucket}/in", opts, EXTS)}
    items = [manifest_item(rel, f"s3://{bucket}/in") for rel in ODD_KEYS]
    items += [manifest_item("missing.jpg", f"s3://{bucket}/in"), manifest_item("../escape.jpg", f"s3://{bucket}/in"),
              InputItem(f"s3://{bucket}/in/known.jpg", "known.jpg", 7, "etag-known")]
    out = stat_items(items, opts)
    assert len(out) == len(items)
    for item in out[:len(ODD_KEYS)]:
        assert item.error is None, item
        assert item.size == 3 * len(item.rel.encode())
        assert (item.size, item.etag) == (listed[item.rel].size, listed[item.rel].etag)
    missing, escape, known = out[len(ODD_KEYS):]
    assert missing.error == "input object not found" and missing.size is None
    assert escape == items[-2]  # a row error is passed through untouched, no request
    assert known == items[-1]   # already stated: not asked again


def test_manifest_on_s3_with_inventory_keys(s3_server, s3fs_client, bucket):
    from urllib.parse import quote_plus

    for rel in ODD_KEYS:
        s3fs_client.pipe_file(f"{bucket}/photos/{rel}", b"img")
    lines = "".join(f'"{bucket}","{quote_plus("photos/" + rel, safe="/")}","3"\n' for rel in ODD_KEYS)
    s3fs_client.pipe_file(f"{bucket}/manifests/inventory.csv", lines.encode())
    opts = {"endpoint_url": s3_server}
    items = stat_items(read_manifest(f"s3://{bucket}/manifests/inventory.csv", "key", opts, f"s3://{bucket}/photos"),
                       opts)
    assert [i.rel for i in items] == ODD_KEYS
    assert all(i.error is None and i.size == 3 for i in items), items


def test_write_bytes_on_s3(s3_server, s3fs_client, bucket):
    fs, path = filesystem(f"s3://{bucket}/out/sub dir/ü #1.jpg", {"endpoint_url": s3_server})
    write_bytes(fs, path, b"jpeg bytes")
    assert s3fs_client.cat_file(f"{bucket}/out/sub dir/ü #1.jpg") == b"jpeg bytes"


def test_s3_errors_never_show_the_secret(s3_server):
    opts = {"endpoint_url": s3_server, "key": "AKIDEXAMPLEKEY", "secret": "SUPER-SECRET-VALUE"}
    with pytest.raises(StorageError) as err:
        list_inputs(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/in", opts, EXTS)
    assert "SUPER-SECRET-VALUE" not in str(err.value)
    bad = stat_items([manifest_item(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x.jpg", None)], opts)
    assert bad[0].error and "SUPER-SECRET-VALUE" not in bad[0].error


def test_redact_url():
    assert redact_url("https://alice:hunter2@example.com/in") == "https://example.com/in"
    assert redact_url("s3://bucket/key with user:pw in it") == "s3://bucket/key with user:pw in it"
    assert redact_url("/local/path") == "/local/path"
