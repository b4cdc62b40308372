"""brewer: knowledge distillation for NLP models, driven by experiment files."""

__version__ = "0.1.0"
