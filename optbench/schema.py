"""Types for the run's own knobs, so `trainer.epochs=abc` fails when Hydra composes.

Defaults live in the YAML files under conf/; these dataclasses only say what
type each key has. Groups that hold torch constructor arguments (optimizer,
schedule, init, loss) stay untyped: torch validates its own arguments.
"""

from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import MISSING


@dataclass
class DataConf:
    name: str = MISSING
    root: Optional[str] = None
    val_size: int = MISSING
    augment_shift: int = 0
    train_eval_size: Optional[int] = None


@dataclass
class ModelConf:
    hidden: List[int] = MISSING
    activation: str = MISSING
    batchnorm: str = MISSING
    dropout: float = MISSING


@dataclass
class TrainerConf:
    epochs: int = MISSING
    max_steps: Optional[int] = None
    batch_size: Optional[int] = MISSING
    eval_every: Optional[int] = None
    log_every: int = 1
    checkpoint_every: int = 1
    clip_grad_norm: Optional[float] = None
    clip_grad_value: Optional[float] = None
    l1: float = 0.0
    patience: Optional[int] = None
    min_delta: float = 0.0
    vectorize: str = "auto"
    skip_completed: bool = True
    resume: bool = True
    amp: bool = False
    compile: Optional[str] = None


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
    seed: int = 0
    device: str = "auto"


def register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="optbench_schema", node=Config)
