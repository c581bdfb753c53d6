"""What drives runs: a single tracked run, grids of runs, cross-validation, the job runner and the
work queue shared by several machines."""
