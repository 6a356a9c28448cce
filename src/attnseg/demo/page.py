"""The demo's results as text (the console table) and as ``index.html``."""

from __future__ import annotations

import html
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from attnseg.fileio import atomic_write_text


def comparison_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Plain-text table: one row per recipe with mIoU, pixel accuracy, mean Dice and seconds."""
    width = max([len("recipe")] + [len(str(r.get("title", key))) for key, r in results.items()])
    rows = [f"{'recipe':<{width}}  {'mIoU':>7}  {'Acc':>7}  {'Dice':>7}  {'seconds':>7}", "-" * (width + 38)]
    for key, result in results.items():
        rows.append(f"{str(result.get('title', key)):<{width}}  {_fmt(result.get('mIoU'))}  {_fmt(result.get('Acc'))}  "
                    f"{_fmt(result.get('mDice'))}  {float(result.get('seconds', 0.0)):>7.1f}")  # fmt: skip
    return "\n".join(rows)


def _fmt(value: Any) -> str:
    return f"{float(value):>7.4f}" if value is not None else f"{'-':>7}"



def write_index_html(
    out_dir: str | os.PathLike, record: Mapping[str, Any], pictures: Sequence[Mapping[str, Any]]
) -> Path:
    """Write ``<out_dir>/index.html``: metrics table, per-class IoU, and the pictures (relative links).

    Args:
        out_dir: demo folder (the picture paths are relative to it).
        record: the ``demo_metrics.json`` content.
        pictures: one dict per image from `PictureWriter.written`.
    """
    out_dir = Path(out_dir)
    esc = html.escape
    results: Mapping[str, Mapping[str, Any]] = record.get("results", {})
    seconds = record.get("seconds", {})
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>attnseg demo</title>',
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:1400px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th:first-child,td:first-child{text-align:left}"
        "img{max-width:100%;border:1px solid #ddd}figure{display:inline-block;margin:4px;vertical-align:top}"
        "figcaption{font-size:80%;color:#444}.row{margin-bottom:1.5em}.best{font-weight:bold}</style></head><body>",
        f"<h1>attnseg demo: {esc(str(record.get('model', '')))} on synthetic street scenes</h1>",
        f"<p>{int(record.get('iterations', 0))} training iterations"
        + (f" (of {int(record.get('planned_iterations', 0))} planned, stopped for the time budget)"
           if record.get("stopped_by_deadline") else "")
        + f"; data {float(seconds.get('data', 0)):.0f} s, training {float(seconds.get('train', 0)):.0f} s, "
        f"evaluation and pictures {float(seconds.get('evaluate', 0)):.0f} s, total "
        f"{float(seconds.get('total', 0)) / 60:.1f} min on {int(record.get('threads', 0))} threads "
        f"({esc(str(record.get('cpu') or platform.processor() or platform.machine()))}, "
        f"{esc(str(record.get('precision', '')))}). Recipe: {esc(str((record.get('recipe') or {}).get('title', '')))}."
        f" Run folder: <code>{esc(str(record.get('run_dir', '')))}</code>.</p>",
        "<h2>Metrics on the synthetic val split</h2>",
        _results_table(results),
    ]
    if results:
        parts.append("<h2>Per-class IoU</h2>")
        parts.append(_class_table_html(results))
    parts.append("<h2>Pictures</h2>")
    legend = ("<p>Each row: prediction overlay; input | ground truth | prediction overlay; for MscaleOCR the learned "
              "attention of each scale, the share each scale has in the fused prediction (in the RGB picture: red the "
              "smallest scale, green the middle one, blue the largest) and each scale's own prediction. Attention and "
              "shares use the viridis colour map: dark blue 0, green 0.5, yellow 1.</p>")  # fmt: skip
    parts.append(legend)
    for picture in pictures:
        parts.append(f'<div class="row"><h3>{esc(str(picture.get("name", "")))}</h3>')
        recipe = f" ({picture['recipe']})" if picture.get("recipe") else ""
        parts.append(_figure(picture.get("compare"), f"input | ground truth | prediction{recipe}", width=1200))
        parts.append("<br>")
        parts.append(_figure(picture.get("overlay"), "prediction overlay", width=400))
        if picture.get("shares_rgb"):
            scales = picture.get("shares_scales", [])
            named = ", ".join(f"{channel} {scale:g}x" for channel, scale in zip("RGB", scales))
            parts.append(_figure(picture["shares_rgb"], f"scale shares ({named})", width=400))
        for scale, path in picture.get("attention", {}).items():
            parts.append(_figure(path, f"attention of scale {scale}x", width=300))
        for scale, path in picture.get("weights", {}).items():
            parts.append(_figure(path, f"share of {scale}x in the fused prediction", width=300))
        for scale, path in picture.get("scale_predictions", {}).items():
            parts.append(_figure(path, f"prediction at {scale}x alone", width=300))
        parts.append("</div>")
    parts.append(f"<p>Numbers: <a href=\"demo_metrics.json\">demo_metrics.json</a>. Evaluate again with "
                 f"<code>attnseg eval {esc(str(record.get('run_dir', '')))}/config.yaml --weights "
                 f"{esc(str(record.get('run_dir', '')))}</code>.</p>")  # fmt: skip
    parts.append("</body></html>")
    path = out_dir / "index.html"
    atomic_write_text(path, "\n".join(parts) + "\n")
    return path


def _figure(path: Any, caption: str, width: int) -> str:
    if not path:
        return ""
    src = html.escape(str(path), quote=True)
    return (f'<figure><a href="{src}"><img src="{src}" width="{width}" alt="{html.escape(caption, quote=True)}"></a>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")  # fmt: skip


def _results_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    if not results:
        return "<p>No evaluation results.</p>"
    best = max((r.get("mIoU") or 0.0) for r in results.values())
    rows = ["<table><tr><th>inference</th><th>mIoU</th><th>pixel acc</th><th>mean Dice</th><th>kappa</th>"
            "<th>seconds</th></tr>"]  # fmt: skip
    for key, result in results.items():
        miou = result.get("mIoU")
        css = ' class="best"' if miou is not None and miou == best else ""
        rows.append(f"<tr{css}><td>{html.escape(str(result.get('title', key)))}</td><td>{_num(miou)}</td>"
                    f"<td>{_num(result.get('Acc'))}</td><td>{_num(result.get('mDice'))}</td>"
                    f"<td>{_num(result.get('Kappa'))}</td>"
                    f"<td>{float(result.get('seconds', 0)):.1f}</td></tr>")  # fmt: skip
    rows.append("</table>")
    return "\n".join(rows)


def _class_table_html(results: Mapping[str, Mapping[str, Any]]) -> str:
    keys = list(results)
    classes = list((results[keys[0]].get("classes") or {}).keys())
    head = "".join(f"<th>{html.escape(str(results[k].get('title', k)))}</th>" for k in keys)
    rows = [f"<table><tr><th>class</th>{head}</tr>"]
    for name in classes:
        cells = "".join(f"<td>{_num(((results[k].get('classes') or {}).get(name) or {}).get('IoU'))}</td>"
                        for k in keys)  # fmt: skip
        rows.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _num(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4f}"
