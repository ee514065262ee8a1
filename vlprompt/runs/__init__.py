"""Run management: the run driver, run folders and resume, results, sweeps, tracking and dataset checks."""
