"""optbench search and what it reads or is given (issue #27): a typo is refused before anything is written, trial
folders stay inside runs/ whatever the values, a damaged study.db, search.yaml or summary.json is one line that
names the file and the way out, and a search with no completed trial says so with its exit code."""

import shutil

import pytest
import yaml

from conftest import optbench

pytest.importorskip("optuna")

# every trial: 20 SGD steps of a small MLP, evaluated on small subsets (the search is under test, not the training)
TRIAL = ("optimizer=sgd", "trainer.max_steps=20", "trainer.checkpoint_every=0", "model.hidden=[32]",
         "diagnostics=off", "data.train_eval_size=500", "data.val_size=1000")


def _space(tmp_path, name: str, space: dict) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"space": space}))
    return str(path)


def _refused_in_one_line(out, *words: str) -> str:
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert all(word in lines[0] for word in words), lines[0]
    return lines[0]


def test_a_typo_leaves_nothing_behind_and_long_or_slashed_values_stay_inside_runs(mnist_root, tmp_path):
    s = tmp_path / "s"
    # the same MNIST folder, named 160 characters longer and with '/' in the value: a folder name made of it
    # would leave runs/ (a '/') or pass the file system's 255 bytes (File name too long)
    long_root = str(mnist_root) + "/." * 80
    space = _space(tmp_path, "space", {"data.root": [long_root], "optimizer.lr": [0.05]})
    grid = ("--dir", str(s), "--sampler", "grid")
    out = optbench("search", *grid, "--space", space, *TRIAL, "trainer.max_stpes=20")
    _refused_in_one_line(out, "max_stpes")
    assert not s.exists()
    for key, word in (("optimizer.lrr", "lrr"), ("trainer.max_stpes", "has no key max_stpes")):
        typo = _space(tmp_path, "typo", {"data.root": [long_root], key: [20]})
        out = optbench("search", *grid, "--space", typo, *TRIAL)
        _refused_in_one_line(out, word)
        assert not s.exists()
    out = optbench("search", *grid, "--space", space, *TRIAL)  # corrected: the same --dir is free
    assert out.returncode == 0, out.stderr[-3000:]
    runs = s / "runs"
    trials = [p.parent for p in s.rglob("summary.json")]
    assert len(trials) == 1 and trials[0].parent == runs, trials
    assert trials[0].name.startswith("000_") and len(trials[0].name.encode()) <= 120
    assert [p for p in runs.iterdir()] == trials  # nothing else made under runs/


def test_damaged_files_are_one_line_errors_naming_the_file_and_nothing_is_lost(mnist_root, tmp_path):
    s = tmp_path / "s"
    space = _space(tmp_path, "space", {"optimizer.lr": "log(1e-2, 0.1)"})
    out = optbench("search", "--dir", str(s), "--space", space, "--sampler", "random", "--trials", "1",
                   "--final-seeds", "1", *TRIAL, f"data.root={mnist_root}")
    assert out.returncode == 0, out.stderr[-3000:]
    damages = {  # file -> what is written over it, and the words of the error
        "study.db": (b"\x00not a database\xff" * 64, ("study.db", "move it away")),
        "search.yaml": (b"space: {optimizer.lr: [unclosed\n", ("search.yaml", "pick a new --dir")),
        "search.yaml ": (b"- a list\n- not settings\n", ("search.yaml", "not a search's settings")),
        "best/seed=1000/summary.json": (b'{"status": "compl', ("summary.json", "move the run directory away")),
    }
    for i, (name, (damage, words)) in enumerate(damages.items()):
        copy = tmp_path / f"damaged{i}"
        shutil.copytree(s, copy)
        (copy / "best" / "result.txt").unlink()  # so resuming reruns the best trial and reads its summary
        (copy / name.strip()).write_bytes(damage)
        before = {p.relative_to(copy) for p in copy.rglob("*")}
        out = optbench("search", "--dir", str(copy))
        line = _refused_in_one_line(out, *words)
        assert str(copy / name.strip()) in line or name.strip() in line
        assert (copy / name.strip()).read_bytes() == damage  # the damaged file is left for the user to look at
        assert before <= {p.relative_to(copy) for p in copy.rglob("*")}  # and nothing else went missing


def test_a_search_whose_trials_all_diverge_exits_non_zero(mnist_root, tmp_path):
    # before: exit 0 ("search directory: ..."), and with --final-seeds a traceback from study.best_trial
    s = tmp_path / "s"
    space = _space(tmp_path, "space", {"optimizer.lr": [1.0e+6]})
    out = optbench("search", "--dir", str(s), "--space", space, "--sampler", "grid", "--final-seeds", "1", *TRIAL,
                   f"data.root={mnist_root}")
    assert out.returncode == 1, out.stderr[-3000:]
    assert "no trial completed" in out.stderr and "Traceback" not in out.stderr
    assert "PRUNED" in (s / "trials.csv").read_text() and not (s / "best").exists()
