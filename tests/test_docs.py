"""The documentation site: it builds with --strict, its reference pages are generated from the code (optbench list,
each command's --help, optbench.__all__'s docstrings), and it renders in a real headless Chromium with a working
search. The commands on its pages run in test_docs_commands.py."""

import http.server
import re
import shutil
import socketserver
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO, optbench

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once with --strict: a broken link, a missing page or a stale anchor fails here."""
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                           cwd=REPO, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-5000:]
    return out


def page_text(site: Path, page: str) -> str:
    html = (site / page / "index.html").read_text()
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).replace("&amp;", "&").replace("&lt;", "<") \
        .replace("&gt;", ">").replace("&quot;", '"').replace("&#39;", "'")


def test_every_page_of_the_nav_is_built(site):
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text().replace("!!python", "#"))["nav"]

    def pages(items):
        for item in items:
            for value in item.values():
                yield from pages(value) if isinstance(value, list) else [value]

    for source in pages(nav):
        built = site / ("" if source == "index.md" else re.sub(r"(index)?\.(md|ipynb)$", "", source)) / "index.html"
        assert built.is_file(), source
    assert len(list(pages(nav))) >= 25


def test_the_config_reference_has_every_option_with_its_help_and_every_default(site):
    from optbench.compose import CONF

    html = (site / "reference/config/index.html").read_text()
    text = page_text(site, "reference/config")
    listed = optbench("list").stdout
    groups = re.findall(r"^(\S+):$", listed, re.M)
    assert {"optimizer", "init", "schedule", "trainer", "data", "experiment"} <= set(groups)
    for line in listed.splitlines():
        if line.startswith("  "):
            option, _, help_text = line.strip().partition(" ")
            assert help_text.strip() in text, (option, help_text)
    for group in groups:
        for option in re.findall(rf"^{group}:\n((?:  .*\n)+)", listed, re.M)[0].split("\n"):
            if option.strip():
                name = option.split()[0]
                assert f'id="{group}-{name.replace("_", "-")}"' in html, (group, name)
    trainer = yaml.safe_load((CONF / "trainer" / "default.yaml").read_text())
    section = text.split("trainer=default", 2)[-1]
    for key, value in trainer.items():
        shown = yaml.safe_dump(value).strip().removesuffix("...").strip()
        assert f"{key} {shown}" in section, (key, shown)


def test_the_command_reference_has_every_subcommand_and_its_options(site):
    text = page_text(site, "reference/cli")
    usage = optbench("--help").stdout
    commands = re.findall(r"^  ([a-z]+)\b", usage.split("commands:", 1)[1].split("\n\n", 1)[0], re.M)
    assert {"train", "report", "plot", "search", "lectures"} <= set(commands)
    for command in commands:
        assert f"optbench {command} --help" in text
        for flag in set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", optbench(command, "--help").stdout)):
            assert flag in text, (command, flag)


def test_the_api_reference_documents_what_optbench_exports(site):
    import inspect

    import optbench as package

    text = page_text(site, "reference/api")
    assert package.__all__
    for name in [n for n in package.__all__ if not n.startswith("__")]:  # __version__ is a string, not documented
        first_line = inspect.getdoc(getattr(package, name)).splitlines()[0]
        words = re.sub(r"\W+", "", " ".join(first_line.split()[:6]))  # code spans render with their own spacing
        assert name in text and words in re.sub(r"\W+", "", text), name


def test_the_changelog_page_includes_the_changelog(site):
    text = page_text(site, "changelog")
    assert "Keep a Changelog" in text and "Unreleased" in text


@pytest.fixture(scope="module")
def served(site):
    """The site on http://127.0.0.1:PORT: material's search runs in a web worker, which file:// URLs do not allow."""
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    server = socketserver.TCPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def chromium(tmp_path, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=timeout, check=True)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (CI installs Debian's chromium)")
@pytest.mark.parametrize("page", ["", "reference/config/"])
def test_the_home_and_a_reference_page_render_in_chromium(served, page, tmp_path):
    shot = tmp_path / "shot.png"
    # one browser for both: the picture and the DOM of the same load (a second launch cost as much as the first)
    dom = chromium(tmp_path, f"--screenshot={shot}", "--dump-dom", "--window-size=1280,900",
                   "--virtual-time-budget=5000", f"{served}/{page}").stdout
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (900, 1280)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # text, a header bar, a figure: not a blank page
    header = pixels[:40].reshape(-1, 3)
    assert (np.abs(header.astype(int) - [63, 81, 181]).sum(axis=1) < 30).mean() > 0.5  # the theme's indigo bar loaded
    assert 'class="md-nav' in dom and "Reference" in dom


def evaluate_until(url: str, expression: str, profile: Path, timeout: float = 60):
    """Open `url` in headless Chromium and evaluate `expression` in the page (DevTools protocol) every 0.5 s until
    it gives something, or `timeout` seconds. Material's search builds its index in a web worker in real time,
    which --dump-dom with --virtual-time-budget does not wait for (virtual time runs ahead of the worker)."""
    import asyncio
    import json
    import time
    import urllib.request

    from tornado.websocket import websocket_connect  # Jupyter's own dependency (the docs extra)

    browser = subprocess.Popen([CHROMIUM, *FLAGS, "--remote-debugging-port=0", f"--user-data-dir={profile}", url],
                               stderr=subprocess.PIPE, text=True)
    try:
        for line in browser.stderr:
            if match := re.search(r"DevTools listening on ws://([\d.]+:\d+)/", line):
                break
        else:
            pytest.fail("chromium did not open its DevTools port")
        pages = json.load(urllib.request.urlopen(f"http://{match.group(1)}/json/list", timeout=30))
        page = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")

        async def poll():
            ws = await websocket_connect(page, max_message_size=1 << 26)
            deadline, n = time.monotonic() + timeout, 0
            while True:
                n += 1
                ws.write_message(json.dumps({"id": n, "method": "Runtime.evaluate",
                                             "params": {"expression": expression, "returnByValue": True}}))
                while (reply := json.loads(await ws.read_message())).get("id") != n:
                    pass
                value = reply["result"]["result"].get("value")
                if value or time.monotonic() > deadline:
                    ws.close()
                    return value
                await asyncio.sleep(0.5)

        return asyncio.run(poll())
    finally:
        browser.terminate()
        browser.wait(30)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (CI installs Debian's chromium)")
def test_the_search_box_finds_muon(served, tmp_path):
    """`?q=Muon` opens material's search with that query, as a user's typing does; the results must name Muon."""
    items = evaluate_until(f"{served}/?q=Muon", "[...document.querySelectorAll('.md-search-result__item')]"
                           ".map(e => e.querySelector('a').href + ' ' + e.textContent.replace(/\\s+/g, ' '))",
                           tmp_path / "profile")
    assert items and any("Muon" in item for item in items), items
    assert any("/reference/config/" in item and "optimizer=muon" in item for item in items), items
    assert any("/tutorials/own-optimizer/" in item for item in items), items  # the page that explains Muon in a pass


def test_the_readme_is_short_links_into_the_docs_and_shows_a_figure_first():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    links = re.findall(r"\]\(((?!https?:)[^)#]+)(?:#[^)]*)?\)", readme)
    assert len([link for link in links if link.startswith("docs/")]) >= 10
    for link in links:
        assert (REPO / link).exists(), link  # GitHub renders these; mkdocs checks only the pages under docs/
    first_screen = "\n".join(readme.splitlines()[:15])
    assert re.search(r"!\[[^\]]+\]\(docs/gallery/\w+\.png\)", first_screen)
