"""Where the work runs: a private local Ray cluster or a joined one (``runtime``), and Slurm allocations (``slurm``)."""
