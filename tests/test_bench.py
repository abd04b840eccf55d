"""`fuzzy-people bench` end to end at a tiny size: it runs, prints its lines, ends with ratio=<float>.

No timing is asserted (the machine is shared): only that every figure is printed and positive.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def bench(*args: str, timeout: int = 240) -> list[str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, "-m", "pipeline.bench", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [line for line in proc.stdout.splitlines() if line.strip()]


def _float(lines: list[str], pattern: str) -> float:
    hits = [m for m in (re.search(pattern, line) for line in lines) if m]
    assert hits, f"no line matches {pattern!r}:\n" + "\n".join(lines)
    return float(hits[-1].group(1))


@pytest.mark.slow
@pytest.mark.parametrize("s3", [False, True], ids=["local", "s3"])
def test_bench_tiny_prints_every_figure_and_ends_with_ratio(s3):
    lines = bench("--n", "4", "--recall", "fast", *(["--s3"] if s3 else []))
    m = re.fullmatch(r"ratio=([0-9.]+(?:e-?\d+)?)", lines[-1])
    assert m, lines[-1]
    assert float(m.group(1)) > 0
    assert _float(lines, r"^codec bound: ([0-9.]+) images/s") > 0
    assert _float(lines, r"^\[fast\] work bound: ([0-9.]+) images/s") > 0
    assert _float(lines, r"^\[fast\] finder alone \(work bound\): ([0-9.]+) images/s") > 0
    assert _float(lines, r"^\[fast\] pipeline wall-clock: ([0-9.]+) images/s") > 0
    assert _float(lines, r"^\[fast\] pipeline dataset execution: ([0-9.]+) images/s") > 0
    assert _float(lines, r"cpu_ratio=([0-9.]+)") > 0
    assert _float(lines, r"^\[fast\] ratio=([0-9.]+) on the dataset execution") == float(m.group(1))
    assert _float(lines, r"^\[fast\] codec_ratio=([0-9.]+)") > 0
    busy = [line for line in lines if line.startswith("[fast] stage busy seconds")]
    assert busy and all(f" {s} " in busy[0] for s in ("decode", "segment", "anonymize", "encode"))
    head = [line for line in lines if line.startswith("bench: ")]
    assert head and ("S3 (moto" in head[0]) is s3


def test_bench_arguments_and_no_ray_at_import():
    code = ("import sys, argparse, pipeline.bench as b; p = argparse.ArgumentParser(); b.add_arguments(p); "
            "ns = p.parse_args(['--n', '3', '--recall', 'fast', '--recall', 'max', '--memory-sizes', '10,20']); "
            "assert ns.n == 3 and ns.recall == ['fast', 'max'] and ns.memory_sizes == [10, 20]; "
            "assert 'ray' not in sys.modules, 'pipeline.bench imported Ray'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_composed_images_have_the_size_and_several_layouts():
    import numpy as np

    from pipeline.bench import LAYOUTS, compose

    rng = np.random.default_rng(0)
    photos = [np.full((300, 200, 3), v, np.uint8) for v in (10, 120, 240)]
    for layout in LAYOUTS:
        img = compose(photos, rng, 1920, 1080, layout)
        assert img.shape == (1080, 1920, 3) and img.dtype == np.uint8
    assert len(set(LAYOUTS)) >= 3


def test_memory_tree_sampler_sees_this_process():
    import threading

    from pipeline.bench import MemPeak, _sample_tree

    peak, stop = MemPeak(), threading.Event()
    t = threading.Thread(target=_sample_tree, args=(os.getpid(), stop, peak))
    t.start()
    stop.wait(0.2)
    stop.set()
    t.join(5)
    assert peak.samples >= 1 and peak.rss > 0 and peak.driver_rss > 0
    assert "driver" in peak.rss_parts


def test_main_parses_like_the_cli():
    from pipeline import bench

    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    ns = p.parse_args([])
    assert ns.n >= 1 and ns.recall is None and ns.memory_sizes == [1000, 10000] and not ns.s3


def test_cpu_meter_counts_a_child_that_has_exited():
    from pipeline.bench import CpuMeter

    meter = CpuMeter(interval=0.05)
    # a child burning ~0.3 s of CPU, then exiting: its last sample still counts
    subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
                    "time.sleep(0.2)"], check=True, timeout=60)
    share, own = meter.read()
    assert 0.0 <= share <= 1.0
    assert own >= 0.2, own
