"""optbench: compare neural-network optimizers on MNIST."""

from optbench.api import sweep, train

__version__ = "0.1.0"
__all__ = ["sweep", "train"]
