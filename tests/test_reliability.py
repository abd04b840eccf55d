"""Reliability and safety: incremental runs, crash and resume, worker faults, the run lock,
credentials never leaking."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.metastore import RunLock

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _secret(monkeypatch):
    monkeypatch.setenv("FUZZY_PEOPLE_SECRET", "reliability-test-secret")


def copy_dev(dev_dir: Path, dest: Path, n: int) -> list[str]:
    dest.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in (dev_dir / "images").glob("*.png"))[:n]
    for name in names:
        shutil.copy(dev_dir / "images" / name, dest / name)
    return names


def rows_of(out: Path) -> list[dict]:
    return pads.dataset(str(out / "_metadata"), format="parquet").to_table().to_pylist()


def stats_of(out: Path) -> dict:
    return json.loads((out / "_stats.json").read_text())


def assert_one_ok_row_per_key(out: Path, keys: set[str]) -> None:
    rows = rows_of(out)
    got = [r["key"] for r in rows]
    assert sorted(got) == sorted(keys), "exactly one row per input key"
    for r in rows:
        assert r["status"] == "ok", (r["key"], r["error_message"])
        with Image.open(r["output_key"]) as im:
            im.load()  # exists and decodes
            assert im.format == "JPEG"


# ------------------------------------------------------------------------------ incremental

def test_incremental_runs_skip_unchanged_and_redo_changed(tmp_path, dev_dir, ray_local):
    src, out = tmp_path / "in", tmp_path / "out"
    names = copy_dev(dev_dir, src, 5)
    args = ["run", "--input", str(src), "--output", str(out), "--recall", "fast"]
    assert main(args) == 0
    assert stats_of(out)["counts"] == {"ok": 5, "error": 0, "skipped": 0}
    first = {r["key"]: r["processed_at"] for r in rows_of(out)}

    assert main(args) == 0  # nothing changed: nothing redone
    assert stats_of(out)["counts"] == {"ok": 0, "error": 0, "skipped": 5}
    assert {r["key"]: r["processed_at"] for r in rows_of(out)} == first

    # one new image, one changed image (other size/mtime)
    shutil.copy(dev_dir / "images" / "PennPed00093.png", src / "new.png")
    changed = src / names[0]
    Image.open(changed).convert("RGB").transpose(Image.FLIP_LEFT_RIGHT).save(changed)
    assert main(args) == 0
    assert stats_of(out)["counts"] == {"ok": 2, "error": 0, "skipped": 4}
    rows = rows_of(out)
    assert len(rows) == 6 and len({r["key"] for r in rows}) == 6, "one current row per key"
    redone = {r["key"] for r in rows if r["processed_at"] != first.get(r["key"])}
    assert redone == {str(src / "new.png"), str(changed)}

    assert main(args + ["--force"]) == 0
    assert stats_of(out)["counts"] == {"ok": 6, "error": 0, "skipped": 0}
    assert len(rows_of(out)) == 6


# ------------------------------------------------------------------------------ crash and resume

def test_driver_killed_midway_then_rerun_finishes(tmp_path, dev_dir):
    src, out = tmp_path / "in", tmp_path / "out"
    names = copy_dev(dev_dir, src, 14)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--input", str(src), "--output", str(out),
           "--recall", "fast", "--batch-size", "1", "--lock-lease", "5"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while len(list(out.glob("*.jpg"))) < 3:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no outputs appeared in 300 s"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait()
    written_before = len(list(out.glob("*.jpg")))
    assert written_before < len(names), "killed too late to test a resume"
    assert not list(out.glob("*.jpg.part")), "no partial JPEG under a final name"

    # the killed run's lock expires after its 5 s lease; the rerun waits for that
    rerun = subprocess.run(cmd[:-2] + ["--wait-for-lock"], env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_one_ok_row_per_key(out, {str(src / n) for n in names})
    print(f"resume: killed with {written_before} of {len(names)} JPEGs written; rerun: {stats_of(out)['counts']}")
    # every JPEG under a final name is whole
    for p in out.glob("*.jpg"):
        Image.open(p).load()


def test_worker_dies_midrun_every_row_once(tmp_path, dev_dir, ray_local, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    names = copy_dev(dev_dir, src, 6)
    marker = tmp_path / "fault-fired"
    monkeypatch.setenv("FUZZY_PEOPLE_FAULT_AFTER", "2")
    monkeypatch.setenv("FUZZY_PEOPLE_FAULT_MARKER", str(marker))
    code = main(["run", "--input", str(src), "--output", str(out), "--recall", "fast", "--batch-size", "1",
                 "--segment-actors", "1"])
    assert marker.exists(), "the injected fault did not fire"
    assert code == 0
    assert_one_ok_row_per_key(out, {str(src / n) for n in names})


# ------------------------------------------------------------------------------ the run lock

def _lock_tests(fs, root: str, run_args: list[str], capsys) -> None:
    holder = RunLock(fs, root, owner="nightly-run-on-node-7", lease=60)
    holder.acquire()
    try:
        t0 = time.time()
        code = main(run_args)
        assert code == 75, "a second run on the same output exits non-zero"
        assert time.time() - t0 < 60, "it exits at once"
        err = capsys.readouterr().err
        assert "nightly-run-on-node-7" in err and "s ago" in err
    finally:
        threading.Timer(3.0, holder.release).start()
    # --wait-for-lock waits until the holder releases, then runs
    code = main(run_args + ["--wait-for-lock"])
    assert code == 0


def test_run_lock_local_disk(tmp_path, dev_dir, ray_local, capsys):
    from fsspec.implementations.local import LocalFileSystem

    src, out = tmp_path / "in", tmp_path / "out"
    copy_dev(dev_dir, src, 1)
    _lock_tests(LocalFileSystem(), str(out), ["run", "--input", str(src), "--output", str(out), "--recall", "fast"], capsys)


def test_run_lock_on_s3(tmp_path, dev_dir, ray_local, s3_server, s3fs_client, capsys):
    fs = s3fs_client
    fs.mkdir("lock-bucket")
    name = copy_dev(dev_dir, tmp_path / "in", 1)[0]
    fs.put_file(str(tmp_path / "in" / name), f"lock-bucket/raw/{name}")
    _lock_tests(fs, "lock-bucket/out", ["run", "--input", "s3://lock-bucket/raw/", "--output", "s3://lock-bucket/out/",
                                        "--endpoint-url", s3_server, "--recall", "fast"], capsys)


def test_lock_is_exclusive_and_expired_leases_are_taken_over(tmp_path, s3_server, s3fs_client):
    from fsspec.implementations.local import LocalFileSystem
    from pipeline.metastore import LockHeld

    s3fs_client.mkdir("excl-bucket")
    for fs, root in ((LocalFileSystem(), str(tmp_path / "o")), (s3fs_client, "excl-bucket/o")):
        a = RunLock(fs, root, owner="a", lease=5)
        a.acquire()
        with pytest.raises(LockHeld, match="owner a"):
            RunLock(fs, root, owner="b", lease=5).acquire()
        a._stop.set()  # a crashes: no more renewals, no release
        a._thread.join()
        time.sleep(5.5)
        b = RunLock(fs, root, owner="b", lease=5)
        b.acquire()  # the lease expired: taken over
        assert b.read()["owner"] == "b"
        b.release()
        assert not fs.exists(root + "/_lock.json")


# ------------------------------------------------------------------------------ credentials

def test_credentials_never_leak(tmp_path, dev_dir, ray_local, s3_server, s3fs_client, capfd):
    fake_key, fake_secret = "AKIAFAKEKEY7777LEAKCHECK", "fakeSecretValue/ShouldNeverAppear+9999"
    fs = s3fs_client
    fs.mkdir("cred-bucket")
    name = copy_dev(dev_dir, tmp_path / "in", 1)[0]
    fs.put_file(str(tmp_path / "in" / name), f"cred-bucket/raw/{name}")
    fs.pipe_file("cred-bucket/raw/broken.jpg", b"not an image")
    opts = json.dumps({"key": fake_key, "secret": fake_secret, "client_kwargs": {"region_name": "us-east-1"}})
    code = main(["run", "--input", "s3://cred-bucket/raw/", "--output", "s3://cred-bucket/out/",
                 "--endpoint-url", s3_server, "--storage-options", opts, "--recall", "fast", "--max-error-rate", "1"])
    assert code == 0
    captured = capfd.readouterr()
    blobs = [captured.out.encode(), captured.err.encode()]
    for p in fs.find("cred-bucket/out"):
        blobs.append(fs.cat_file(p))
    logs = Path("/tmp/ray/session_latest/logs")
    if logs.is_dir():
        for p in logs.rglob("*"):
            if p.is_file() and p.stat().st_size < 50_000_000:
                blobs.append(p.read_bytes())
    for secret in (fake_key, fake_secret, "reliability-test-secret"):
        for blob in blobs:
            assert secret.encode() not in blob, f"{secret} leaked"
    stats = json.loads(fs.cat_file("cred-bucket/out/_stats.json"))
    assert stats["config"]["storage_options"]["key"] == "***"


def test_poison_image_becomes_one_error_row(tmp_path, dev_dir, ray_local, monkeypatch):
    """An image that kills the worker every time (a native crash) ends as one error row; the
    rest of its batch is retried image by image and succeeds."""
    src, out = tmp_path / "in", tmp_path / "out"
    names = copy_dev(dev_dir, src, 4)
    poison = names[1]
    monkeypatch.setenv("FUZZY_PEOPLE_FAULT_KEY", poison)
    code = main(["run", "--input", str(src), "--output", str(out), "--recall", "fast", "--batch-size", "4",
                 "--segment-actors", "1", "--max-error-rate", "0.5"])
    assert code == 0
    rows = {Path(r["key"]).name: r for r in rows_of(out)}
    assert sorted(rows) == sorted(names), "every input has exactly one row"
    assert rows[poison]["status"] == "error" and "died" in rows[poison]["error_message"]
    assert all(rows[n]["status"] == "ok" for n in names if n != poison)
