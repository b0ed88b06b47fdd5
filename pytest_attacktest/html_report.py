"""``--attack-test-html PATH``: one self-contained page about a run's attack tests.

Why one file with nothing outside it: it is attached to CI runs and mailed
around, and must open anywhere, offline, years later. So the CSS is inline,
charts are inline SVG and pictures are PNG ``data:`` URIs written by a tiny
encoder below (no Pillow, no matplotlib, no JavaScript).

What the page holds, from the JSON document of
:meth:`pytest_attacktest.session.RunResults.document`:

- the run's metadata and a summary table (one row per fixture call: outcome,
  verdict, ASR against the threshold, conclusive and inconclusive counts,
  robust accuracy against the claim, time);
- a histogram of the logit-difference improvement of all conclusive samples
  (``SampleResult.logit_difference``: above 0 the attack found a point more
  adversarial than the boundary point the readout was built on), and one per
  test, bars split by whether the attack's point was a verified adversarial;
- per test, the likely causes of a failure, the claim gate's figures, the
  per-sample rows and, when the inputs look like images, the clean point, the
  attack's point and the perturbation of a few samples as pictures.

Pure formatting of plain data: no pytest, no NumPy, no ML framework.
"""

from __future__ import annotations

import base64
import html
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["HISTOGRAM_BINS", "image_layout", "png_data_uri", "render_html"]

#: Bars of each histogram.
HISTOGRAM_BINS = 20

