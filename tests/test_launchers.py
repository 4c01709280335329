"""Hydra launchers: joblib and submitit_local sweeps land in the same run-directory layout as a basic run."""

import json
import os

import pytest

from optbench.jobs import job_device, job_threads

from conftest import optbench

RUN_FILES = {"config.yaml", "metrics.csv", "summary.json", "train.log", ".hydra"}
SUBMITIT_LOCAL = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"


@pytest.mark.parametrize(
    "launcher, cores, threads",
    [
        ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}, 2, 1),
        ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}, 8, 4),
        ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": -1}, 8, 1),
        ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": -2}, 8, 1),
        ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 3}, 2, 1),
        ({"_target_": SUBMITIT_LOCAL, "cpus_per_task": 3}, 8, 3),
        ({"_target_": SUBMITIT_LOCAL, "cpus_per_task": None}, 8, None),
        ({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, 8, None),
    ],
)
def test_each_parallel_job_gets_its_share_of_the_cores(launcher, cores, threads):
    assert job_threads(launcher, cores) == threads


@pytest.mark.parametrize(
    "device, job, gpus, expected",
    [("auto", 0, 4, "cuda:0"), ("auto", 5, 4, "cuda:1"), ("cuda", 3, 2, "cuda:1"),
     ("auto", 5, 1, "auto"), ("cuda", 5, 1, "cuda"), ("cpu", 5, 4, "cpu"), ("cuda:2", 5, 4, "cuda:2")],
)
def test_job_k_uses_gpu_k_mod_n_and_one_gpu_is_shared(device, job, gpus, expected):
    assert job_device(device, job, gpus) == expected


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_two_job_sweep_through_launcher_writes_ordinary_run_dirs(launcher, mnist_root, tmp_path):
    pytest.importorskip({"joblib": "hydra_plugins.hydra_joblib_launcher",
                         "submitit_local": "hydra_plugins.hydra_submitit_launcher"}[launcher])
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    out = optbench("train", "-m", f"hydra/launcher={launcher}", *extra, "seed=0,1", "trainer.max_steps=10",
                   f"data.root={mnist_root}", "data.train_eval_size=1000", "data.val_size=1000",
                   f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-2000:]
    runs = sorted(p.parent for p in tmp_path.glob("*/summary.json"))
    assert [r.name for r in runs] == [f"{n}_data.train_eval_size=1000,data.val_size=1000,seed={n},trainer.max_steps=10"
                                      for n in (0, 1)]
    summaries = [json.loads((r / "summary.json").read_text()) for r in runs]
    for run, summary in zip(runs, summaries):
        assert RUN_FILES <= {p.name for p in run.iterdir()}
        assert summary["status"] == "completed" and summary["step"] == 10
        assert summary["best_val_acc"] > 0.3
    if launcher == "joblib":  # two jobs at once share the cores instead of each taking all of them
        assert [s["torch_threads"] for s in summaries] == [max(len(os.sched_getaffinity(0)) // 2, 1)] * 2
    # different seeds trained different models
    assert summaries[0]["best_val_acc"] != summaries[1]["best_val_acc"]
