"""`optbench race`: a fair race between optimizers (equal budgets, seeds until resolved, the test set's limit,
sensitivity and the ranking's robustness). See docs/race.md."""
