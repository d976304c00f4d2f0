"""mopd: Multi-teacher On-Policy Distillation."""

__version__ = "0.1.0"
