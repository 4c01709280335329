"""`optbench lectures`: the catalogue against the lecture notes, verdicts from real multiruns, the page in Chromium."""

import base64
import functools
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from test_html_report import CHROMIUM, FLAGS

from optbench import lectures

from conftest import REPO, compose, optbench

# the lecture notes sit beside the checkout on the development machines; a fresh clone checks against the copy of
# them kept with the tests (test_the_copied_notes_are_the_notes keeps it the same)
SHARED_SEEDS = REPO.parent / "shared" / "seeds"
COPIED = Path(__file__).parent / "lecture_notes"
SEEDS = SHARED_SEEDS if SHARED_SEEDS.is_dir() else COPIED
CLAIMS = lectures.names()


def normalised(text: str) -> str:
    return " ".join(text.split())


def test_the_catalogue_covers_the_lectures():
    assert len(CLAIMS) >= 10
    assert {lectures.load(n)["lecture"][:3] for n in CLAIMS} >= {"000", "001", "003", "004"}


@functools.cache
def _composed(*overrides: str):
    """compose(), once per override list in this worker: the two tests below compose the same groups at the
    default scale and the full scale's first (a third of their compositions, each a whole Hydra compose); the
    config files do not change during a session and neither test alters the config it gets."""
    return compose(*overrides)


@pytest.mark.parametrize("name", CLAIMS)
def test_claim_loads_and_its_groups_compose(name):
    claim = lectures.load(name)
    assert claim["quote"].strip() and re.fullmatch(r"\d{3}_[0-9a-f]{16}\.txt", claim["lecture"])
    assert claim["description"], "the first comment line is what `lectures list` shows"
    groups, seeds = lectures.experiment(claim)
    assert len(seeds) >= 6  # below 6 paired seeds the sign-flip test can never resolve at 5%
    assert set(groups) == set(claim["groups"]) and len(groups) >= 2
    configs = [_plain(_composed(*overrides)) for overrides in lectures.compositions(claim).values()]
    # the groups differ in what the claim is about, not in nothing (a search claim's groups: in how they search)
    differ = groups.values() if "search" in claim else configs
    assert len({yaml.safe_dump(c) for c in differ}) == len(configs)
    full, full_seeds = lectures.experiment(claim, "full")
    assert len(full_seeds) >= len(seeds)
    _composed(*next(iter(lectures.compositions(claim, "full").values())))  # the full scale composes too


# quantities read from the network at initialisation: their figure is per layer, not a learning curve
AT_INIT = ("act_std_drift", "saturated_at_init")


@pytest.mark.parametrize("name", CLAIMS)
def test_every_run_has_a_curve_at_every_scale(name):
    """At least 10 evaluations after the start in every run of every group at every scale (the lengths the
    trainer computes: an evaluation every eval_every steps and one at the end)."""
    from optbench.trainer import run_lengths

    claim = lectures.load(name)
    if claim["quantity"] in AT_INIT:
        return
    for scale in lectures.SCALES:
        if lectures.untestable(claim, scale):
            continue
        for group, overrides in lectures.compositions(claim, scale).items():
            cfg = _composed(*overrides)
            lengths = run_lengths(cfg, 60000 - cfg.data.val_size)
            total, every = lengths.total_steps, lengths.eval_every
            evaluations = total // every + (total % every > 0)
            assert evaluations >= 10, f"{name} at {scale}, group {group}: {evaluations} evaluations"


@pytest.mark.parametrize("name", CLAIMS)
def test_every_claim_says_how_it_was_designed_and_where_it_may_differ(name):
    claim = lectures.load(name)
    assert len(claim.get("design", "").split()) >= 40 and len(claim.get("differs", "").split()) >= 25
    for scale in lectures.SCALES:  # each scale either tests the claim or says why it cannot
        assert lectures.untestable(claim, scale) or lectures.condition(claim, scale)
    assert not lectures.untestable(claim, "full"), "the full scale is where every claim can be tested"
    assert "middle" in (claim.get("scales") or {}), "the middle scale's budget is declared"


def _plain(cfg):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def _digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.txt")}


def test_the_copied_notes_are_the_notes():
    # SHA256SUMS was taken from ../shared/seeds with the copy: a fresh clone checks its copy against it, a
    # checkout beside ../shared the notes themselves too (a changed note needs a new copy and new sums)
    sums = dict(reversed(line.split()) for line in (COPIED / "SHA256SUMS").read_text().splitlines())
    assert len(sums) == 5 and _digests(COPIED) == sums
    if SHARED_SEEDS.is_dir():
        assert _digests(SHARED_SEEDS) == sums


