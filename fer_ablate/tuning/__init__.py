"""Every Optuna call (apart from the shared work queue): studies, samplers, pruners, the objective."""
