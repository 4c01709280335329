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
