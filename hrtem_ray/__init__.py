"""hrtem-ray: a Ray-distributed sweep engine for transfer-learning studies on simulated HRTEM images.

>>> import hrtem_ray
>>> study = hrtem_ray.Study.from_yaml("sweeps/laptop.yaml")
>>> print(study.dry_run().splitlines()[0])
study laptop (defocus): 3 pretrain, 72 transfer, 27 baseline, 102 models in all

Modules, top layer first (each imports only from the layers below it; the contract is
``[tool.importlinter]`` in pyproject.toml, checked by ``lint-imports``):

* ``cli``: the hrtem-ray command line: parses arguments, maps outcomes to exit codes
* ``slurm``: hrtem-ray slurm: one ray symmetric-run step per node of a Slurm allocation
* ``study``: the Python API (Study): preflight, lock, simulate, sweep, current-plan results, report
* ``sweep``: the study's trials on Ray Tune: resources, retry rounds, interruption, outcome
* ``check``: hrtem-ray check: finds and repairs damaged results, histories, checkpoints, shards
* ``tune_adapter``: Ray Tune glue (imported lazily): the searcher, trainable, progress and failure callbacks
* ``execute``: one trial without Ray: load data, train, evaluate, store checkpoint, history and rows
* ``inference``: hrtem-ray predict: tiled, blended segmentation of micrographs, masks, particle tables
* ``report``: the self-contained HTML report, PNG/SVG figures and CSV tables of a results table
* ``results``: the results table, histories, checkpoints, failure records and quarantine on storage
* ``micrographs``: hrtem-ray import: microscope files read, calibrated, resampled, tiled into domains
* ``train``: the training loop of one stage, evaluation and checkpoints (plain torch)
* ``schedule``: pure scheduling: longest-first queues, children released when their parent is done
* ``data``: simulated datasets: Ray Data simulation into Parquet shards, manifests, readers
* ``model``: the U-Net (ResNet encoder) in plain torch, and freezing its parts
* ``simulate``: abTEM multislice of one structure: exit waves, zero-defocus calibration, CTF, dose, masks
* ``waves``: the exit-wave store: every structure's cropped exit waves as crash-safe Parquet shards
* ``plots``: the Altair charts of the analysis tables
* ``trials``: pure planning: a study's pretrain, transfer and baseline trials with stable ids, dry run
* ``structures``: random nanoparticles on amorphous carbon with ASE, a pure function of a seed
* ``analysis``: the analysis contract in Polars (docs/results_schema.md), with bootstrap intervals
* ``augment``: standardisation, soft labels and dihedral augmentation of training images
* ``lock``: one driver per study: the lock file with heartbeat and stale takeover
* ``runtime``: starting a private local Ray cluster or joining one
* ``config``: the study spec (YAML → typed, validated once) and its pre-compute checks
* ``bootstrap``: percentile-bootstrap intervals of grouped statistics (numpy and Polars only)
* ``specs``: the spec classes and shared types of every stage (pydantic only: the bottom layer)
* ``storage``: local, file:// and s3:// storage: atomic writes, exclusive create, compare-and-swap
"""

from hrtem_ray._version import __version__

__all__ = ["Study", "__version__", "load_study_spec", "predict"]


def __getattr__(name: str):
    # Lazy: importing the package stays cheap (torch, abTEM and Ray load on first use).
    if name == "Study":
        from hrtem_ray.study import Study

        return Study
    if name == "predict":  # the function, not the module (hrtem_ray.inference.predict)
        from hrtem_ray.inference import predict

        return predict
    if name == "load_study_spec":
        from hrtem_ray.config import load_study_spec

        return load_study_spec
    raise AttributeError(f"module 'hrtem_ray' has no attribute {name!r}")
