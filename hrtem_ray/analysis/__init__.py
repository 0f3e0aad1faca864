"""The analysis contract in Polars (docs/results_schema.md), with percentile-bootstrap intervals.

* ``tables``: load, validate and filter, order and encode the results table;
* ``metrics``: every metric defined once (building block, resampled cells, output columns);
* ``functions``: the public functions, one metric each (``pair_matrix``, ``ood_spread``, ...);
* ``selections``: every table for every filter selection at once (the report's tables);
* ``bootstrap``: the resampling of groups of models and the percentile intervals;
* ``findings``: the measures of the reference study's findings, from replicates
  (``replicates``: the replicate means of configurations and their stratified bootstrap);
* ``sequential``: t intervals over replicates and the valid verdicts of adaptive studies,
  look after look; ``verdicts``: the findings table (``findings``), one verdict per
  finding, from t intervals (default) or percentile intervals.

Everything is importable from here (``hrtem_ray.analysis.pair_matrix``), as documented.
"""

from hrtem_ray.analysis.bootstrap import CI_SUFFIXES
from hrtem_ray.analysis.functions import (
    FIGURE_7_2,
    FIGURE_7_2_COLUMNS,
    asymmetry_summary,
    baseline_comparison,
    generalization_gap,
    hyperparameter_effects,
    ood_spread,
    pair_matrix,
    significant,
    training_time,
    transfer_asymmetry,
    transfer_mixture_models,
)
from hrtem_ray.analysis.metrics import (
    ASYMMETRY_COLUMNS,
    BASELINE_COLUMNS,
    DEVICE_COLUMNS,
    GAP_COLUMNS,
    HYPER_STATS,
    OOD_COLUMNS,
    PAIR_COLUMNS,
    QUANTILES,
    SUMMARY_COLUMNS,
    TIME_COLUMNS,
)
from hrtem_ray.analysis.selections import ALL, SELECTION_DIMS, format_value, selection_tables
from hrtem_ray.analysis.tables import (
    DOMAIN_COLUMNS,
    FILTERS,
    LABEL_COLUMNS,
    REDUCE_MODES,
    TRANSFER_FILTERS,
    domain_order,
    encode_labels,
    load_results,
    sort_domains,
)
from hrtem_ray.analysis.verdicts import findings

__all__ = [
    "CI_SUFFIXES",
    "ALL",
    "ASYMMETRY_COLUMNS",
    "BASELINE_COLUMNS",
    "DEVICE_COLUMNS",
    "DOMAIN_COLUMNS",
    "FIGURE_7_2",
    "FIGURE_7_2_COLUMNS",
    "FILTERS",
    "GAP_COLUMNS",
    "HYPER_STATS",
    "LABEL_COLUMNS",
    "OOD_COLUMNS",
    "PAIR_COLUMNS",
    "QUANTILES",
    "REDUCE_MODES",
    "SELECTION_DIMS",
    "SUMMARY_COLUMNS",
    "TIME_COLUMNS",
    "TRANSFER_FILTERS",
    "asymmetry_summary",
    "baseline_comparison",
    "domain_order",
    "encode_labels",
    "findings",
    "format_value",
    "generalization_gap",
    "hyperparameter_effects",
    "load_results",
    "ood_spread",
    "pair_matrix",
    "selection_tables",
    "significant",
    "sort_domains",
    "training_time",
    "transfer_asymmetry",
    "transfer_mixture_models",
]
