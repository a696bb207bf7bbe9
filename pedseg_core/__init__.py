"""pedseg core: framework-free data, model, losses, training and evaluation (never imports flwr)."""

__version__ = "0.1.0"
