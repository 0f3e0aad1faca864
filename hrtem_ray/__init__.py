"""hrtem-ray: a Ray-distributed sweep engine for transfer-learning studies on simulated HRTEM images.

>>> import hrtem_ray
>>> study = hrtem_ray.Study.from_yaml("sweeps/laptop.yaml")
>>> print(study.dry_run().splitlines()[0])
study laptop (defocus): 21 pretrain, 105 transfer, 7 baseline, 133 models in all

Subpackages by stage, top layer first; each imports only from the layers below it (the
contract is ``[tool.importlinter]`` in pyproject.toml, checked by ``lint-imports``):

* ``cli``: the hrtem-ray command line: parses arguments, maps outcomes to exit codes
* ``realdata``: real micrographs: what to label next (hrtem-ray suggest, by ensemble
  disagreement) and the pixel size of uncalibrated labelled files (hrtem-ray pixel-size)
* ``study``: the Python API (``Study``): preflight, lock, simulate, sweep, results, report;
  ``inference``: hrtem-ray predict, tiled and blended segmentation of micrographs (one model
  or the ensemble of a configuration's replicates)
* ``predict_budget``: what a prediction needs before it starts: the model's grid and the
  memory estimate that refuses inputs the machine cannot hold
* ``sweep``: planning, scheduling and running a study's trials (Ray Tune), the results table,
  check and repair, the rounds of adaptive studies and their replays; ``report``: the HTML
  report, its charts, figures and CSV tables
* ``dataset``: simulated Parquet shards and their readers, the exit-wave store, imported
  microscope files
* ``physics``: nanoparticle structures (ASE; particle shapes, zone axes and twins with
  wulffpack and ase.cluster) and multislice HRTEM (abTEM); ``learning``: the U-Net,
  augmentation and the training loop (plain torch); ``analysis``: the analysis contract in
  Polars with bootstrap intervals, the findings and the sequential rule of adaptive studies
* ``spec``: the typed, validated study spec, its strict YAML reader, the materials (built-in
  lattices and CIF files, read through ``store`` while the spec is read) and what a study
  needs of the machine (``spec.footprint``)
* ``store``: storage and atomic writes, the study lock; ``cluster``: starting or joining Ray
  clusters (waiting for a node a trial fits), Slurm
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
        from hrtem_ray.spec.config import load_study_spec

        return load_study_spec
    raise AttributeError(f"module 'hrtem_ray' has no attribute {name!r}")