@pytest.mark.parametrize("name", CLAIMS)
def test_quotation_occurs_in_its_lecture_file(name):
    claim = lectures.load(name)
    source = SEEDS / claim["lecture"]
    assert source.is_file(), f"{name} names {claim['lecture']}, not in {SEEDS}"
    assert normalised(claim["quote"]) in normalised(source.read_text(errors="replace"))


def test_a_misquotation_is_caught(tmp_path):
    """The check above can fail: a quotation with one word changed is not found."""
    claim = lectures.load("momentum_speeds_up")
    text = normalised((SEEDS / claim["lecture"]).read_text())
    assert normalised(claim["quote"]) in text and normalised(claim["quote"]).replace("usually", "always") not in text


# --- the verdict logic on values with known answers ----------------------------------------------------------


def _claim(predict, combine="all", groups=("a", "b", "c")):
    return {"groups": {g: [] for g in groups}, "predict": [lectures.parse_prediction(p, dict.fromkeys(groups), "x")
                                                         for p in predict], "combine": combine}


def _values(*means, spread=0.01, seeds=6):
    rng = np.random.default_rng(0)
    return {g: pd.Series(m + spread * rng.standard_normal(seeds), index=range(seeds)) for g, m in zip("abc", means)}


def test_verdicts_follow_the_paired_test():
    values = _values(0.9, 0.8, 0.9)
    assert lectures.judge(_claim(["a > b"]), values)["verdict"] == lectures.SUPPORTED
    assert lectures.judge(_claim(["a < b"]), values)["verdict"] == lectures.CONTRADICTED
    values["c"] = values["a"] + np.resize([0.01, -0.006], 6)  # c a little above a on average, not in every seed
    unresolved = lectures.judge(_claim(["c > a"]), values)
    assert unresolved["verdict"] == lectures.UNRESOLVED and 6 < unresolved["seeds_needed"] < 1000
    smallest = unresolved["comparisons"][0]["smallest_effect"]
    assert abs(unresolved["comparisons"][0]["difference"]) < smallest < 0.02
    assert lectures.verdict_text(unresolved) == (
        f"not resolved (at 6 seeds it could resolve differences beyond {smallest:.4g})")
    # 5 seeds: the sign-flip test could not go below 2/2^5 = 0.0625, the paired t-test resolves a large difference
    few = lectures.judge(_claim(["a > b"]), _values(0.9, 0.8, 0.9, seeds=5))
    assert few["verdict"] == lectures.SUPPORTED and few["comparisons"][0]["p_sign_flip"] == 0.0625
    assert few["comparisons"][0]["low"] > 0  # the interval beside a resolved prediction excludes 0


def test_smallest_resolvable_effect_by_hand():
    # paired differences 0.01, 0.03, 0.02, 0.04, 0.00, 0.02: mean 0.02, squared deviations sum to 0.001, so
    # sd = sqrt(0.001 / 5) = 0.0141421 and sd / sqrt(6) = 0.0057735; t(0.975, 5) = 2.570582: 0.0148413
    a = pd.Series([0.51, 0.53, 0.52, 0.54, 0.50, 0.52])
    b = pd.Series([0.50] * 6)
    assert lectures.smallest_effect(a, b, 0.95, paired=True) == pytest.approx(0.0148413, abs=1e-6)
    # unpaired, equal spreads (sd 0.0141421 and 0) and sizes: se = 0.0057735, Welch df = 5: the same number
    assert lectures.smallest_effect(a, b, 0.95, paired=False) == pytest.approx(0.0148413, abs=1e-6)
    # paired on the seeds both sides have: seed 5 missing on one side leaves 5 differences
    assert lectures.smallest_effect(a, b.drop(5), 0.95, paired=True) == pytest.approx(
        2.776445 * np.std([0.01, 0.03, 0.02, 0.04, 0.00], ddof=1) / np.sqrt(5), abs=1e-6)
    assert lectures.smallest_effect(a, b.drop(5), 0.95, paired=True, test="sign-flip") == np.inf  # 2/32 > 0.05


