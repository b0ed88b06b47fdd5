"""``--attack-test-html``: the page holds what it promises, and nothing from outside.

The document comes from real binarization tests on the digits MLP (a strong
PGD that passes, the identity that fails, one call with a claim), merged by
``RunResults`` as the plugin merges them. The page is parsed with
``html.parser``: the summary table (one row per call, with ASR and counts),
the histograms (their bars add up to the conclusive samples), the per-sample
rows, and the pictures, decoded back from their PNG data URIs and compared
with the inputs they show. When Debian's ``chromium`` is on the machine, a
real headless browser renders the page too. The option itself, under xdist,
is exercised by ``tests/test_baselines.py``'s end-to-end run.
"""

from __future__ import annotations

import base64
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import identity

from pytest_attacktest.engine.report import MAX_EXAMPLES
from pytest_attacktest.html_report import image_layout, png_data_uri, render_html
from pytest_attacktest.session import AttackTestSession, RunResults, plain

torch = pytest.importorskip("torch")

N = 16


@pytest.fixture(scope="module")
def document(one_torch_thread: None) -> dict[str, Any]:
    """Two attack tests as the plugin records them; one call carries a claim."""
    from digits_models import held_out, torch_mlp

    import attacks
    from pytest_attacktest import binarization_test

    x, y = (torch.from_numpy(a) for a in held_out(N))
    model = torch_mlp()
    strong = binarization_test(
        model, x, y, attack=attacks.PGD("linf", steps=10), epsilon=0.1, n_validation=4
    )
    weak = binarization_test(model, x, y, attack=identity, epsilon=0.1, n_validation=4)
    claim = {"claim": 0.9, "robust_accuracy": 0.25, "verdict": "failed", "n_robust": 4}
    results = RunResults()
    strong_record = plain({**strong.to_dict(), "seconds": 0.5, "claim": claim})
    results.add("t.py::test_strong", "call", "failed", [strong_record])
    results.add(
        "t.py::test_weak[<script>]", "call", "failed", [plain({**weak.to_dict(), "seconds": 0.1})]
    )
    session = AttackTestSession(enabled=True, enabled_by="--attack-test", seed=0, samples=N)
    return results.document(session, pytest_version=pytest.__version__, exitstatus=1)  # type: ignore[no-any-return]


