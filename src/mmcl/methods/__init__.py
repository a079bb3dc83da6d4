"""Continual-learning methods, one module each with its settings beside it; mmcl.plugins
imports every module here (its @register_method decorator registers it)."""