def test_each_of_the_four_verdicts_arises_where_it_should(tmp_path):
    values = _values(0.9, 0.8, 0.9)
    assert lectures.judge(_claim(["a > b"]), values)["verdict"] == "supported"
    assert lectures.judge(_claim(["a < b"]), values)["verdict"] == "contradicted"
    values["c"] = values["a"] + np.array([0.01, -0.01, 0.02, -0.02, 0.005, -0.004])  # signs both ways
    unresolved = lectures.judge(_claim(["c > a"]), values)
    assert unresolved["verdict"] == "not resolved" and np.isfinite(unresolved["comparisons"][0]["smallest_effect"])
    (tmp_path / "short.yaml").write_text(TINY.replace("PREDICTION", "'too_small > good'")
                                         + "not_testable: {default: 20 steps cannot tell}\n")
    claim = lectures.load("short", tmp_path)
    assert lectures.untestable(claim) == "20 steps cannot tell" and lectures.untestable(claim, "middle") is None
    result = {"verdict": lectures.UNTESTABLE, "reason": lectures.untestable(claim), "comparisons": []}
    assert lectures.verdict_text(result) == "not testable at this scale: 20 steps cannot tell"


def test_all_and_any_combine_predictions():
    values = _values(0.9, 0.8, 0.95)
    assert lectures.judge(_claim(["a > b", "c > a"]), values)["verdict"] == lectures.SUPPORTED
    assert lectures.judge(_claim(["a > b", "a > c"]), values)["verdict"] == lectures.CONTRADICTED
    # any: one prediction resolved as predicted is enough, after Holm over both
    assert lectures.judge(_claim(["a > b", "a > c"], "any"), values)["verdict"] == lectures.SUPPORTED
    assert lectures.judge(_claim(["b > a", "a > c"], "any"), values)["verdict"] == lectures.CONTRADICTED
    # c only slightly above a: the first step of Holm (alpha 0.025) fails, so neither is resolved, and each
    # interval, drawn at the level Holm tested it at (97.5%), contains 0
    values["c"] = values["a"] + np.resize([0.01, -0.006], 6)
    both = lectures.judge(_claim(["c > a", "a > c"], "any"), values)
    assert both["verdict"] == lectures.UNRESOLVED
    assert all(r["interval_level"] == 0.975 and r["low"] <= 0 <= r["high"] for r in both["comparisons"])


def test_a_run_belongs_to_the_group_it_was_trained_as_and_no_other():
    groups = {"good": ["optimizer=sgd", "optimizer.lr=0.1"], "small": ["optimizer=sgd", "optimizer.lr=1e-3"]}
    # its seed and where it ran aside, and as Hydra reads values (0.001 is 1e-3)
    assert lectures.group_of(["optimizer=sgd", "optimizer.lr=0.001", "seed=3", "data.root=/x"], groups) == "small"
    # trained with another command-line override (a longer run): not this command's experiment
    assert lectures.group_of(["optimizer=sgd", "optimizer.lr=0.1", "seed=0", "trainer.max_steps=50"], groups) is None


def test_bad_catalogue_entries_are_one_line_errors(tmp_path):
    (tmp_path / "bad.yaml").write_text("quote: x\nlecture: 000_x.txt\ngroups: {a: [], b: []}\nseeds: 6\n"
                                       "quantity: best_val_acc\npredict: ['a > z']\n")
    with pytest.raises(lectures.UserError, match="prediction 'a > z'"):
        lectures.load("bad", tmp_path)
    search = ("quote: x\nlecture: 002_x.txt\nsearch: {space: {optimizer.lr: 'log(0.01, 1)'}, trials: 4}\n"
              "seeds: 6\nquantity: QUANTITY\npredict: ['a > b']\ngroups: {a: {sampler: random}, b: GROUP}\n")
    (tmp_path / "overrides.yaml").write_text(search.replace("QUANTITY", "best_val_acc").replace("GROUP", "[seed=1]"))
    with pytest.raises(lectures.UserError, match="group b of a search claim sets search settings among sampler"):
        lectures.load("overrides", tmp_path)
    (tmp_path / "curve.yaml").write_text(search.replace("QUANTITY", "loss_rise").replace("GROUP", "{sampler: grid}"))
    with pytest.raises(lectures.UserError, match="read at the chosen trial: one of best_val_acc, test_acc"):
        lectures.load("curve", tmp_path)
    out = optbench("lectures", "run", "momentum_speed_up")
    assert out.returncode == 2 and "did you mean momentum_speeds_up" in out.stderr
    assert out.stderr.strip().count("\n") == 0
    assert optbench("lectures", "run").returncode == 2


