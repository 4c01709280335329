"""Types for the run's own knobs, so `trainer.epochs=abc` fails when Hydra composes.

Defaults live in the YAML files under conf/ and nowhere else: every field
here is MISSING, and a YAML file that forgot a key fails to compose (tested).
Groups that hold torch constructor arguments (optimizer, schedule, init,
loss) stay untyped: torch's signatures say what they take
(compose.check_arguments).
"""

from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import MISSING


@dataclass
class DataConf:
    name: str = MISSING
    root: Optional[str] = MISSING
    val_size: int = MISSING
    augment_shift: int = MISSING
    train_eval_size: Optional[int] = MISSING


@dataclass
class ModelConf:
    hidden: List[int] = MISSING
    activation: str = MISSING
    batchnorm: str = MISSING
    dropout: float = MISSING


@dataclass
class TrainerConf:
    epochs: int = MISSING
    max_steps: Optional[int] = MISSING
    batch_size: Optional[int] = MISSING
    eval_every: Optional[int] = MISSING
    log_every: int = MISSING
    checkpoint_every: int = MISSING
    clip_grad_norm: Optional[float] = MISSING
    clip_grad_value: Optional[float] = MISSING
    l1: float = MISSING
    patience: Optional[int] = MISSING
    min_delta: float = MISSING
    vectorize: str = MISSING
    skip_completed: bool = MISSING
    resume: bool = MISSING
    amp: bool = MISSING
    compile: Optional[str] = MISSING
    progress_every: float = MISSING
    tensorboard: bool = MISSING


@dataclass
class ThresholdsConf:
    exploding_grad_norm: float = MISSING
    vanishing_ratio: float = MISSING
    dead_fraction: float = MISSING
    saturated_fraction: float = MISSING


@dataclass
class DiagnosticsConf:
    level: str = MISSING
    probe_size: int = MISSING
    histogram_bins: int = MISSING
    histogram_at: List[float] = MISSING
    saturation: float = MISSING
    thresholds: ThresholdsConf = field(default_factory=ThresholdsConf)


@dataclass
class Config:
    data: DataConf = field(default_factory=DataConf)
    model: ModelConf = field(default_factory=ModelConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    diagnostics: DiagnosticsConf = field(default_factory=DiagnosticsConf)
    optimizer: Any = MISSING
    schedule: Any = MISSING
    init: Any = MISSING
    loss: Any = MISSING
    seed: int = MISSING
    device: str = MISSING


def register() -> None:
    """The schema for config.yaml's defaults list, and the resolvers the YAML files use."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from optbench.results import rundir

    ConfigStore.instance().store(name="optbench_schema", node=Config)
    # conf/optimizer/momentum_ema.yaml: torch's lr for the lecture's step size alpha and average weight beta
    OmegaConf.register_new_resolver("optbench.ema_lr", lambda alpha, beta: alpha * (1 - beta), replace=True)
    # config.yaml's hydra.job.config.override_dirname.exclude_keys: folder names leave out what only says where
    # or how a run ran (rundir.RUN_SETTINGS, the one list of those keys)
    OmegaConf.register_new_resolver("optbench.run_settings", lambda: list(rundir.RUN_SETTINGS), replace=True)
    # hydra.sweep.subdir: a folder name from the overrides that stays inside the sweep folder and fits the file system
    OmegaConf.register_new_resolver("optbench.folder", lambda text: rundir.folder_name(str(text)), replace=True)
    # hydra.run.dir and hydra.sweep.dir: the time stamp's folder, made here and now, or <stamp>-2, -3, ... when
    # another process made it first (parallel `optbench train ... &` started in one second)
    OmegaConf.register_new_resolver("optbench.new_folder", rundir.new_folder, replace=True, use_cache=True)
