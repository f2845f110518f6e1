"""Training: objectives (``losses``), distributed helpers (``distributed``), GradCache (``grad_cache``),
configuration (``config``), the trainer and checkpoints.

Nothing is imported here, so ``import lorentz_rag.training.<module>`` stays as light as that module.
"""
