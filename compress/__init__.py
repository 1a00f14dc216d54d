"""compress: structured pruning, fine-tuning and evaluation of HMR-style human mesh recovery models."""

__version__ = "0.1.0"
