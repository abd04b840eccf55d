"""The job end to end: local directories, a real S3 server (moto on loopback, s3fs over HTTP),
a manifest, and `ray job submit` against a real local head."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
from PIL import ExifTags, Image, ImageOps

from corpus import BASE_SIZE, MAKER_NOTE, build_corpus
from pipeline.cli import main

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DEV_NAMES = ["FudanPed00001.png", "FudanPed00017.png", "PennPed00010.png", "PennPed00043.png"]
SECRET = "test-secret-for-determinism"


@pytest.fixture(autouse=True)
def _secret(monkeypatch):
    monkeypatch.setenv("FUZZY_PEOPLE_SECRET", SECRET)


def make_input(root: Path, dev_dir: Path) -> dict[str, dict]:
    """Dev photos plus the hostile corpus; returns rel key -> expectation."""
    expect: dict[str, dict] = {}
    (root / "street").mkdir(parents=True)
    for name in DEV_NAMES:
        shutil.copy(dev_dir / "images" / name, root / "street" / name)
        with Image.open(dev_dir / "images" / name) as im:
            expect[f"street/{name}"] = {"status": "ok", "size": im.size, "gt": dev_dir / "masks" / name.replace(".png", "_mask.png")}
    person = np.asarray(Image.open(dev_dir / "images" / "FudanPed00001.png").convert("RGB"))
    for item in build_corpus(root / "corpus", people_image=person):
        expect[f"corpus/{item.relpath}"] = {"status": item.expect, "size": item.expect_size}
    return expect


def read_rows(out: str, filesystem=None) -> list[dict]:
    ds = pads.dataset(out.rstrip("/") + "/_metadata", format="parquet", filesystem=filesystem)
    return ds.to_table().to_pylist()


def upright(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def check_run(rows: list[dict], expect: dict[str, dict], in_prefix: str, read_in, read_out) -> None:
    import cv2
    from pycocotools import mask as cocomask

    def dilate(m: np.ndarray, n: int) -> np.ndarray:
        return cv2.dilate(m.astype(np.uint8), np.ones((2 * n + 1, 2 * n + 1), np.uint8)) > 0

    by_rel = {r["key"][len(in_prefix):].lstrip("/"): r for r in rows}
    assert sorted(by_rel) == sorted(expect), "one metadata row per input object"
    assert len(rows) == len(expect)
    for rel, want in expect.items():
        row = by_rel[rel]
        assert row["status"] == want["status"], (rel, row["status"], row["error_message"])
        if row["status"] == "error":
            assert row["error_message"], rel
            assert row["output_key"] is None
            continue
        out = read_out(row["output_key"])
        with Image.open(io.BytesIO(out)) as im:
            assert im.format == "JPEG"
            assert im.size == tuple(want["size"]), (rel, im.size, want["size"])
        assert (row["width"], row["height"]) == tuple(want["size"])
        rle = dict(row["mask_rle"])
        mask = cocomask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
        assert int(mask.sum()) == row["person_pixels"], rel
        assert mask.shape == (row["height"], row["width"])
        if rel.startswith("street/"):
            src = upright(read_in(row["key"]))
            got = upright(out).astype(np.int16)
            gt = np.asarray(Image.open(want["gt"])) > 0
            assert row["num_people"] >= 1 and row["person_fraction"] > 0.02, rel
            # the annotated person pixels are (mostly) inside the anonymized mask
            # (finder quality itself is measured by the eval tests; this is the plumbing)
            assert (mask & gt).sum() / gt.sum() > 0.7, rel
            diff = np.abs(got - src.astype(np.int16)).mean(axis=2)
            assert diff[gt].mean() > 10, f"{rel}: person pixels barely changed ({diff[gt].mean():.1f})"
            far = ~dilate(mask, 8)
            assert diff[far].mean() < 3.0, f"{rel}: pixels far from people changed ({diff[far].mean():.2f})"


def _local_reader(path: str) -> bytes:
    return Path(path.replace("file://", "")).read_bytes()


# ------------------------------------------------------------------------------------------ tests

def test_local_directories_end_to_end(tmp_path, dev_dir, ray_local):
    src, out = tmp_path / "in", tmp_path / "out"
    expect = make_input(src, dev_dir)
    code = main(["run", "--input", str(src), "--output", str(out), "--max-error-rate", "0.5"])
    assert code == 0
    rows = read_rows(str(out))
    check_run(rows, expect, str(src), _local_reader, _local_reader)
    # the EXIF file: upright, GPS kept, MakerNote / thumbnail / serial dropped, orientation reset
    row = next(r for r in rows if r["key"].endswith("orientation6_gps_thumb.jpg"))
    data = Path(row["output_key"]).read_bytes()
    assert MAKER_NOTE not in data and b"CORPUS-MAKERNOTE" not in data
    assert data.count(b"\xff\xd8\xff") == 1, "an embedded JPEG (thumbnail) survived"
    with Image.open(io.BytesIO(data)) as im:
        exif = im.getexif()
        assert exif.get(0x0112) == 1
        gps = exif.get_ifd(0x8825)
        assert gps and gps.get(2), "GPS latitude kept with --metadata keep"
        assert 0x927C not in exif.get_ifd(0x8769)
        assert not exif.get_ifd(ExifTags.IFD.IFD1), "EXIF thumbnail IFD dropped"
    stats = json.loads((out / "_stats.json").read_text())
    assert stats["counts"]["ok"] == sum(1 for e in expect.values() if e["status"] == "ok")
    assert stats["counts"]["error"] == sum(1 for e in expect.values() if e["status"] == "error")
    assert SECRET not in json.dumps(stats)
    # no partial files left under final names, nothing outside the expected outputs
    assert not list(out.rglob("*.part"))


def test_metadata_strip_keeps_only_icc(tmp_path, ray_local):
    src, out = tmp_path / "in", tmp_path / "out"
    items = build_corpus(src)
    code = main(["run", "--input", str(src / "exif"), "--output", str(out), "--metadata", "strip", "--recall", "fast"])
    assert code == 0
    (row,) = read_rows(str(out))
    data = Path(row["output_key"]).read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        assert not im.getexif(), "no EXIF with --metadata strip"
        assert "xmp" not in im.info
        assert im.size == (BASE_SIZE[0], BASE_SIZE[1])


def test_manifest_and_rejected_keys(tmp_path, dev_dir, ray_local):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name in DEV_NAMES[:2]:
        shutil.copy(dev_dir / "images" / name, src / name)
    manifest = tmp_path / "keys.txt"
    manifest.write_text(f"{DEV_NAMES[0]}\n{DEV_NAMES[1]}\nmissing.jpg\n../escape.jpg\n")
    code = main(["run", "--input", str(src), "--manifest", str(manifest), "--output", str(out),
                 "--recall", "fast", "--max-error-rate", "1"])
    assert code == 0
    rows = {r["key"].rsplit("/", 1)[-1]: r for r in read_rows(str(out))}
    assert len(rows) == 4
    assert rows[DEV_NAMES[0]]["status"] == rows[DEV_NAMES[1]]["status"] == "ok"
    assert rows["missing.jpg"]["status"] == "error" and "not found" in rows["missing.jpg"]["error_message"]
    assert rows["escape.jpg"]["status"] == "error" and ".." in rows["escape.jpg"]["error_message"]
    assert not (tmp_path / "escape.jpg").exists()


def test_s3_end_to_end(tmp_path, dev_dir, ray_local, s3_server, s3fs_client):
    fs = s3fs_client
    fs.mkdir("raw-bucket")
    fs.mkdir("anon-bucket")
    local = tmp_path / "in"
    expect = make_input(local, dev_dir)
    for rel in expect:
        fs.put_file(str(local / rel), f"raw-bucket/archive/{rel}")
    code = main(["run", "--input", "s3://raw-bucket/archive/", "--output", "s3://anon-bucket/anon/",
                 "--endpoint-url", s3_server, "--recall", "fast", "--max-error-rate", "0.5"])
    assert code == 0
    fs.invalidate_cache()
    files = [p for p in fs.find("anon-bucket/anon/_metadata") if p.endswith(".parquet") and "/_staging/" not in p]
    import pyarrow.parquet as pq

    rows = []
    for p in files:
        rows.extend(pq.read_table(io.BytesIO(fs.cat_file(p))).to_pylist())
    check_run(rows, expect, "s3://raw-bucket/archive", lambda k: fs.cat_file(k), lambda k: fs.cat_file(k))
    assert fs.exists("anon-bucket/anon/_stats.json")
    assert not fs.exists("anon-bucket/anon/_lock.json"), "the run lock is released"


def test_bad_flag_values_fail_at_start_naming_the_flag(tmp_path, capsys):
    code = main(["run", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--radius", "-1"])
    assert code == 2
    assert "--radius" in capsys.readouterr().err
    code = main(["run", "--input", str(tmp_path), "--output", str(tmp_path / "sub")])
    assert code == 2
    assert "overlaps" in capsys.readouterr().err


def test_ray_job_submit(tmp_path, dev_dir):
    """A real head on 127.0.0.1, `ray job submit` of jobs/anonymize.py, wait for SUCCEEDED."""
    from conftest import free_port

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name in DEV_NAMES[:2]:
        shutil.copy(dev_dir / "images" / name, src / name)
    port, dash = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    # a throwaway head on loopback: no token authentication (Ray 2.60 enables it by default)
    env["RAY_AUTH_MODE"] = "disabled"
    ray_bin = str(Path(sys.executable).with_name("ray"))
    ray_bin = ray_bin if os.path.exists(ray_bin) else shutil.which("ray")
    # --block keeps `ray start` in the foreground; stopping it stops this head only (a
    # `ray stop` would also kill the test session's own local Ray)
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                             "--port", str(port), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
                             "--num-cpus", "2", "--include-dashboard", "true", "--disable-usage-stats",
                             # the session's own local Ray already holds the default agent ports
                             "--dashboard-agent-listen-port", str(free_port()),
                             "--dashboard-agent-grpc-port", str(free_port()),
                             "--runtime-env-agent-port", str(free_port()),
                             "--metrics-export-port", str(free_port())],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while subprocess.run([ray_bin, "job", "list", "--address", f"http://127.0.0.1:{dash}"], env=env,
                             capture_output=True, timeout=60).returncode != 0:
            assert head.poll() is None, "ray start --head exited"
            assert time.time() < deadline, "the Ray head's job server did not come up in 120 s"
            time.sleep(2)
        cmd = [ray_bin, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(ROOT),
               "--runtime-env-json", json.dumps({"env_vars": {"FUZZY_PEOPLE_SECRET": SECRET},
                                                  "excludes": ["tests/fixtures", ".git", ".venv"]}),
               "--", "python", "jobs/anonymize.py", "--input", str(src), "--output", str(out), "--recall", "fast"]
        agent_deadline = time.time() + 300  # the head's job agent comes up after its API (slowly on 2 busy cores)
        while True:
            submit = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            if "No available agent" not in submit.stdout + submit.stderr or time.time() > agent_deadline:
                break
            time.sleep(5)
        assert submit.returncode == 0, (submit.stdout[-3000:], submit.stderr[-3000:])
        assert "succeeded" in (submit.stdout + submit.stderr).lower()
    finally:
        import signal

        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
    rows = read_rows(str(out))
    assert sorted(r["status"] for r in rows) == ["ok", "ok"]
    for r in rows:
        with Image.open(r["output_key"]) as im:
            assert im.format == "JPEG"


def test_output_format_parquet_puts_jpegs_in_the_shards(tmp_path, dev_dir, ray_local):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name in DEV_NAMES[:2]:
        shutil.copy(dev_dir / "images" / name, src / name)
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    code = main(["run", "--input", str(src), "--output", str(out), "--recall", "fast",
                 "--output-format", "parquet", "--max-error-rate", "0.5"])
    assert code == 0
    rows = {r["key"].rsplit("/", 1)[-1]: r for r in read_rows(str(out))}
    assert set(rows) == set(DEV_NAMES[:2]) | {"broken.jpg"}
    assert not list(out.glob("*.jpg")), "no JPEG objects with --output-format parquet"
    assert rows["broken.jpg"]["status"] == "error" and rows["broken.jpg"]["image"] is None
    for name in DEV_NAMES[:2]:
        r = rows[name]
        assert r["status"] == "ok" and r["output_key"] is None
        with Image.open(io.BytesIO(r["image"])) as im:
            assert im.format == "JPEG" and im.size == (r["width"], r["height"])


# ------------------------------------------------------------------------------------------ resources

@pytest.mark.parametrize("cpus", [1, 2, 3, 4, 16, 64])
@pytest.mark.parametrize("actors", [None, (1, 1), (2, 2), (1, 8)])
def test_resource_plan_always_leaves_room_for_the_cpu_stages(tmp_path, cpus, actors):
    """Ray admits work only within the logical CPUs: with every actor of the pool up, one decode
    and one finish task must still fit, or the run waits forever (the old 2-actor pool on 2 CPUs)."""
    from pipeline.config import RunConfig
    from pipeline.pipeline import plan_resources

    cfg = RunConfig(input=str(tmp_path), output=str(tmp_path / "o"), segment_actors=actors)
    plan = plan_resources(cfg, cpus, 0)
    lo, hi = plan.pool
    assert plan.actor_gpus is None
    assert 0 < plan.actor_cpus <= 1 and 0 < plan.task_cpus <= 1
    assert hi * plan.actor_cpus + 2 * plan.task_cpus <= cpus + 1e-6, plan
    if actors is None:
        assert plan.pool == (cpus, cpus), "CPU-only: one actor per core"
    else:
        assert plan.pool == actors
    assert plan.object_store_blocks >= 3 * hi, "at least a batch per actor and stage"
    assert plan.object_store_limit(640 * 480 * 3, 8) == plan.object_store_blocks * 8 * 640 * 480 * 3
    assert plan.object_store_limit(None, 8) is None


@pytest.mark.parametrize("cpus,gpus,num_gpus", [(2, 1, 1.0), (4, 4, 1.0), (8, 1, 0.5), (16, 2, 1.0)])
def test_resource_plan_gpu_actors_get_their_gpus(tmp_path, cpus, gpus, num_gpus):
    from pipeline.config import RunConfig
    from pipeline.pipeline import plan_resources

    cfg = RunConfig(input=str(tmp_path), output=str(tmp_path / "o"), num_gpus=num_gpus)
    plan = plan_resources(cfg, cpus, gpus)
    assert plan.actor_gpus == num_gpus
    assert plan.pool == (1, int(gpus // num_gpus)), "one actor per GPU (share)"
    assert plan.pool[1] * plan.actor_cpus + 2 * plan.task_cpus <= cpus + 1e-6, plan
    assert plan.actor_cpus > 0


def test_probe_image_bytes_reads_headers_of_the_first_inputs(tmp_path):
    import pyarrow as pa

    from pipeline.pipeline import BASE_SCHEMA, probe_image_bytes

    Image.new("RGB", (64, 48)).save(tmp_path / "a.jpg")
    Image.new("RGB", (100, 30)).save(tmp_path / "b.png")
    (tmp_path / "c.jpg").write_bytes(b"not an image")
    keys = [str(tmp_path / n) for n in ("missing.jpg", "c.jpg", "a.jpg", "b.png")]
    table = pa.Table.from_pydict({"key": keys, "rel": keys, "out_rel": keys, "source_size": [1] * 4,
                                  "source_etag": ["e"] * 4, "status": ["error", "pending", "pending", "pending"],
                                  "error_message": [None] * 4}, schema=BASE_SCHEMA)
    assert probe_image_bytes(table, {}, 10**8, 8) == 64 * 48 * 3  # 100x30 is smaller
    assert probe_image_bytes(table, {}, 1000, 8) == 1000 * 3, "capped by --max-pixels (larger ones are refused)"
    assert probe_image_bytes(table.slice(0, 2), {}, 10**8, 8) is None


def test_two_cpu_node_with_one_actor_per_core_finishes(tmp_path, dev_dir, ray_local):
    """The CPU-only local case: 2 CPUs (ray_local), one segment actor per core (the default, and
    given explicitly): both actors hold their CPUs for the whole run and the decode and finish
    tasks still run."""
    import ray

    assert ray.cluster_resources().get("CPU") == 2 and not ray.cluster_resources().get("GPU")
    src = tmp_path / "in"
    src.mkdir()
    for name in DEV_NAMES[:3]:
        shutil.copy(dev_dir / "images" / name, src / name)
    for k, extra in enumerate([[], ["--segment-actors", "2"]]):
        out = tmp_path / f"out{k}"
        code = main(["run", "--input", str(src), "--output", str(out), "--recall", "fast", "--batch-size", "1", *extra])
        assert code == 0
        rows = read_rows(str(out))
        assert sorted(r["status"] for r in rows) == ["ok"] * 3


def test_one_cpu_node_finishes(tmp_path, dev_dir):
    """A 1-CPU node (its own local Ray in a child process): the pool's one actor and the CPU
    stages share the single CPU."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name in DEV_NAMES[:2]:
        shutil.copy(dev_dir / "images" / name, src / name)
    code = ("import sys, ray; ray.init(address='local', num_cpus=1, include_dashboard=False, log_to_driver=False); "
            "from pipeline.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    # the timeout only keeps a hang from stalling the suite; nothing about speed is asserted
    proc = subprocess.run([sys.executable, "-c", code, "run", "--input", str(src), "--output", str(out),
                           "--recall", "fast", "--batch-size", "1"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_rows(str(out))
    assert sorted(r["status"] for r in rows) == ["ok", "ok"]


def test_images_larger_than_the_probed_ones_still_finish(tmp_path, dev_dir, ray_local):
    """The object-store budget comes from the first inputs' headers: later, larger images exceed
    it; Ray Data still runs one task per operator, so the run slows down but finishes."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.new("RGB", (16, 16), (90, 120, 150)).save(src / "0_tiny.png")  # listed first
    for name in DEV_NAMES[:3]:
        shutil.copy(dev_dir / "images" / name, src / name)
    code = main(["run", "--input", str(src), "--output", str(out), "--recall", "fast", "--batch-size", "1"])
    assert code == 0
    rows = read_rows(str(out))
    assert sorted(r["status"] for r in rows) == ["ok"] * 4
