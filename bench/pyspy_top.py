"""Summarise a py-spy ``--format raw`` profile (collapsed stacks): where the samples went.

Record the whole pipeline (driver, raylet's workers, actors) with, for example:

    py-spy record --subprocesses --rate 20 --format raw -o /tmp/prof.txt -- \
        python -m pipeline.bench --n 48 --skip-bounds
    python bench/pyspy_top.py /tmp/prof.txt

Prints the samples per process and, over all processes, the functions with the most inclusive
samples (a function counted once per stack) and the most self samples (leaf frames; time inside
a C extension shows as the Python line that called it).
"""

from __future__ import annotations

import re
import sys
from collections import Counter

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def short(frame: str, with_line: bool = False) -> str:
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()[:90]
    path = m.group("file")
    parts = path.split("/")
    for anchor in ("pipeline", "ray", "pyarrow", "numpy", "PIL", "cv2", "onnxruntime", "numba"):
        if anchor in parts:
            path = "/".join(parts[parts.index(anchor):])
            break
    else:
        path = parts[-1]
    line = f":{m.group('line')}" if with_line and m.group("line") else ""
    return f"{m.group('func')} ({path}{line})"


def main(path: str, top: int = 25) -> None:
    inclusive, self_, procs = Counter(), Counter(), Counter()
    total = 0
    with open(path, errors="replace") as f:
        for raw in f:
            raw = raw.rstrip("\n")
            if not raw or " " not in raw:
                continue
            stack, _, count = raw.rpartition(" ")
            try:
                n = int(count)
            except ValueError:
                continue
            frames = stack.split(";")
            owners = [fr for fr in frames if fr.startswith("process ")]
            proc = owners[-1] if owners else "?"  # with --subprocesses: root;...;the sampled process
            frames = [fr for fr in frames if not fr.startswith(("process ", "thread "))]
            name = re.sub(r"^process \d+:", "", proc).strip('"')
            name = "ray worker (" + name.split("--worker-type=")[-1].split()[0] + ")" if "default_worker.py" in name else name[:100]
            procs[name] += n
            total += n
            for name in {short(fr) for fr in frames}:
                inclusive[name] += n
            if frames:
                self_[short(frames[-1], with_line=True)] += n
    print(f"{total} samples")
    print("\nper process:")
    for name, n in procs.most_common(12):
        print(f"  {n / total:6.1%}  {name}")
    print("\ninclusive (function on the stack):")
    for name, n in inclusive.most_common(top):
        print(f"  {n / total:6.1%}  {name}")
    print("\nself (leaf frame, i.e. the Python line running or calling into C):")
    for name, n in self_.most_common(top):
        print(f"  {n / total:6.1%}  {name}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25)
