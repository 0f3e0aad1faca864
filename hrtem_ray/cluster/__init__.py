"""Where the work runs: a private local Ray cluster or a joined one (``runtime``), Slurm allocations (``slurm``), and SIGTERM handled like Ctrl-C (``signals``)."""
