"""vlcd-dist: distributed Vision-Language Contrastive Distillation."""

__version__ = "0.1.0"