def test_list_names_every_claim():
    out = optbench("lectures", "list")
    assert out.returncode == 0
    assert [line.split()[0] for line in out.stdout.splitlines()] == CLAIMS


def test_list_does_not_import_torch():
    code = "import sys; from optbench.cli import main; main(['lectures', 'list']); assert 'torch' not in sys.modules"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# --- a tiny claim trained for real ---------------------------------------------------------------------------

TINY = """\
# SGD at lr 0.001 against 0.1 on a 16-unit net, 20 steps: training loss
quote: "If the learning rate is too low, learning proceeds slowly."
lecture: 000_8417a3012551713b.txt
condition: a tiny net, 20 steps
overrides: [diagnostics=off, optimizer=sgd, "model.hidden=[16]", trainer.max_steps=20, trainer.eval_every=2,
            data.train_eval_size=500, data.val_size=1000, device=cpu]
groups:
  good: [optimizer.lr=0.1]
  too_small: [optimizer.lr=0.001]
seeds: 6
quantity: final_train_loss
predict: [PREDICTION]
"""


@pytest.fixture(scope="module")
def tiny(mnist_root, tmp_path_factory):
    """Two claims on the same experiment, one predicting the right direction and one the wrong; the second
    reuses the first's runs (copied), which the multirun then skips."""
    catalogue, out = tmp_path_factory.mktemp("catalogue"), tmp_path_factory.mktemp("lectures")
    (catalogue / "tiny.yaml").write_text(TINY.replace("PREDICTION", "'too_small > good'"))
    (catalogue / "tiny_wrong.yaml").write_text(TINY.replace("PREDICTION", "'good > too_small'"))
    first = optbench("lectures", "run", "tiny", f"data.root={mnist_root}", "--catalogue", str(catalogue),
                     "--out", str(out))
    assert first.returncode == 0, first.stderr[-3000:]
    shutil.copytree(out / "tiny" / "runs", out / "tiny_wrong" / "runs")
    second = optbench("lectures", "run", "tiny_wrong", f"data.root={mnist_root}", "--catalogue", str(catalogue),
                      "--out", str(out))
    assert second.returncode == 0, second.stderr[-3000:]
    return out, first.stdout, second.stdout


def test_tiny_claim_gives_a_verdict_row_with_an_interval(tiny):
    out, stdout, _ = tiny
    result = json.loads((out / "tiny" / "verdict.json").read_text())
    assert result["verdict"] == lectures.SUPPORTED and "tiny: supported" in stdout
    row = result["comparisons"][0]
    assert row["paired"] and row["seeds"] == 6 and row["test"] == "paired t"
    assert 0 < row["low"] <= row["difference"] <= row["high"]  # too_small's loss is higher, the interval says so
    for group in result["groups"]:
        assert group["n"] == 6 and group["low"] <= group["mean"] <= group["high"]
    with Image.open(out / result["figure"]) as image:
        assert image.size[0] > 1000