class _Page(HTMLParser):
    """Collects what the assertions need while parsing."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.stack: list[str] = []
        self.summary_rows: list[list[str]] = []
        self.sample_rows = 0
        self.in_summary = False
        self.row: list[str] | None = None
        self.cell: list[str] | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "table" and a.get("id") == "summary":
            self.in_summary = True
        if tag == "tr" and self.in_summary and a.get("class") == "test":
            self.row = []
        if tag == "tr" and "sample" in (a.get("class") or "").split():
            self.sample_rows += 1
        if tag == "td" and self.row is not None:
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self.row is not None and self.cell is not None:
            self.row.append("".join(self.cell).strip())
            self.cell = None
        if tag == "tr" and self.row is not None:
            self.summary_rows.append(self.row)
            self.row = None
        if tag == "table":
            self.in_summary = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self.cell is not None:
            self.cell.append(data)

    def find(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [
            a
            for t, a in self.tags
            if t == tag and all(attrs[k] in (a.get(k) or "").split() for k in attrs)
        ]


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


def _decode_png(uri: str) -> np.ndarray:
    """The pixels of a PNG written by ``png_data_uri`` (8 bits, filter 0): (H, W, C)."""
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    data = base64.b64decode(uri[len(prefix) :])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks[kind] = body
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert depth == 8
    channels = {0: 1, 2: 3}[color]
    raw = zlib.decompress(chunks[b"IDAT"])
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, 1 + width * channels)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(height, width, channels)


def test_png_round_trip_and_layouts() -> None:
    gray = [[[0], [128]], [[255], [7]]]
    assert _decode_png(png_data_uri(gray)).tolist() == gray
    rgb = [[[1, 2, 3], [4, 5, 6], [7, 8, 9]]]
    assert _decode_png(png_data_uri(rgb)).tolist() == rgb
    with pytest.raises(ValueError, match="1 or 3"):
        png_data_uri([[[1, 2]]])
    assert image_layout([64]) == (8, 8, 1, "hw")
    assert image_layout([784]) == (28, 28, 1, "hw")
    assert image_layout([3, 32, 32]) == (32, 32, 3, "chw")
    assert image_layout([32, 32, 3]) == (32, 32, 3, "hwc")
    assert image_layout([28, 28]) == (28, 28, 1, "hw")
    for not_image in ([10], [63], [5, 7, 9], [2, 3, 4, 5]):
        assert image_layout(not_image) is None


def test_engine_keeps_a_few_bounded_examples(document: dict[str, Any]) -> None:
    report = document["tests"][0]["reports"][0]
    examples = report["examples"]
    assert len(examples) == MAX_EXAMPLES
    assert [e["index"] for e in examples] == list(range(MAX_EXAMPLES))
    assert all(e["shape"] == [64] and e["bounds"] == [0.0, 1.0] for e in examples)
    delta = np.abs(np.array(examples[0]["adversarial"]) - np.array(examples[0]["clean"]))
    assert 0 < delta.max() <= 0.1 + 1e-6  # a real perturbation inside the ball


def test_page_contains_what_it_promises(document: dict[str, Any]) -> None:
    text = render_html(document)
    page = _parse(text)

    # Summary: one row per call, with ASR, counts, the claim.
    rows = {row[0]: row for row in page.summary_rows}
    assert set(rows) == {"t.py::test_strong", "t.py::test_weak[<script>]"}
    strong, weak = rows["t.py::test_strong"], rows["t.py::test_weak[<script>]"]
    assert strong[1:8] == ["failed", "passed", "1.000", "0.950", str(N), str(N), f"0/{N}"]
    assert strong[8:10] == ["0.250", "0.900 failed"]
    assert weak[2:6] == ["failed", "0.000", "0.950", "0"]

    # Histograms: the overall one and one per test; bars add up to the conclusive samples.
    tests = document["tests"]
    conclusive = [r["n_conclusive"] for t in tests for r in t["reports"]]
    overall = [a for a in page.find("svg", **{"class": "histogram"}) if a["id"] == "histogram-all"]
    assert len(overall) == 1
    assert len(page.find("svg", **{"class": "histogram"})) == 1 + len(tests)
    bars = [int(a["data-count"] or 0) for a in page.find("rect", **{"class": "bar"})]
    assert sum(bars) == 2 * sum(conclusive)  # each sample once overall, once in its test
    assert sum(int(a["data-count"] or 0) for a in page.find("rect", **{"class": "missed"})) == 2 * N

    # Per-sample rows: every sample of every call.
    assert page.sample_rows == sum(len(r["samples"]) for t in tests for r in t["reports"])

    # Pictures: clean, adversarial and perturbation for each kept example, decoded back.
    images = page.find("img")
    assert len(images) == 3 * MAX_EXAMPLES * len(tests)
    example = tests[0]["reports"][0]["examples"][0]
    shown = {a["class"]: _decode_png(a["src"] or "") for a in images[:3]}
    expected = np.clip(np.round(np.array(example["clean"]) * 255), 0, 255).reshape(8, 8)
    assert np.array_equal(shown["clean"][:, :, 0], expected)
    delta = np.array(example["adversarial"]) - np.array(example["clean"])
    assert not np.array_equal(shown["adversarial"], shown["clean"])
    half = np.abs(delta).max()
    expected_delta = np.clip(np.round((delta + half) / (2 * half) * 255), 0, 255).reshape(8, 8)
    assert np.array_equal(shown["perturbation"][:, :, 0], expected_delta)  # grey is 0

    # Self-contained, and a node id cannot inject markup.
    assert not page.find("script")
    assert not page.find("link")
    for tag, attrs in page.tags:
        for key in ("src", "href"):
            value = attrs.get(key)
            assert value is None or value.startswith(("data:", "#")), (tag, value)
    assert "<script>" not in text
    assert "<style>" in text


def test_metadata_leaves_out_an_unset_device_and_time_stays_on_one_line(
    document: dict[str, Any],
) -> None:
    """No "device None" row, a device given is shown, and "0.50 s" never wraps."""
    assert document["metadata"]["device"] is None  # no --attack-test-device in this run
    page = _parse(render_html(document))
    head = "".join(page.text).split("Summary")[0]  # the metadata table
    assert "seed0" in head
    assert "device" not in head
    assert "None" not in head
    with_device = {**document, "metadata": {**document["metadata"], "device": "cuda:1"}}
    shown = "".join(_parse(render_html(with_device)).text)
    assert "devicecuda:1" in shown.split("Summary")[0]

    html_text = render_html(document)
    times = page.find("td", **{"class": "time"})
    assert len(times) == len(page.summary_rows) == 2
    assert [row[-1] for row in page.summary_rows] == ["0.50\xa0s", "0.10\xa0s"]
    assert "td.time, th.time { white-space: nowrap; }" in html_text


def test_claim_passed_within_sampling_error_says_how_many_samples_would_settle_it(
    document: dict[str, Any],
) -> None:
    from pytest_attacktest.engine.claims import check_claim

    counts = {"n_samples": 64, "n_clean_correct": 64, "n_robust": 40}
    result = check_claim(0.65, 0.0, {**counts, "n_invalid": 0, "n_rejected": 0}, "passed")
    assert result.passed
    tests = [dict(t) for t in document["tests"]]
    tests[0] = {**tests[0], "reports": [{**tests[0]["reports"][0], "claim": result.to_dict()}]}
    text = " ".join(_parse(render_html({**document, "tests": tests})).text)
    assert f"about {result.samples_to_settle} samples would settle it" in text
    assert "would settle it" not in " ".join(_parse(render_html(document)).text)


@pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")),
    reason="needs Debian's chromium (apt-get install chromium) to render the page",
)
def test_headless_chromium_renders_the_page(document: dict[str, Any], tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser is not None
    page = tmp_path / "report.html"
    page.write_text(render_html(document), encoding="utf-8")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(
        [*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = _parse(dom.stdout)
    assert len(rendered.find("img")) == 3 * MAX_EXAMPLES * 2
    assert len(rendered.find("svg", **{"class": "histogram"})) == 3
    assert len(rendered.summary_rows) == 2
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*flags, "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000  # not a blank page
