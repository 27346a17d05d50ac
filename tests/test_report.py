"""The HTML report: its numbers, its self-containedness, and that it renders in a real headless browser."""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from speccore import report
from speccore.cli import main
from tests.analytics_data import fabricate

CHROMIUM = Path("/usr/bin/chromium")
PLOTS = ("throughput", "cost", "acceptance_by_position", "k_distribution", "k_over_time", "overhead", "oracle")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("report-data")
    fabricate(out)
    return out


def test_side_by_side_numbers(data):
    d = report.collect(data, ["r2", "r1"])
    assert [r["run_id"] for r in d["runs"]] == ["r2", "r1"]  # the order asked for
    r1 = d["runs"][1]
    assert r1["label"] == "B heuristic"
    # hand-computed in test_analytics: 4 rows, 1 error, 4 tok/s, $25 per 1M, draft share 0.25
    assert (r1["rows"], r1["errors"], r1["tok_per_s"], r1["cost_per_1m_output_tokens"], r1["draft_share"]) == \
        (4, 1, 4.0, 25.0, 0.25)
    assert {r["run_id"] for r in d["cost"]} == {"r1", "r2"}  # r3 was not asked for
    md = report.summary_markdown(d)
    assert md.splitlines()[2].startswith("| r2 | t | d2 | standard | cost | cpu | 1 | 0 | 8 | 2.67 |")


def test_unknown_run_is_refused(data, capsys):
    with pytest.raises(ValueError, match="nope.*runs there: r1, r2, r3"):
        report.collect(data, ["r1", "nope"])
    assert main(["report", "nope", "--data", str(data), "--out", str(data / "x.html")]) == 2
    assert "nope" in capsys.readouterr().err


def test_html_is_self_contained(data, tmp_path):
    out = tmp_path / "r.html"
    assert main(["report", "r1", "r2", "--data", str(data), "--out", str(out)]) == 0
    html = out.read_text()
    assert "http" not in html and "<script" not in html and not re.search(r"\b(src|href)=", html)
    assert re.findall(r'data-plot="(\w+)"', html) == list(PLOTS)
    assert "B cost" in html and "fraction of oracle" in html


def _chromium(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=timeout)


MEASURE = """<pre id="measure"></pre><script>
const out = {height: Math.ceil(document.body.getBoundingClientRect().bottom) + 24, plots: []};
for (const svg of document.querySelectorAll('svg.plot')) {
  const r = svg.getBoundingClientRect();
  const marks = [...svg.querySelectorAll('.mark')].filter(m => { const b = m.getBBox(); return b.width > 0 || b.height > 0; });
  out.plots.push({name: svg.dataset.plot, x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height, marks: marks.length});
}
document.getElementById('measure').textContent = JSON.stringify(out);
</script>"""

PIXELS = """<canvas id="c"></canvas><pre id="pixels"></pre><script>
const boxes = %s, img = new Image();
img.onload = () => {
  const c = document.getElementById('c'); c.width = img.width; c.height = img.height;
  const g = c.getContext('2d'); g.drawImage(img, 0, 0);
  const stats = (x, y, w, h) => { const d = g.getImageData(x, y, w, h).data; let ink = 0, blue = 0;
    for (let i = 0; i < d.length; i += 4) { if (d[i] + d[i+1] + d[i+2] < 720) ink++;
      if (Math.abs(d[i] - 78) < 8 && Math.abs(d[i+1] - 121) < 8 && Math.abs(d[i+2] - 167) < 8) blue++; }
    return {ink: ink / (d.length / 4), blue: blue}; };
  const out = {width: img.width, height: img.height, page: stats(0, 0, img.width, img.height), plots: {}};
  for (const b of boxes) out.plots[b.name] = stats(Math.round(b.x), Math.round(b.y), Math.round(b.w), Math.round(b.h));
  document.getElementById('pixels').textContent = JSON.stringify(out);
};
img.src = 'data:image/png;base64,%s';
</script>"""