def _outside(ax) -> list:
    """Every drawn point (lines, scatter offsets, band vertices) of `ax` outside its view: none may enter from off
    the axis."""
    (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
    points = [np.column_stack(line.get_data()).astype(float) for line in ax.get_lines()]
    from matplotlib.collections import PathCollection

    # a scatter's points are its offsets (its paths are the marker's shape); a band's and an error bar's are paths
    points += [np.asarray(c.get_offsets(), float) for c in ax.collections if isinstance(c, PathCollection)]
    points += [p.vertices for c in ax.collections if not isinstance(c, PathCollection) for p in c.get_paths()]
    points = np.vstack([p for p in points if len(p)])
    points = points[np.isfinite(points).all(axis=1)]
    slack = 1e-9 * max(abs(x1 - x0), abs(y1 - y0), 1)
    return [tuple(p) for p in points if not (x0 - slack <= p[0] <= x1 + slack and y0 * (1 - 1e-9) - slack <= p[1]
                                             <= y1 * (1 + 1e-9) + slack)]


def test_tiny_claim_has_curves_to_project(tiny, tmp_path):
    from optbench.lectures.figures import figure

    from figure_checks import drawn

    out, _, _ = tiny
    (tmp_path / "tiny.yaml").write_text(TINY.replace("PREDICTION", "'too_small > good'"))
    claim = lectures.load("tiny", tmp_path)
    result = json.loads((out / "tiny" / "verdict.json").read_text())
    assert result["condition"] == "a tiny net, 20 steps" and result["verdict"] == "supported"
    assert result["scale"] == "default"
    runs = lectures.load_claim_runs(claim, out)
    assert len(runs) == 12
    for run in runs:  # at least 10 evaluations after the start, so that a curve is a curve
        steps = run["metrics"].query("split == 'val' and metric == 'acc'").step.unique()
        assert len(steps[steps > 0]) >= 10
    fig = drawn(figure(claim, result, runs))
    assert "condition: a tiny net, 20 steps" in fig._suptitle.get_text()
    # the same runs judged on validation accuracy: the curve is then an error from chance (0.9) down, on a log axis
    (tmp_path / "acc.yaml").write_text(TINY.replace("PREDICTION", "'good > too_small'")
                                       .replace("final_train_loss", "best_val_acc"))
    acc = lectures.load("acc", tmp_path)
    judged = {**lectures.judge(acc, lectures.measure(acc, runs)), "condition": "c", "scale": "default"}
    for shown in (fig, drawn(figure(acc, judged, runs))):
        left, right = shown.axes[:2]
        for ax in (left, right):
            assert not _outside(ax), _outside(ax)[:5]
        assert right.get_yscale() == "log" and len(right.collections) >= 2 * 6 + 2  # rings per seed and bands
        assert any("read here" in text.get_text() for text in right.get_legend().get_texts())
    assert max(right.get_ylim()) >= 0.85  # step 0's error (about 0.9) is in view, not cut off below


def test_the_wrong_direction_gets_the_opposite_verdict_from_the_same_runs(tiny):
    out, _, stdout = tiny
    result = json.loads((out / "tiny_wrong" / "verdict.json").read_text())
    assert result["verdict"] == lectures.CONTRADICTED and "tiny_wrong: contradicted" in stdout
    assert result["comparisons"][0]["high"] < 0
    # one multirun sweeping the learning rate, and nothing trained again: skip_completed found every run
    log = (out / "tiny_wrong" / "runs" / "all" / "lectures.log").read_text()
    assert "optimizer.lr=0.1,0.001" in log and log.count("skipped:") == 12 and "vectorized pass of" not in log


def test_a_claim_that_cannot_run_exits_nonzero(mnist_root, tmp_path):
    (tmp_path / "broken.yaml").write_text(TINY.replace("PREDICTION", "'too_small > good'")
                                          .replace("optimizer.lr=0.001", "optimizer.lr=-1"))
    out = optbench("lectures", "run", "broken", f"data.root={mnist_root}", "--catalogue", str(tmp_path),
                   "--out", str(tmp_path / "out"))
    assert out.returncode == 1 and "could not be run: broken" in out.stdout
    assert not (tmp_path / "out" / "broken" / "verdict.json").exists()


def test_a_bad_override_in_a_claim_is_one_line_before_anything_trains(tmp_path):
    (tmp_path / "typo.yaml").write_text(TINY.replace("PREDICTION", "'too_small > good'")
                                        .replace("optimizer=sgd,", "optimizer=sgdd,"))
    out = optbench("lectures", "run", "typo", "--catalogue", str(tmp_path), "--out", str(tmp_path / "out"))
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
    assert "claim typo, group good: optimizer=sgdd is not an option (did you mean sgd?)" in out.stderr
    assert not (tmp_path / "out" / "typo").exists()


def test_page_has_every_claim_and_figure(tiny):
    out, _, _ = tiny
    page = (out / "index.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 2
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as image:
            image.verify()
    assert not re.search(r'(src|href)="(https?:)?//', page)
    md = (out / "index.md").read_text()
    assert "| [tiny](tiny/handout.md) | 000 |" in md and "| [tiny_wrong](tiny_wrong/handout.md) | 000 |" in md
    assert "contradicted" in md and "**Condition:** a tiny net, 20 steps." in md


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (CI installs Debian's chromium)")
def test_page_renders_in_headless_chromium(tiny, tmp_path):
    out, _, _ = tiny
    page = out / "index.html"
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'a'}", f"--screenshot={shot}",
                    "--window-size=1280,2400", page.as_uri()], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # text, tables and plots, not a blank page
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'b'}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert dom.count("<img") == 2 and dom.count("<table") == 3 and "tiny_wrong: contradicted" in dom


