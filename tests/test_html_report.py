"""`optbench report DIR --html`: one offline page, checked in a real headless Chromium."""

import base64
import io
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import optbench

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def report(shared_sweep, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("html")
    out = optbench("report", str(shared_sweep), "--html", "--target", "0.5", "--out", str(out_dir))
    assert out.returncode == 0, out.stderr
    return out_dir / "report.html"


def test_page_is_self_contained_with_table_figures_config_and_command(report):
    page = report.read_text()
    assert "<table" in page and "optimizer.name" in page
    assert "optbench train -m" in page and "optimizer=sgd,adam" in page  # the command that made the sweep
    assert "Configuration of each group" in page
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) >= 5
    for src in sources:
        assert src.startswith("data:image/png;base64,")  # nothing fetched from anywhere
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as image:
            image.verify()
    assert not re.search(r'(src|href)="(https?:)?//', page)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (CI installs Debian's chromium)")
def test_page_renders_in_headless_chromium(report, tmp_path):
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'a'}", f"--screenshot={shot}",
                    "--window-size=1280,2000", report.as_uri()], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1280)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # text, a table and plots, not a blank page
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'b'}", "--dump-dom", report.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert dom.count("<table") >= 3 and dom.count("<img") == report.read_text().count("<img") >= 5


@pytest.fixture(scope="module")
def flagged_report(tmp_path_factory):
    """A report of constructed runs (no training) with long run names and health flags."""
    from test_plots import write_diagnostics
    from test_results import write_run

    root = tmp_path_factory.mktemp("flagged")
    for opt in ("sgd", "adam"):
        for seed in (0, 1):
            run = root / "runs" / (f"{seed}_optimizer={opt},model.activation=sigmoid,"
                                   "model.hidden=[256,256,256,256,256,256],"
                                   f"init=normal,trainer.max_steps=30,seed={seed}")
            write_run(run, opt, 0.1, seed, val=0.9 + 0.01 * seed, test=0.9)
            write_diagnostics(run, seed, {"saturated": 0, "vanishing_gradients": 1} if opt == "sgd" else None)
    out = optbench("report", str(root / "runs"), "--html", "--out", str(root / "out"))
    assert out.returncode == 0, out.stderr
    return root / "out" / "report.html"


def test_page_shows_health_flags_and_says_what_each_figure_shows(flagged_report):
    page = flagged_report.read_text().replace("<wbr>", "")  # break opportunities after commas
    assert "<th>health flags</th>" in page
    assert "vanishing gradients 2/2, saturated 2/2" in page  # the ranking's column
    assert "vanishing gradients at step 1, saturated at step 0" in page  # the runs table's, per run
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page, flags=re.S)
    assert len(captions) >= 5
    for caption in captions:
        text = re.sub(r"<small>.*?</small>", "", caption).strip()
        assert len(text.split()) >= 8 and not re.fullmatch(r"[a-z_]+", text), caption  # a sentence, not a file name


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (CI installs Debian's chromium)")
def test_page_fits_the_window_without_a_horizontal_scroll_bar(flagged_report, tmp_path):
    """The page laid out by a real browser at a laptop's 1280 px: nothing wider than the window."""
    probe = tmp_path / "probe.html"
    script = ("<script>document.body.setAttribute('data-widths', [document.documentElement.scrollWidth, "
              "window.innerWidth].join(','))</script></body>")
    probe.write_text(flagged_report.read_text().replace("</body>", script))
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'c'}", "--window-size=1280,900",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    scroll, window = map(int, re.search(r'data-widths="(\d+),(\d+)"', dom).groups())
    assert window > 1000 and scroll <= window, (scroll, window)