#: Rendered size of the longer side of a picture, in CSS pixels (pixelated).
PICTURE_PIXELS = 96

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th { background: #f0f0f0; } td.name, th.name { text-align: left; font-family: monospace; }
td.time, th.time { white-space: nowrap; }
.passed { color: #176b2c; } .failed, .error { color: #b00020; font-weight: bold; }
.meta td { text-align: left; }
figure.example { display: inline-block; margin: 0 1em 1em 0; text-align: center; }
figure.example img { image-rendering: pixelated; border: 1px solid #999; margin: 2px; }
figcaption { font-size: 0.85em; color: #555; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
details { margin: 0.5em 0; }
"""


# --------------------------------------------------------------------------- helpers


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _cls(verdict: object) -> str:
    return f' class="{_e(verdict)}"' if verdict in ("passed", "failed", "error") else ""


# --------------------------------------------------------------------------- PNG


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def png_data_uri(pixels: Sequence[Sequence[Sequence[int]]]) -> str:
    """A ``data:image/png`` URI of an image given as rows of pixels of 1 or 3 bytes each.

    Written by hand (8-bit grayscale or RGB, one IDAT chunk, no filtering): a
    report must not need an imaging library to show a 32x32 picture.
    """
    height = len(pixels)
    width = len(pixels[0]) if height else 0
    channels = len(pixels[0][0]) if width else 1
    if channels not in (1, 3) or not height or not width:
        raise ValueError("pixels must be a non-empty H x W x (1 or 3) nested sequence")
    raw = b"".join(b"\x00" + bytes(v for px in row for v in px) for row in pixels)
    color_type = 0 if channels == 1 else 2
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(raw, 9))
        + _chunk(b"IEND", b"")
    )
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def image_layout(shape: Sequence[int]) -> tuple[int, int, int, str] | None:
    """``(height, width, channels, order)`` when an input of this shape looks like an image.

    Accepted: ``(H, W)``; ``(C, H, W)`` and ``(H, W, C)`` with 1 or 3
    channels; and flat vectors of a square length (64 -> 8x8, 784 -> 28x28),
    shown as grayscale. Anything else gets no picture (``None``).
    """
    dims = [int(d) for d in shape]
    if len(dims) == 1:
        side = math.isqrt(dims[0])
        return (side, side, 1, "hw") if side >= 4 and side * side == dims[0] else None
    if len(dims) == 2 and min(dims) >= 2:
        return dims[0], dims[1], 1, "hw"
    if len(dims) == 3:
        if dims[0] in (1, 3) and min(dims[1:]) >= 2:
            return dims[1], dims[2], dims[0], "chw"
        if dims[2] in (1, 3) and min(dims[:2]) >= 2:
            return dims[0], dims[1], dims[2], "hwc"
    return None


def _pixels(
    values: Sequence[float | None], layout: tuple[int, int, int, str], lo: float, hi: float
) -> list[list[list[int]]]:
    """Values mapped linearly from ``[lo, hi]`` to ``[0, 255]`` (missing values: 0)."""
    height, width, channels, order = layout
    span = hi - lo if hi > lo else 1.0

    def byte(v: float | None) -> int:
        if v is None or not math.isfinite(v):
            return 0
        return max(0, min(255, round((v - lo) / span * 255)))

    def at(r: int, c: int, ch: int) -> float | None:
        if order == "chw":
            return values[(ch * height + r) * width + c]
        return values[(r * width + c) * channels + ch]

    return [
        [[byte(at(r, c, ch)) for ch in range(channels)] for c in range(width)]
        for r in range(height)
    ]


def _example_figures(report: Mapping[str, Any]) -> str:
    examples: Sequence[Mapping[str, Any]] = report.get("examples") or []
    if not examples:
        return ""
    layout = image_layout(examples[0]["shape"])
    if layout is None:
        return (
            f'<p class="no-pictures">Inputs of shape {_e(tuple(examples[0]["shape"]))} do not '
            "look like images: no pictures.</p>"
        )
    samples = {s.get("index"): s for s in report.get("samples") or []}
    height, width = layout[0], layout[1]
    scale = max(1, PICTURE_PIXELS // max(height, width))
    size = f'width="{width * scale}" height="{height * scale}"'
    parts = ['<div class="examples">']
    for example in examples:
        lo, hi = example["bounds"]
        clean, adv = example["clean"], example["adversarial"]
        delta = [None if a is None or c is None else a - c for a, c in zip(adv, clean, strict=True)]
        biggest = max((abs(d) for d in delta if d is not None and math.isfinite(d)), default=0.0)
        half = biggest if biggest > 0 else 1.0
        index = example["index"]
        sample = samples.get(index, {})
        found = (
            "found"
            if sample.get("success")
            else "missed"
            if sample.get("conclusive")
            else "inconclusive"
        )
        pictures = [
            ("clean", _pixels(clean, layout, lo, hi)),
            ("adversarial", _pixels(adv, layout, lo, hi)),
            ("perturbation", _pixels(delta, layout, -half, half)),
        ]
        parts.append('<figure class="example">')
        for kind, pixels in pictures:
            parts.append(
                f'<img class="{kind}" alt="{kind} of sample {_e(index)}" {size} '
                f'src="{png_data_uri(pixels)}">'
            )
        parts.append(
            f"<figcaption>sample {_e(index)}: clean, attack's point ({found}), perturbation "
            f"(grey 0, black/white &#177;{biggest:.3g})</figcaption></figure>"
        )
    parts.append("</div>")
    return "".join(parts)


# --------------------------------------------------------------------------- histogram


def _histogram(samples: Sequence[Mapping[str, Any]], title: str, ident: str) -> str:
    """Inline SVG: logit-difference improvement of conclusive samples, stacked by success."""
    points = [
        (float(s["logit_difference"]), bool(s.get("success")))
        for s in samples
        if s.get("conclusive")
        and s.get("logit_difference") is not None
        and math.isfinite(float(s["logit_difference"]))
    ]
    if not points:
        return f'<p class="histogram-empty" id="{_e(ident)}">{_e(title)}: no conclusive sample.</p>'
    values = [v for v, _ in points]
    lo, hi = min(*values, 0.0), max(*values, 0.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 1.0, hi + 1.0
    width_bin = (hi - lo) / HISTOGRAM_BINS
    found = [0] * HISTOGRAM_BINS
    missed = [0] * HISTOGRAM_BINS
    for value, success in points:
        b = min(HISTOGRAM_BINS - 1, int((value - lo) / width_bin))
        (found if success else missed)[b] += 1
    tallest = max(f + m for f, m in zip(found, missed, strict=True))
    w, h, left, bottom, top = 420, 160, 36, 28, 20
    plot_w, plot_h = w - left - 10, h - bottom - top
    bar_w = plot_w / HISTOGRAM_BINS

    def x_of(value: float) -> float:
        return left + (value - lo) / (hi - lo) * plot_w

    parts = [
        f'<svg class="histogram" id="{_e(ident)}" xmlns="http://www.w3.org/2000/svg" '
        f'width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
        f'aria-label="{_e(title)}"><title>{_e(title)}</title>',
        f'<text x="{left}" y="14">{_e(title)} ({len(points)} conclusive samples)</text>',
    ]
    for b in range(HISTOGRAM_BINS):
        x = left + b * bar_w
        y = float(top + plot_h)
        for count, color, label in (
            (found[b], "#2e8b57", "found"),
            (missed[b], "#c0392b", "missed"),
        ):
            if not count:
                continue
            bar_h = count / tallest * plot_h
            y -= bar_h
            start = lo + b * width_bin
            parts.append(
                f'<rect class="bar {label}" x="{x:.1f}" y="{y:.1f}" width="{bar_w - 1:.1f}" '
                f'height="{bar_h:.1f}" fill="{color}" data-count="{count}">'
                f"<title>{count} {label} in [{start:.3g}, {start + width_bin:.3g})</title></rect>"
            )
    axis_y = top + plot_h
    zero = x_of(0.0)
    parts += [
        f'<line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}" stroke="#333"/>',
        f'<line class="zero" x1="{zero:.1f}" y1="{top}" x2="{zero:.1f}" y2="{axis_y}" '
        'stroke="#333" stroke-dasharray="3,3"/>',
        f'<text x="{left}" y="{axis_y + 14}">{lo:.3g}</text>',
        (
            f'<text x="{zero:.1f}" y="{axis_y + 14}" text-anchor="middle">0</text>'
            if min(zero - left, left + plot_w - zero) > 20  # not over an end's label
            else ""
        ),
        f'<text x="{left + plot_w}" y="{axis_y + 14}" text-anchor="end">{hi:.3g}</text>',
        f'<text x="{left + plot_w}" y="{axis_y + 26}" text-anchor="end">'
        "z(attack) - z(boundary point); green: verified adversarial, red: missed</text>",
        f'<text x="4" y="{top + 8}">{tallest}</text>',
        "</svg>",
    ]
    return "".join(parts)


# --------------------------------------------------------------------------- tables


_SAMPLE_COLUMNS = (
    ("index", "index"),
    ("conclusive", "conclusive"),
    ("success", "found"),
    ("distance", "distance"),
    ("logit_difference", "logit diff."),
    ("inner_accuracy", "inner acc."),
    ("boundary_accuracy", "boundary acc."),
    ("random_success", "random hit"),
    ("outside_ball", "outside ball"),
    ("outside_bounds", "outside bounds"),
    ("rejected", "rejected"),
    ("train_margin", "train margin"),
    ("reason", "reason"),
)


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return _num(value, 4)
    if value is None:
        return "-"
    return _e(value)


def _sample_table(report: Mapping[str, Any]) -> str:
    samples: Sequence[Mapping[str, Any]] = report.get("samples") or []
    head = "".join(f"<th>{_e(title)}</th>" for _, title in _SAMPLE_COLUMNS)
    rows = []
    for s in samples:
        state = (
            "passed" if s.get("success") else "failed" if s.get("conclusive") else "inconclusive"
        )
        cells = "".join(f"<td>{_cell(s.get(key))}</td>" for key, _ in _SAMPLE_COLUMNS)
        rows.append(f'<tr class="sample {state}">{cells}</tr>')
    return (
        f"<details><summary>per-sample results ({len(samples)} samples)</summary>"
        f'<table class="samples"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody>'
        "</table></details>"
    )


def _calls(entry: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any] | None]]:
    reports = entry.get("reports") or []
    if not reports:
        return [(str(entry["nodeid"]), None)]
    if len(reports) == 1:
        return [(str(entry["nodeid"]), reports[0])]
    return [(f"{entry['nodeid']} [call {n}]", r) for n, r in enumerate(reports, start=1)]


_SUMMARY_HEADER = (
    "test",
    "outcome",
    "verdict",
    "ASR",
    "threshold",
    "found",
    "conclusive",
    "inconclusive",
    "robust acc.",
    "claim",
    "time",
)


def _summary_table(tests: Sequence[Mapping[str, Any]], anchors: Mapping[str, str]) -> str:
    head = "".join(
        f"<th{' class=name' if i == 0 else ' class=time' if t == 'time' else ''}>{_e(t)}</th>"
        for i, t in enumerate(_SUMMARY_HEADER)
    )
    rows = []
    for entry in tests:
        for name, report in _calls(entry):
            link = f'<a href="#{anchors[str(entry["nodeid"])]}">{_e(name)}</a>'
            outcome = entry.get("outcome")
            if report is None and entry.get("error"):
                cells = [f'<td class="name">{link}</td>', f"<td{_cls(outcome)}>{_e(outcome)}</td>"]
                span = len(_SUMMARY_HEADER) - 2
                cells += [f'<td class="error" colspan="{span}">error: {_e(entry["error"])}</td>']
                rows.append(f'<tr class="test">{"".join(cells)}</tr>')
                continue
            if report is None:
                cells = [f'<td class="name">{link}</td>', f"<td{_cls(outcome)}>{_e(outcome)}</td>"]
                cells += ["<td>no report</td>"] + ["<td>-</td>"] * (len(_SUMMARY_HEADER) - 3)
                rows.append(f'<tr class="test">{"".join(cells)}</tr>')
                continue
            claim = report.get("claim") or {}
            n_conclusive = report.get("n_conclusive", 0)
            n_success = sum(
                1 for s in report.get("samples") or [] if s.get("conclusive") and s.get("success")
            )
            cells = [
                f'<td class="name">{link}</td>',
                f"<td{_cls(outcome)}>{_e(outcome)}</td>",
                f"<td{_cls(report.get('verdict'))}>{_e(report.get('verdict'))}</td>",
                f'<td class="asr">{_num(report.get("asr"))}</td>',
                f"<td>{_num(report.get('threshold'))}</td>",
                f'<td class="found">{n_success}</td>',
                f'<td class="conclusive">{n_conclusive}</td>',
                f'<td class="inconclusive">{report.get("n_inconclusive")}/'
                f"{report.get('n_samples')}</td>",
                f'<td class="robust">{_num(claim.get("robust_accuracy"))}</td>',
                f"<td{_cls(claim.get('verdict'))}>"
                + (f"{_num(claim.get('claim'))} {_e(claim.get('verdict'))}" if claim else "-")
                + "</td>",
                # One line: "0.05 s" must not wrap in a narrow column.
                f'<td class="time">{_num(report.get("seconds"), 2)}&nbsp;s</td>',
            ]
            rows.append(f'<tr class="test">{"".join(cells)}</tr>')
    return (
        f'<table id="summary"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _claim_paragraph(claim: Mapping[str, Any]) -> str:
    low, high = claim.get("interval") or (None, None)
    return (
        f'<p class="claim"><b{_cls(claim.get("verdict"))}>claim gate {_e(claim.get("verdict"))}'
        f"</b>: robust accuracy {_num(claim.get('robust_accuracy'))} "
        f"({_e(claim.get('n_robust'))}/{_e(claim.get('n_samples'))} samples, 95% interval "
        f"{_num(low)}-{_num(high)}), claim {_num(claim.get('claim'))}, tolerance "
        f"{_e(claim.get('tolerance'))}, clean accuracy {_num(claim.get('clean_accuracy'))}, "
        f"binarization test {_e(claim.get('attack_verdict'))}{_unsettled(claim)}</p>"
    )


def _unsettled(claim: Mapping[str, Any]) -> str:
    """For a gate that passed within sampling error: how many samples would settle it."""
    settle = claim.get("samples_to_settle")
    if claim.get("verdict") != "passed" or not settle:
        return ""
    return (
        f"; the measurement differs from the claim within sampling error only: about "
        f"{_e(settle)} samples would settle it"
    )


def _test_section(entry: Mapping[str, Any], anchor: str) -> str:
    parts = [f'<section class="test" id="{anchor}"><h2>{_e(entry["nodeid"])}</h2>']
    for name, report in _calls(entry):
        if report is None and entry.get("error"):
            parts.append(f'<p class="error">error: {_e(entry["error"])}</p>')
            continue
        if report is None:
            parts.append(
                f"<p>No binarization report: the test ended as {_e(entry.get('outcome'))} "
                "before a fixture call finished.</p>"
            )
            continue
        n_success = sum(
            1 for s in report.get("samples") or [] if s.get("conclusive") and s.get("success")
        )
        parts += [
            f"<h3>{_e(name)}: {_e(report.get('attack'))}</h3>",
            f'<p class="counts"><b{_cls(report.get("verdict"))}>{_e(report.get("verdict"))}</b>: '
            f"ASR {_num(report.get('asr'))} ({n_success}/{_e(report.get('n_conclusive'))} "
            f"conclusive samples; threshold {_num(report.get('threshold'))}), "
            f"{_e(report.get('n_inconclusive'))}/{_e(report.get('n_samples'))} inconclusive; "
            f"{_e(report.get('norm'))} epsilon={_e(report.get('epsilon'))}, "
            f"seed={_e(report.get('seed'))}</p>",
        ]
        if report.get("claim"):
            parts.append(_claim_paragraph(report["claim"]))
        causes = report.get("causes") or []
        if causes:
            parts.append(
                '<ul class="causes">' + "".join(f"<li>{_e(c)}</li>" for c in causes) + "</ul>"
            )
        notes = report.get("warnings") or []
        if notes:
            parts.append(
                '<ul class="warnings">'
                + "".join(f"<li>warning: {_e(w)}</li>" for w in notes)
                + "</ul>"
            )
        parts.append(
            _histogram(report.get("samples") or [], "logit-difference improvement", f"{anchor}-h")
        )
        parts.append(_example_figures(report))
        parts.append(_sample_table(report))
    parts.append("</section>")
    return "".join(parts)


def render_html(document: Mapping[str, Any]) -> str:
    """The whole page for a JSON document of ``RunResults.document``."""
    metadata: Mapping[str, Any] = document.get("metadata") or {}
    tests: Sequence[Mapping[str, Any]] = [
        t for t in document.get("tests") or [] if t.get("reports") or t.get("outcome") != "skipped"
    ]
    anchors = {str(t["nodeid"]): f"test-{n}" for n, t in enumerate(tests, start=1)}
    # A field without a value is left out: "device None" (no --attack-test-device,
    # models left where they were) reads as if no device had run the tests.
    meta_rows = "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(metadata[k])}</td></tr>"
        for k in ("date", "version", "seed", "samples", "threshold", "device", "python", "pytest")
        if metadata.get(k) is not None
    )
    counts = ", ".join(f"{n} {_e(k)}" for k, n in sorted((document.get("summary") or {}).items()))
    all_samples = [s for t in tests for r in t.get("reports") or [] for s in r.get("samples") or []]
    body = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>Attack tests</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Attack tests (binarization test)</h1>",
        f'<table class="meta">{meta_rows}</table>',
        f"<p>{counts or 'no attack tests'}.</p>",
        "<h2>Summary</h2>",
        _summary_table(tests, anchors),
        "<h2>Logit-difference improvement, all tests</h2>",
        _histogram(all_samples, "all tests", "histogram-all"),
        *(_test_section(t, anchors[str(t["nodeid"])]) for t in tests),
        "</body></html>",
    ]
    return "\n".join(body) + "\n"
