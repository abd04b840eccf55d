"""``fuzzy-people report OUTPUT``: one self-contained HTML page about a finished run.

The page (``OUTPUT/report.html`` by default) holds a summary (counts per status, throughput,
person-fraction histogram as inline SVG, the run's config), the errors with their messages, and
a grid of anonymized thumbnails (base64 JPEG, 256 px) with the person mask outlined, sortable by
a few lines of inline JavaScript. It loads nothing from anywhere (a Content-Security-Policy
forbids it). The original inputs are read, and shown next to the outputs, only with
``include_originals=True``; the page then says so in a banner. Without it the input objects are
never opened, so the page cannot hold their pixels.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import html
import io
import json
import math
import sys
from typing import Any, Iterable

from . import runoutput

REPORT_FILE = "report.html"
AUDIT_FILE = "_audit.json"
MAX_GRID = 500
MAX_ERRORS = 1000
THUMB = 256
OUTLINE_RGB = (255, 0, 255)
SORTS = {
    "fraction-desc": "person fraction, high to low",
    "fraction-asc": "person fraction, low to high",
    "people-desc": "people, most first",
    "key-asc": "key, A to Z",
}

# ---------------------------------------------------------------------------- data


def _col(table, name: str, default=None) -> list:
    if name in table.column_names:
        return table[name].to_pylist()
    return [default] * table.num_rows


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else None


def _median(values: Iterable[float | None]) -> float | None:
    vals = sorted(float(v) for v in values if v is not None and not math.isnan(v))
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def summarize(table, stats: dict | None) -> dict[str, Any]:
    """Figures for the summary table from the current metadata rows and ``_stats.json``."""
    status = _col(table, "status")
    ok = [i for i, s in enumerate(status) if s == "ok"]
    fractions = _col(table, "person_fraction")
    people = _col(table, "num_people")
    counts = {s: status.count(s) for s in ("ok", "error", "skipped")}
    other = len(status) - sum(counts.values())
    if other:
        counts["other"] = other
    stage = {}
    for name in ("decode", "segment", "anonymize", "encode"):
        vals = _col(table, f"seconds_{name}")
        stage[name] = _mean(vals[i] for i in ok)
    models = sorted({f"{m} ({(s or '')[:12]})" for m, s, st in zip(_col(table, "model"), _col(table, "model_sha256"), status) if st == "ok" and m})
    return {
        "rows": len(status),
        "counts": counts,
        "people": sum(int(people[i] or 0) for i in ok),
        "images_with_people": sum(1 for i in ok if (people[i] or 0) > 0),
        "fraction_mean": _mean(fractions[i] for i in ok),
        "fraction_median": _median(fractions[i] for i in ok),
        "stage_seconds": stage,
        "run_ids": sorted({r for r in _col(table, "run_id") if r}),
        "models": models,
        "stats": stats,
    }


# ---------------------------------------------------------------------------- pictures


def histogram_svg(fractions: list[float], bins: int = 20) -> str:
    """Inline SVG histogram of person fractions; the x range is the smallest of 5 %, 10 %,
    20 %, 50 %, 100 % that holds every value, so small fractions are not all in one bar."""
    vals = [min(1.0, max(0.0, float(f))) for f in fractions if f is not None and not math.isnan(f)]
    top = next((t for t in (0.05, 0.1, 0.2, 0.5, 1.0) if not vals or max(vals) <= t), 1.0)
    counts = [0] * bins
    for v in vals:
        counts[min(bins - 1, int(v / top * bins))] += 1
    width, height, left, bottom, pad, right = 640, 220, 44, 34, 10, 24
    plot_w, plot_h = width - left - right, height - bottom - pad
    peak = max(counts) or 1
    bar_w = plot_w / bins
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="histogram" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="histogram of person fraction">',
        f'<line x1="{left}" y1="{pad + plot_h}" x2="{left + plot_w}" y2="{pad + plot_h}" stroke="#555"/>',
        f'<line x1="{left}" y1="{pad}" x2="{left}" y2="{pad + plot_h}" stroke="#555"/>',
        f'<text x="{left - 6}" y="{pad + 4}" text-anchor="end" class="ax">{peak}</text>',
        f'<text x="{left - 6}" y="{pad + plot_h}" text-anchor="end" class="ax">0</text>',
    ]
    for i, c in enumerate(counts):
        h = plot_h * c / peak
        lo, hi = 100 * top * i / bins, 100 * top * (i + 1) / bins
        x = left + i * bar_w
        parts.append(
            f'<rect class="bar" x="{x + 1:.1f}" y="{pad + plot_h - h:.1f}" width="{bar_w - 2:.1f}" '
            f'height="{h:.1f}" data-count="{c}"><title>{lo:g}-{hi:g} %: {c} image(s)</title></rect>'
        )
    for i in range(0, bins + 1, 5):
        x = left + i * bar_w
        parts.append(f'<text x="{x:.1f}" y="{pad + plot_h + 16}" text-anchor="middle" class="ax">{100 * top * i / bins:g} %</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 2}" text-anchor="middle" class="ax">share of the image that is person (ok images: {len(vals)})</text>')
    parts.append("</svg>")
    return "".join(parts)


def _fit(w: int, h: int, size: int) -> tuple[int, int]:
    s = min(1.0, size / max(w, h))
    return max(1, round(w * s)), max(1, round(h * s))


def outline(mask, shape: tuple[int, int]):
    """1-px outline (bool, ``shape`` = (h, w)) of a bool person mask resized to ``shape``."""
    import cv2
    import numpy as np

    h, w = shape
    small = cv2.resize(mask.astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_AREA) > 127
    if not small.any():
        return small
    eroded = cv2.erode(small.astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    return small & ~eroded.astype(bool)


def thumbnail(data: bytes, mask_rle: dict | None = None, size: int = THUMB, quality: int = 80) -> bytes:
    """JPEG thumbnail (longest side ``size``) of image bytes, with the mask outline drawn."""
    import numpy as np
    from PIL import Image

    from . import rle

    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG":
        img.draft("RGB", (size, size))  # DCT-domain downscale: cheap for huge images
    img = img.convert("RGB")
    img = img.resize(_fit(img.width, img.height, size), Image.Resampling.LANCZOS)
    arr = np.asarray(img).copy()
    if mask_rle and mask_rle.get("counts") is not None:
        edge = outline(rle.decode(mask_rle), arr.shape[:2])
        arr[edge] = OUTLINE_RGB
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


# ---------------------------------------------------------------------------- html

CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 24px 40px;color:#222;background:#fafafa}
h1{font-size:22px;margin:18px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#666}.banner{padding:12px 16px;margin:12px 0;border-radius:4px;font-weight:600}
.banner.originals{background:#b00020;color:#fff;font-size:18px}.banner.info{background:#e8f0fe;color:#1a3d7c}
.flex{display:flex;gap:32px;flex-wrap:wrap;align-items:flex-start}
.ax{font-size:11px;fill:#444}.bar{fill:#5470c6}
#grid{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#fff;border:1px solid #ddd;border-radius:4px;padding:6px;width:260px;font-size:12px}
.card img{display:block;max-width:256px;max-height:256px;margin:0 auto}
.card.with-original{width:526px}.pair{display:flex;gap:6px}.pair figure{margin:0}.pair figcaption{text-align:center}
.key{word-break:break-all;font-family:ui-monospace,monospace}
.err{font-family:ui-monospace,monospace;white-space:pre-wrap;word-break:break-word}
"""