# --- a damaged run (#27): named in one line, skipped, and the exit says so; nothing in it is executed -------------


class Planted:
    """Unpickling this creates a file: what a checkpoint from someone else's results folder could do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


UNITS = TINY.replace("PREDICTION", "'too_small < good'").replace("final_train_loss", "distinct_units")


@pytest.fixture
def copied(tiny, tmp_path):
    """The tiny claim's 12 runs under a claim that reads each run's checkpoint, in a folder of this test's own."""
    out, _, _ = tiny
    catalogue = tmp_path / "catalogue"
    catalogue.mkdir()
    (catalogue / "units.yaml").write_text(UNITS)
    shutil.copytree(out / "tiny" / "runs", tmp_path / "out" / "units" / "runs")
    runs = sorted(p.parent for p in (tmp_path / "out" / "units" / "runs").rglob("summary.json"))
    assert len(runs) == 12 and all((r / "checkpoint.pt").is_file() for r in runs)
    return catalogue, tmp_path / "out", runs


def _report(catalogue, out):
    return optbench("lectures", "report", "units", "--catalogue", str(catalogue), "--out", str(out))


def _warnings(stderr: str, path: Path) -> list[str]:
    return [line for line in stderr.splitlines() if str(path) in line]


def test_an_intact_folder_reports_with_exit_zero(copied):
    catalogue, out, _ = copied
    report = _report(catalogue, out)
    assert report.returncode == 0 and "warning" not in report.stderr, report.stderr[-2000:]
    assert [g["n"] for g in json.loads((out / "units" / "verdict.json").read_text())["groups"]] == [6, 6]


def test_a_planted_checkpoint_is_named_and_never_run(copied, tmp_path):
    import torch

    catalogue, out, runs = copied
    marker = tmp_path / "planted-ran"
    torch.save({"model": Planted(marker)}, runs[0] / "checkpoint.pt")
    report = _report(catalogue, out)
    assert not marker.exists()
    assert report.returncode == 1 and "skipped 1 damaged run" in report.stdout
    [line] = _warnings(report.stderr, runs[0] / "checkpoint.pt")
    assert "objects other than tensors" in line
    assert sorted(g["n"] for g in json.loads((out / "units" / "verdict.json").read_text())["groups"]) == [5, 6]
    torch.load(runs[0] / "checkpoint.pt", weights_only=False)  # the plant is live: loading it as before runs it
    assert marker.exists()


@pytest.mark.parametrize("damaged", ["summary.json", "config.yaml", "metrics.csv", "checkpoint.pt",
                                     ".hydra/overrides.yaml"])
def test_a_damaged_run_is_skipped_with_one_line_and_a_nonzero_exit(copied, damaged):
    catalogue, out, runs = copied
    (runs[3] / damaged).write_bytes(b"{\xff\x00 not what it should be: [")
    report = _report(catalogue, out)
    assert report.returncode == 1 and "skipped 1 damaged run" in report.stdout, report.stderr[-2000:]
    assert len(_warnings(report.stderr, runs[3] / damaged)) == 1
    assert "Traceback" not in report.stderr
    # the other eleven runs still give the verdict
    assert sorted(g["n"] for g in json.loads((out / "units" / "verdict.json").read_text())["groups"]) == [5, 6]


def test_run_judges_the_runs_that_trained_around_a_damaged_one(copied, mnist_root):
    catalogue, out, runs = copied
    (runs[3] / "summary.json").write_bytes(b"{broken")
    run = optbench("lectures", "run", "units", f"data.root={mnist_root}", "--catalogue", str(catalogue),
                   "--out", str(out))
    assert run.returncode == 1 and len(_warnings(run.stderr, runs[3] / "summary.json")) == 1, run.stderr[-2000:]
    assert "judged on the runs that trained: units" in run.stdout and "skipped 1 damaged run" in run.stdout
    result = json.loads((out / "units" / "verdict.json").read_text())
    assert result["training_failed"] and sorted(g["n"] for g in result["groups"]) == [5, 6]
    assert (runs[3] / "summary.json").read_bytes() == b"{broken"  # nothing the user might want was replaced


def test_search_folder_names_stay_inside_and_are_capped(tmp_path):
    claim = lectures.load("random_search_beats_grid")
    runs = tmp_path / claim["name"] / "runs"
    for extra in (["optimizer.lr=../../../escaped"], [f"model.hidden=[{','.join(['128'] * 60)}]"]):
        folder = lectures.search_dir(claim, tmp_path, "default", extra, "grid", 0)
        assert folder.parent.parent == runs and len(folder.parent.name.encode()) <= 120


