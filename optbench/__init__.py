"""optbench: compare neural-network optimizers on MNIST."""

__version__ = "0.1.0"