JS = """
(function(){
  var grid=document.getElementById('grid'), sel=document.getElementById('sort');
  function cmp(mode){
    var f={'fraction-desc':function(a,b){return b.dataset.fraction-a.dataset.fraction;},
           'fraction-asc':function(a,b){return a.dataset.fraction-b.dataset.fraction;},
           'people-desc':function(a,b){return b.dataset.people-a.dataset.people;},
           'key-asc':function(a,b){return a.dataset.key<b.dataset.key?-1:a.dataset.key>b.dataset.key?1:0;}}[mode];
    return f||null;
  }
  function apply(mode){
    var f=cmp(mode); if(!f||!grid){return;}
    var cards=Array.prototype.slice.call(grid.children);
    cards.sort(function(a,b){return f(a,b)||(a.dataset.key<b.dataset.key?-1:1);});
    cards.forEach(function(c){grid.appendChild(c);});
    sel.value=mode; document.body.setAttribute('data-sort',mode);
  }
  var m=/(?:^#|&)sort=([a-z-]+)/.exec(location.hash||'');
  if(sel){sel.addEventListener('change',function(){apply(sel.value);});}
  apply(m&&cmp(m[1])?m[1]:'fraction-desc');
  document.body.setAttribute('data-ready','1');
})();
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value: Any, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value:,}{unit}" if isinstance(value, int) else f"{value}{unit}"


def _rows(pairs: Iterable[tuple], id_prefix: str = "") -> str:
    """Table rows from (name, value) or (name, value, id suffix) tuples; with ``id_prefix`` the
    value cell gets id ``id_prefix + (id suffix or name)``."""
    out = []
    for name, value, *suffix in pairs:
        ident = f' id="{id_prefix}{_e(suffix[0] if suffix else name)}"' if id_prefix else ""
        out.append(f"<tr><th>{_e(name)}</th><td class=\"num\"{ident}>{_e(value)}</td></tr>")
    return "".join(out)


def _config_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def render(output_url: str, summary: dict, histogram: str, errors: list[tuple[str, str, str]],
           cards: list[dict], shown: int, total_ok: int, include_originals: bool,
           generated: str, audit: dict | None = None) -> str:
    """The whole page. ``errors``: (relative key, status, message); ``cards``: dicts with
    ``key``, ``fraction``, ``people``, ``radius``, ``thumb`` (data URI) and, only with
    originals, ``original`` (data URI)."""
    stats = summary.get("stats") or {}
    counts = summary["counts"]
    title = "fuzzy-people run report" + (" (CONTAINS ORIGINALS)" if include_originals else "")
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
    p = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<div class="muted">output <span class="key">{_e(output_url)}</span> &middot; generated {_e(generated)}</div>',
    ]
    if include_originals:
        p.append('<div class="banner originals" id="originals-banner">This report contains the ORIGINAL, '
                 "un-anonymized input images next to the outputs. It shows identifiable people: "
                 "do not share or publish it.</div>")
    else:
        p.append('<div class="banner info" id="no-originals">Anonymized outputs only: the original '
                 "inputs were not read and this page holds none of their pixels.</div>")

    p.append('<h2>Summary</h2><div class="flex"><table id="summary">')
    p.append(_rows([(k, v) for k, v in counts.items()] + [("total", summary["rows"])], id_prefix="count-"))
    p.append(_rows([
        ("images per second", _fmt(stats.get("images_per_second"))),
        ("wall time", _fmt(stats.get("wall_seconds"), " s")),
        ("last run id", stats.get("run_id", "n/a")),
        ("run ids in the metadata", ", ".join(summary["run_ids"]) or "n/a"),
        ("people found", _fmt(summary["people"])),
        ("images with people", _fmt(summary["images_with_people"])),
        ("mean person fraction", _fmt(None if summary["fraction_mean"] is None else 100 * summary["fraction_mean"], " %")),
        ("median person fraction", _fmt(None if summary["fraction_median"] is None else 100 * summary["fraction_median"], " %")),
        ("model", "; ".join(summary["models"]) or "n/a"),
    ] + [(f"mean {k} time", _fmt(None if v is None else 1000 * v, " ms", 1)) for k, v in summary["stage_seconds"].items()]))
    p.append("</table>")
    p.append(f"<div>{histogram}</div></div>")
    if stats.get("counts") and {k: stats["counts"].get(k, 0) for k in ("ok", "error", "skipped")} != {k: counts.get(k, 0) for k in ("ok", "error", "skipped")}:
        p.append('<p class="muted">The counts above are the current row per input across all runs '
                 f"written to this output; the last run alone counted {_e(json.dumps(stats['counts'], sort_keys=True))}.</p>")
    if not stats:
        p.append('<p class="muted">No _stats.json: throughput and config are unknown (the run may not have finished).</p>')

    if audit and isinstance(audit.get("faces"), dict):
        f = audit["faces"]
        leak = audit.get("hidden_but_detectable", 0)
        p.append(f'<h2>Privacy audit</h2><p class="muted">From {_e(AUDIT_FILE)} '
                 f'({_e((audit.get("detector") or {}).get("name", ""))}, threshold '
                 f'{_e((audit.get("detector") or {}).get("threshold", ""))}); crops for review under _audit/.</p>')
        p.append('<table id="audit">' + _rows([
            ("images audited", (audit.get("images") or {}).get("audited", "n/a"), "images"),
            ("faces in the inputs", f.get("inputs", "n/a"), "inputs"),
            ("faces in the outputs", f.get("outputs", "n/a"), "outputs"),
            ("hidden but still detectable (must be 0)", leak, "hidden_but_detectable"),
            ("face shape only (pixels scrambled)", f.get("face_shape_only", "n/a"), "face_shape_only"),
            ("outside our masks", f.get("outside_mask", "n/a"), "outside_mask"),
            ("other", f.get("other", "n/a"), "other"),
        ], id_prefix="audit-") + "</table>")

    config = stats.get("config") or {}
    extra = {k: v for k, v in stats.items() if k not in ("config", "counts", "run_id", "images_per_second", "wall_seconds")}
    if config or extra:
        p.append('<h2>Config</h2><table id="config">')
        p.append(_rows((k, _config_value(v)) for k, v in sorted(config.items())))
        p.append(_rows((k, _config_value(v)) for k, v in sorted(extra.items())))
        p.append("</table>")

    n_err = counts.get("error", 0)
    p.append(f'<h2>Errors ({n_err:,})</h2>')
    if errors:
        p.append('<table id="errors"><tr><th>key</th><th>status</th><th>message</th></tr>')
        for key, status, message in errors[:MAX_ERRORS]:
            p.append(f'<tr class="error-row"><td class="key">{_e(key)}</td><td>{_e(status)}</td><td class="err">{_e(message)}</td></tr>')
        p.append("</table>")
        if len(errors) > MAX_ERRORS:
            p.append(f'<p class="muted">Showing the first {MAX_ERRORS:,} of {len(errors):,}; the metadata holds them all.</p>')
    else:
        p.append("<p>None.</p>")

    p.append(f'<h2>Outputs ({total_ok:,} ok)</h2>')
    if total_ok > shown:
        p.append(f'<p class="banner info" id="grid-capped">Showing the {shown:,} most person-heavy of {total_ok:,} '
                 "ok images (cap); the rest are in the output and its metadata.</p>")
    p.append('<p>Magenta line: the person mask the pipeline anonymized. Sort by '
             '<select id="sort">' + "".join(f'<option value="{k}">{_e(v)}</option>' for k, v in SORTS.items()) + "</select></p>")
    p.append('<div id="grid">')
    for c in cards:
        cls = "card with-original" if c.get("original") else "card"
        head = (f'<div class="{cls}" data-key="{_e(c["key"])}" data-fraction="{c["fraction"]:.6f}" '
                f'data-people="{c["people"]}">')
        if c.get("original"):
            body = (f'<div class="pair"><figure><img alt="original" class="original" src="{c["original"]}">'
                    f'<figcaption>original</figcaption></figure><figure><img alt="anonymized" class="anonymized" '
                    f'src="{c["thumb"]}"><figcaption>anonymized</figcaption></figure></div>')
        elif c.get("thumb"):
            body = f'<img alt="anonymized output" class="anonymized" src="{c["thumb"]}">'
        else:
            body = f'<div class="err">{_e(c.get("problem", "no image"))}</div>'
        p.append(head + body + f'<div class="key">{_e(c["key"])}</div>'
                 f'<div>{100 * c["fraction"]:.2f} % person &middot; {c["people"]} people &middot; radius {_e(c["radius"])}</div></div>')
    p.append("</div>")
    p.append(f"<script>{JS}</script></body></html>")
    return "".join(p)


# ---------------------------------------------------------------------------- build


def build_report(output_url: str, storage_options: dict | None = None, include_originals: bool = False,
                 out_path: str | None = None, *, max_grid: int = MAX_GRID, thumb_size: int = THUMB,
                 progress=None) -> str:
    """Write the report for the run at ``output_url``; return where it was written
    (``OUTPUT/report.html`` unless ``out_path``, a local path or URL, is given)."""
    say = progress or (lambda msg: print(f"[fuzzy-people] {msg}", file=sys.stderr))
    table, has_image = runoutput.read_current(output_url, storage_options)
    stats = runoutput.read_stats(output_url, storage_options)
    summary = summarize(table, stats)
    audit = _read_audit(output_url, storage_options)

    status = _col(table, "status")
    keys = _col(table, "key")
    messages = _col(table, "error_message")
    fractions = _col(table, "person_fraction")
    # keys relative to the longest common input prefix read better than full URLs
    prefix = _common_dir(keys)
    rel = [runoutput.relative_key(k, prefix) if prefix else k for k in keys]

    errors = sorted(((rel[i], status[i], messages[i] or "") for i, s in enumerate(status) if s != "ok"),
                    key=lambda e: (e[1] != "error", e[0]))
    ok = [i for i, s in enumerate(status) if s == "ok"]
    hist = histogram_svg([fractions[i] for i in ok if fractions[i] is not None])
    ok.sort(key=lambda i: (-(fractions[i] or 0.0), rel[i]))
    chosen = ok[:max_grid]
    say(f"report: {len(status):,} rows, thumbnails for {len(chosen):,} of {len(ok):,} ok images")

    masks = _col(table, "mask_rle")
    people = _col(table, "num_people", 0)
    radius = _col(table, "radius", "")
    cards = {i: {"key": rel[i], "fraction": float(fractions[i] or 0.0), "people": int(people[i] or 0),
                 "radius": radius[i] or "", "thumb": None} for i in chosen}
    for i, data, err in runoutput.iter_output_images(output_url, table, has_image, chosen, storage_options):
        if err is not None:
            cards[i]["problem"] = f"output unreadable: {err}"
            continue
        try:
            cards[i]["thumb"] = _data_uri(thumbnail(data, masks[i], thumb_size))
        except Exception as exc:  # noqa: BLE001 - one bad object must not sink the report
            cards[i]["problem"] = f"output not decodable: {exc}"
    if include_originals:
        for i, data, err in runoutput.iter_urls(chosen, storage_options, url_of=lambda i: keys[i]):
            if err is None:
                try:
                    cards[i]["original"] = _data_uri(thumbnail(data, None, thumb_size))
                except Exception:  # noqa: BLE001
                    pass
    page = render(
        output_url, summary, hist, errors, [cards[i] for i in chosen], len(chosen), len(ok),
        include_originals, dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"), audit,
    )
    target = out_path or runoutput.join(output_url, REPORT_FILE)
    runoutput.write_bytes(target, page.encode("utf-8"), storage_options)
    return target


def _read_audit(output_url: str, storage_options: dict | None) -> dict | None:
    """``OUTPUT/_audit.json`` when ``fuzzy-people audit`` has run, else None."""
    try:
        value = json.loads(runoutput.read_bytes(runoutput.join(output_url, AUDIT_FILE), storage_options))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _common_dir(keys: list[str | None]) -> str:
    vals = [k for k in keys if k]
    if not vals:
        return ""
    first, last = min(vals), max(vals)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    common = first[:n]
    return common[: common.rfind("/")] if "/" in common else ""


# ---------------------------------------------------------------------------- cli


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUTPUT", help="output prefix of a finished run (local dir or s3://...)")
    parser.add_argument("--include-originals", action="store_true",
                        help="also show the original inputs (the page then holds identifiable people; it says so)")
    parser.add_argument("--storage-options", metavar="JSON", help="JSON object of fsspec/s3fs options (never logged)")
    parser.add_argument("--out", metavar="FILE", help=f"where to write the page (default: OUTPUT/{REPORT_FILE})")
    parser.add_argument("--max-grid", type=int, default=MAX_GRID, help="most thumbnails in the grid (default: %(default)s)")


def command(ns: argparse.Namespace) -> int:
    from .config import parse_storage_options

    options = parse_storage_options(ns.storage_options)
    if ns.max_grid < 0:
        print("fuzzy-people: error: --max-grid must be >= 0", file=sys.stderr)
        return 2
    try:
        path = build_report(ns.output, options, include_originals=ns.include_originals, out_path=ns.out,
                            max_grid=ns.max_grid)
    except runoutput.RunOutputError as exc:
        print(f"fuzzy-people: error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0