def test_a_claim_not_testable_at_a_scale_trains_nothing_and_says_why(tmp_path):
    (tmp_path / "short.yaml").write_text(TINY.replace("PREDICTION", "'too_small > good'")
                                         + "not_testable: {default: 20 steps cannot tell}\n")
    out = optbench("lectures", "run", "short", "--catalogue", str(tmp_path), "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert ("short: not testable at this scale: 20 steps cannot tell (0 s; condition: a tiny net, 20 steps)"
            in out.stdout)
    result = json.loads((tmp_path / "out" / "short" / "verdict.json").read_text())
    assert result["verdict"] == "not testable at this scale" and result["reason"] == "20 steps cannot tell"
    assert result["condition"] == "a tiny net, 20 steps" and not (tmp_path / "out" / "short" / "runs").exists()
    assert "not testable at this scale: 20 steps cannot tell" in (tmp_path / "out" / "index.md").read_text()
    handout = (tmp_path / "out" / "short" / "handout.md").read_text()
    assert "> If the learning rate is too low, learning proceeds slowly." in handout


def test_a_scale_block_is_checked(tmp_path):
    (tmp_path / "odd.yaml").write_text(TINY.replace("PREDICTION", "'too_small > good'")
                                       + "scales: {lunch: {seeds: 8}}\n")
    with pytest.raises(lectures.UserError, match="scales.lunch: a larger scale is one of middle, full"):
        lectures.load("odd", tmp_path)
    (tmp_path / "odd.yaml").write_text(TINY.replace("PREDICTION", "'too_small > good'")
                                       + "scales: {middle: {groups: {huge: [seed=1]}}}\n")
    with pytest.raises(lectures.UserError, match=r"scales.middle.groups names \['huge'\]"):
        lectures.load("odd", tmp_path)
    (tmp_path / "odd.yaml").write_text(TINY.replace("PREDICTION", "'too_small > good'")
                                       + "scales: {middle: {seeds: 8, groups: {good: [trainer.max_steps=40]}}}\n")
    groups, seeds = lectures.experiment(lectures.load("odd", tmp_path), "middle")
    assert len(seeds) == 8
    assert "trainer.max_steps=40" in groups["good"] and "trainer.max_steps=20" in groups["too_small"]


def test_each_scale_writes_into_its_own_folder_by_default(tmp_path, monkeypatch):
    (tmp_path / "short.yaml").write_text(TINY.replace("PREDICTION", "'too_small > good'")
                                         + "not_testable: {default: too short, middle: still too short}\n")
    monkeypatch.chdir(tmp_path)
    for scale in ("default", "middle"):
        assert optbench("lectures", "run", "short", "--scale", scale, "--catalogue", str(tmp_path)).returncode == 0
    assert json.loads((tmp_path / "lectures" / "short" / "verdict.json").read_text())["reason"] == "too short"
    middle = json.loads((tmp_path / "lectures-middle" / "short" / "verdict.json").read_text())
    assert middle["reason"] == "still too short"


def test_the_scales_table_shows_a_verdict_that_changes(tiny, tmp_path):
    out, _, _ = tiny
    (tmp_path / "tiny.yaml").write_text(TINY.replace("PREDICTION", "'too_small > good'")
                                        + "not_testable: {middle: no middle budget in a test}\n")
    middle = tmp_path / "middle"
    assert optbench("lectures", "run", "tiny", "--scale", "middle", "--catalogue", str(tmp_path),
                    "--out", str(middle)).returncode == 0
    table = optbench("lectures", "table", str(out), str(middle), "--catalogue", str(tmp_path))
    assert table.returncode == 0, table.stderr
    [row] = [line for line in table.stdout.splitlines() if line.startswith("| tiny |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "supported" and cells[2].startswith("+") and cells[3].endswith(" s")
    assert cells[4] == "not testable at this scale: no middle budget in a test" and cells[5] == ""
    assert cells[-1] == "supported -> not testable at this scale"
    assert "default (" in table.stdout.splitlines()[0] and "middle (middle)" in table.stdout.splitlines()[0]
    assert optbench("lectures", "table", str(tmp_path / "nowhere")).returncode == 2
