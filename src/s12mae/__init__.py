"""s12mae: self-supervised pretraining of multi-sensor satellite-image encoders."""

__version__ = "0.1.0"