def _pre(dom: str, id_: str) -> dict:
    m = re.search(rf'<pre id="{id_}">(.*?)</pre>', dom, re.S)
    assert m and m.group(1), f"chromium did not run the {id_} script:\n{dom[-2000:]}"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def test_report_renders_in_headless_chromium(data, tmp_path):
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("CI needs /usr/bin/chromium for the report rendering test (apt-get install -y chromium)")
        pytest.skip("/usr/bin/chromium is absent (apt-get install -y chromium); CI is not set")
    html = tmp_path / "report.html"
    report.write_report(data, ["r1", "r2"], html)
    # 1. layout: every plot is laid out at its size, with its marks (bars, lines, points) non-empty
    measured = tmp_path / "measured.html"
    measured.write_text(html.read_text().replace("</body>", MEASURE + "</body>"))
    # measured in a window as wide as the screenshot's and taller than the page, so neither has a
    # scrollbar and both lay the page out alike
    dom = _chromium("--virtual-time-budget=5000", "--window-size=1280,10000", "--dump-dom", measured.as_uri()).stdout
    layout = _pre(dom, "measure")
    plots = {p["name"]: p for p in layout["plots"]}
    assert list(plots) == list(PLOTS)
    for p in plots.values():
        assert p["w"] >= 500 and p["h"] >= 280, p
    # 2 runs: 2 bars each for throughput and cost, k in 0..6 (r1: 0..5, r2: 4, 6) x 2 runs (a share of 0
    # is a hairline bar), 3 parts x 2 runs,
    # a line per run (acceptance, k over time), and per run a line, a dashed oracle and a policy ring
    assert {n: plots[n]["marks"] for n in PLOTS} == {
        "throughput": 2, "cost": 2, "acceptance_by_position": 2, "k_distribution": 14, "k_over_time": 2,
        "overhead": 6, "oracle": 6}
    # 2. the screenshot, tall enough for the whole page
    png = tmp_path / "report.png"
    height = int(layout["height"]) + 20
    r = _chromium(f"--screenshot={png}", f"--window-size=1280,{height}", html.as_uri())
    assert png.exists() and png.stat().st_size > 10_000, r.stderr[-2000:]
    # 3. pixels: the page is not blank, and each plot's box holds ink and the first series' colour
    pix_page = tmp_path / "pixels.html"
    boxes = json.dumps([{k: p[k] for k in ("name", "x", "y", "w", "h")} for p in layout["plots"]])
    pix_page.write_text("<!DOCTYPE html><html><body>" + PIXELS % (boxes, base64.b64encode(png.read_bytes()).decode())
                        + "</body></html>")
    pixels = _pre(_chromium("--virtual-time-budget=10000", "--dump-dom", pix_page.as_uri()).stdout, "pixels")
    assert (pixels["width"], pixels["height"]) == (1280, height)
    assert pixels["page"]["ink"] > 0.02, pixels["page"]
    for name in PLOTS:
        assert pixels["plots"][name]["ink"] > 0.01 and pixels["plots"][name]["blue"] > 20, (name, pixels["plots"][name])
    if os.environ.get("SPECCORE_REPORT_PNG"):  # keep the screenshot to look at
        Path(os.environ["SPECCORE_REPORT_PNG"]).write_bytes(png.read_bytes())


def test_flow_run_ends_with_the_summary_as_markdown_artifact(data, monkeypatch):
    from types import SimpleNamespace

    import tasks.summarise as ts

    made = {}
    monkeypatch.setattr(ts, "create_table_artifact", lambda **kw: made.setdefault("table", kw))
    monkeypatch.setattr(ts, "create_markdown_artifact", lambda **kw: made.setdefault("markdown", kw))
    monkeypatch.setattr(ts.run, "finish", lambda cfg, plan: None)  # the manifest is already there
    monkeypatch.setattr(ts, "from_dict", lambda c: SimpleNamespace(run=SimpleNamespace(output_dir=str(data))))
    rows = ts.summarise.fn({}, SimpleNamespace(run_id="r2"))
    assert rows[0]["drafter"] == "d2"
    assert made["markdown"]["key"] == "run-r2-report"
    assert made["markdown"]["markdown"] == report.summary_markdown(report.collect(data, ["r2"]))
