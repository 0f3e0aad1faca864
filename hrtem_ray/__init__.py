"""hrtem-ray: a Ray-distributed sweep engine for transfer-learning studies on simulated HRTEM images.

>>> import hrtem_ray
>>> study = hrtem_ray.Study.from_yaml("sweeps/laptop.yaml")  # doctest: +SKIP
"""

__version__ = "0.1.0"

__all__ = ["Study", "__version__", "load_study_spec"]


def __getattr__(name: str):
    # Lazy: importing the package stays cheap (torch, abTEM and Ray load on first use).
    if name == "Study":
        from hrtem_ray.study import Study

        return Study
    if name == "load_study_spec":
        from hrtem_ray.config import load_study_spec

        return load_study_spec
    raise AttributeError(f"module 'hrtem_ray' has no attribute {name!r}")
