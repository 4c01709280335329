"""`optbench` end to end through real Hydra runs and multiruns (called in process; in a new one where only a
process shows it: what it imports, its exit code)."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from conftest import optbench, run_cli

# evaluations on 1000-image subsets: what is under test is the command line, not the numbers
SMALL = ("data.train_eval_size=1000", "data.val_size=1000")


def test_help_lists_subcommands():
    out = optbench("--help")
    assert out.returncode == 0
    assert all(cmd in out.stdout for cmd in ("train", "list", "data"))
    listed = optbench("list")
    assert "optimizer:" in listed.stdout and "adam" in listed.stdout


def test_help_and_list_do_not_import_torch():
    # a subcommand's --help exits through argparse; `race --help` once imported torch to read an optimizer's trait
    code = ("import sys, contextlib; from optbench.cli import main; main(['--help']); main(['list'])\n"
            "for command in ('race', 'search', 'lectures', 'report', 'plot'):\n"
            "    with contextlib.suppress(SystemExit):\n"
            "        main([command, '--help'])\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_import_optbench_is_light_and_its_reading_names_load_on_first_use():
    code = ("import sys, importlib.metadata, optbench; "
            "heavy = {'torch', 'pandas', 'matplotlib', 'optuna', 'scipy', 'sqlalchemy', 'submitit'}; "
            "heavy &= set(sys.modules); "
            "assert not heavy, heavy; "
            "assert optbench.__version__ == importlib.metadata.version('optbench'); "
            "from optbench.results import table, ranking; "
            "assert (optbench.load_runs, optbench.load_metrics) == (table.load_runs, table.load_metrics); "
            "assert (optbench.rank, optbench.format_ranking) == (ranking.rank, ranking.format_ranking); "
            "assert all(hasattr(optbench, name) for name in optbench.__all__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_train_single_run_into_given_dir(mnist_root, tmp_path):
    out = optbench("train", f"data.root={mnist_root}", "optimizer=sgd", "optimizer.lr=0.05", *SMALL,
                   "trainer.max_steps=20", "seed=3", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["choices"]["optimizer"] == "sgd"
    assert (tmp_path / ".hydra" / "config.yaml").exists() and (tmp_path / "train.log").stat().st_size > 0
    assert "optimizer.lr=0.05" in (tmp_path / ".hydra" / "overrides.yaml").read_text()


def test_multirun_makes_one_named_directory_per_combination(mnist_root, tmp_path):
    out = optbench("train", "-m", f"data.root={mnist_root}", "optimizer=sgd,adam", "seed=0,1", *SMALL,
                   "trainer.max_steps=10", f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    runs = sorted(p.parent for p in tmp_path.glob("*/summary.json"))
    assert len(runs) == 4
    names = " ".join(p.name for p in runs)
    assert "optimizer=adam" in names and "seed=1" in names  # folder names say what varied
    assert "data.root" not in names  # ... and not where the data is
    seen = {(json.loads((r / "summary.json").read_text())["choices"]["optimizer"],
             pd.read_csv(r / "metrics.csv").step.max()) for r in runs}
    assert seen == {("sgd", 10), ("adam", 10)}


def test_cfg_job_prints_the_composed_config():
    out = optbench("train", "--cfg", "job", "optimizer=sgd")
    assert out.returncode == 0
    assert "torch.optim.SGD" in out.stdout and "batch_size: 128" in out.stdout


def test_unknown_option_is_one_line_with_suggestion(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = optbench("train", "optimizer=adamm")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "did you mean adam" in out.stderr and "sgd" in out.stderr
    assert not (tmp_path / "outputs").exists()


def test_bad_value_is_one_line_and_the_process_exits_2(mnist_root, tmp_path):
    out = run_cli("train", f"data.root={mnist_root}", "optimizer.lr=-0.1", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("optbench: error: optimizer: Invalid learning rate")
    assert "Traceback" not in out.stderr


def test_unknown_command_suggests():
    out = optbench("trian")
    assert out.returncode == 2 and "did you mean train" in out.stderr


def test_ctrl_c_while_a_command_line_is_checked_interrupts(monkeypatch):
    """The option checks skip a command line they cannot parse, but never swallow Ctrl-C (a search composes a config
    for every trial: a Ctrl-C that landed there was lost, and the search ran to its end)."""
    import hydra._internal.utils

    from optbench import compose, config_dirs

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(hydra._internal.utils, "get_args_parser", interrupted)
    for check in (compose.check_group_choices, compose.validate_overrides, config_dirs.extra_option_dirs):
        with pytest.raises(KeyboardInterrupt):
            check(["optimizer=adam"])
