"""Decoded tensors vs JPEG bytes between stages: PIL decode cost vs a Ray task round trip.

Run: python bench/tensor_vs_bytes.py (needs ../shared/data/pennfudan-dev).
"""
import io, os, time

import numpy as np
import ray
from PIL import Image

DEV = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "pennfudan-dev", "images", "FudanPed00001.png")
rng = np.random.default_rng(0)
# photo-like 1920x1080: a dev photo tiled/resized
im = Image.open(DEV).convert("RGB").resize((1920,1080))
buf = io.BytesIO(); im.save(buf, "JPEG", quality=90); jpg = buf.getvalue()
arr = np.asarray(im)
def med(f, n=15):
    ts=[]
    for _ in range(n):
        t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
    return 1000*np.median(ts)
dec = med(lambda: np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB")))
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
@ray.remote
def consume(x): return len(x) if isinstance(x,bytes) else x.nbytes
ray.get(consume.remote(arr))
t_arr = med(lambda: ray.get(consume.remote(arr)))
t_jpg = med(lambda: ray.get(consume.remote(jpg)))
print(f"jpeg bytes {len(jpg):,}  decoded {arr.nbytes:,}")
print(f"PIL decode 1920x1080 q90: {dec:.1f} ms")
print(f"task round trip with decoded tensor: {t_arr:.1f} ms; with JPEG bytes: {t_jpg:.1f} ms")
