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
    batch_size: int = MISSING
    eval_every: Optional[int] = None
    log_every: int = 1
    checkpoint_every: int = 1


@dataclass
class Config:
    data: DataConf = field(default_factory=DataConf)
    model: ModelConf = field(default_factory=ModelConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    optimizer: Any = MISSING
    schedule: Any = MISSING
    init: Any = MISSING
    loss: Any = MISSING
    seed: int = 0
    device: str = "auto"


def register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="optbench_schema", node=Config)
