"""The trials of a study: pretrain, transfer (children of a pretrain model) and mixture baselines.

Pure planning, no Ray: :func:`plan_trials` expands a :class:`~hrtem_ray.spec.study.StudySpec`
into :class:`Trial` records with stable ids, so that the same configuration and
seed always get the same ``model_id`` (resumed sweeps cannot duplicate rows).

Pretraining protocols (``transfer.parents``)
--------------------------------------------
``shared`` (default)
    One pretrain model per pretrain-grid configuration (domain x lr x n_images x seed);
    all its transfer children start from its checkpoint. The defocus preset's grid: 30
    pretrain + 7,200 transfer trainings.
``per_model`` (the reference study's protocol)
    Every transfer model gets a pretraining run of its own: the same pretrain
    configuration with its own seed, :func:`per_model_seed` of the grid seed and the
    child's transfer settings. The defocus preset: 7,200 pretrain + 7,200 transfer
    trainings. A pretrain configuration without any child keeps its one grid model.

Both protocols train the same transfer models (same settings); ``shared`` saves
``n_transfer_models - n_pretrain_configurations`` pretraining runs, which
:func:`dry_run` prints as training passes for both protocols. The per-model parents
are independent, so the pretrain statistics rest on one model per transfer model and
transfer medians are not correlated through shared parents.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

from hrtem_ray.spec.study import StudySpec
from hrtem_ray.spec.types import N_SYMMETRIES, PHASES, TRAINED_PHASES, Freeze, Phase

__all__ = [
    "PHASES",
    "Phase",
    "Trial",
    "TrialPlan",
    "baseline_pairs",
    "config_key",
    "dry_run",
    "mixture_steps",
    "per_model_seed",
    "phase_line",
    "plan_replicates",
    "plan_trials",
    "replicate_seed",
    "stage_steps",
    "threshold_sizes",
    "trial_context",
    "trial_passes",
    "training_line",
    "training_passes",
]


@dataclass(frozen=True)
class Trial:
    """One model to train. Field meanings follow the results table (docs/results_schema.md)."""

    phase: Phase
    pretrain_domain: str
    transfer_domain: str | None
    pretrain_lr: float
    transfer_lr: float | None
    n_pretrain: int
    n_transfer: int | None
    freeze: Freeze
    seed: int
    parent_id: str | None
    config_hash: str = field(default="", compare=False)
    model_id: str = field(default="", compare=False)
    #: A transfer trial's parent's seed (its ``seed`` is the transfer stage's); ``None`` else.
    parent_seed: int | None = None
    #: A baseline's optimizer-step budget under ``baseline.match: steps`` (the last epoch
    #: may be partial); ``None``: it trains whole epochs.
    max_steps: int | None = None
    #: The stage's realistic augmentations (``transfer.augment`` / ``baseline.augment``):
    #: canonical JSON of an :class:`~hrtem_ray.spec.study.AugmentSpec`; ``None``: none.
    augment: str | None = None
    #: ``"random"``: the trial's target images are drawn with its seed
    #: (``training.target_images``); ``None``: the first ``n`` by structure id.
    target_images: str | None = None

    @property
    def draw_seed(self) -> int | None:
        """The seed its target images are drawn with, or ``None`` (the first ``n``)."""
        return self.seed if self.target_images == "random" else None

    @property
    def train_domain(self) -> str:
        """The domain whose validation set selects the best epoch."""
        return self.pretrain_domain if self.phase == "pretrain" else str(self.transfer_domain)

    @property
    def n_train_images(self) -> int:
        """Images the trial's stage trains on (a baseline: source plus target; a threshold:
        the labelled tiles its blur is chosen on)."""
        if self.phase in ("pretrain", "threshold"):
            return self.n_pretrain
        if self.phase == "transfer":
            return int(self.n_transfer or 0)
        return self.n_pretrain + int(self.n_transfer or 0)

    @property
    def target_fraction(self) -> float | None:
        """A baseline's share of target images (``n_transfer / (n_pretrain + n_transfer)``)."""
        if self.phase != "baseline":
            return None
        return int(self.n_transfer or 0) / self.n_train_images

    @property
    def lr(self) -> float:
        """Learning rate of the stage this trial trains."""
        return self.transfer_lr if self.phase == "transfer" else self.pretrain_lr

    def describe(self) -> str:
        """A short human-readable description for progress lines."""
        drawn = f" drawn with seed {self.seed}" if self.target_images else ""
        if self.phase == "threshold":
            return f"threshold {self.pretrain_domain} (blur + Otsu) n={self.n_pretrain}{drawn}"
        if self.phase == "pretrain":
            return f"pretrain {self.pretrain_domain} lr={self.pretrain_lr:g} n={self.n_pretrain} seed={self.seed}"
        if self.phase == "transfer":
            parent = (
                "" if self.parent_seed in (None, self.seed) else f" parent seed={self.parent_seed}"
            )
            return (
                f"transfer {self.pretrain_domain}->{self.transfer_domain} lr={self.transfer_lr:g} "
                f"n={self.n_transfer} freeze={self.freeze} seed={self.seed}{parent}"
                + (" augmented" if self.augment else "")
                + (" drawn" if self.target_images else "")
            )
        steps = "" if self.max_steps is None else f" steps={self.max_steps}"
        return (
            f"baseline {self.pretrain_domain}:{self.transfer_domain}={self.n_pretrain}:{self.n_transfer} "
            f"lr={self.pretrain_lr:g} seed={self.seed}{steps}"
            + (" drawn" if self.target_images else "")
        )

    @property
    def config(self) -> str:
        """The configuration this trial is a replicate of (:func:`config_key`)."""
        return config_key(
            self.phase, self.pretrain_domain, self.transfer_domain, self.pretrain_lr,
            self.transfer_lr, self.n_pretrain, self.n_transfer, self.freeze,
        )  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Trial:
        return cls(**data)


@dataclass(frozen=True)
class TrialPlan:
    """Every trial of a study, grouped by phase."""

    pretrain: list[Trial]
    transfer: list[Trial]
    baseline: list[Trial]
    threshold: list[Trial] = field(default_factory=list)

    def all(self) -> list[Trial]:
        return [*self.pretrain, *self.transfer, *self.baseline, *self.threshold]

    def children(self) -> dict[str, list[Trial]]:
        """Transfer trials keyed by their parent's model id."""
        out: dict[str, list[Trial]] = {}
        for trial in self.transfer:
            out.setdefault(str(trial.parent_id), []).append(trial)
        return out

    def counts(self) -> dict[str, int]:
        """Trials per phase: the three training phases always, ``threshold`` when planned."""
        return {p: len(getattr(self, p)) for p in PHASES if p in TRAINED_PHASES or getattr(self, p)}


#: Trial fields that do not enter the id: the id itself, and ``parent_seed``, which follows
#: from ``parent_id`` (in the id).
NOT_IDENTIFYING = ("config_hash", "model_id", "parent_seed")
#: Trial fields added after model ids were first derived: they enter the id only when set
#: to something other than this default, so that every existing id stays as it was.
LATER_TRIAL_DEFAULTS = {"max_steps": None, "augment": None, "target_images": None}


def _identify(trial: Trial, context: dict) -> Trial:
    """Attach ``config_hash`` (full configuration) and ``model_id`` to a trial."""
    fields = asdict(trial)
    hashed = {
        k: v
        for k, v in fields.items()
        if k not in NOT_IDENTIFYING
        and not (k in LATER_TRIAL_DEFAULTS and v == LATER_TRIAL_DEFAULTS[k])
    }
    text = json.dumps({"trial": hashed, **context}, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()
    fields.update(config_hash=digest[:16], model_id=f"{trial.phase}-{digest[:12]}")
    return Trial(**fields)


#: Fields of ``training`` added after model ids were first derived: they enter the id only
#: when set to something other than this default, so that every existing id stays as it was.
LATER_TRAINING_DEFAULTS = {
    "loss": "cross_entropy",
    "max_epochs": None,
    "patience": None,
    "min_delta": 0.0,
    "eval_split": None,
    "tta": False,
    "min_steps": None,
}


def trial_context(spec: StudySpec) -> dict:
    """Everything besides the trial's own fields that determines the trained model.

    ``training`` holds every field of :class:`~hrtem_ray.spec.study.TrainingSpec` except
    those of :data:`LATER_TRAINING_DEFAULTS` that are at their default (a study with the
    default loss keeps the ids it had before ``training.loss`` existed), and
    ``target_images``, which enters only the ids of the trials it concerns (pretrained
    models stay shared with a study that differs in it).
    """
    training = spec.training.model_dump(mode="json")
    training.pop("target_images")  # in the ids of the trials it concerns (Trial.target_images)
    for key, default in LATER_TRAINING_DEFAULTS.items():
        if training.get(key) == default:
            training.pop(key)
    return {
        "study": spec.name,
        "axis": spec.dataset.axis,
        "dataset": spec.dataset.content_hash(),
        "model": spec.model.model_dump(mode="json"),
        "training": training,
        "eval": spec.domains_for("eval"),
    }


def per_model_seed(
    seed: int, transfer_domain: str, transfer_lr: float, n_transfer: int, freeze: str
) -> int:
    """The seed of a transfer model's own pretraining run under ``transfer.parents: per_model``.

    The first 60 bits of SHA-256 of the canonical JSON
    ``{"freeze": ..., "n_transfer": ..., "seed": ..., "transfer_domain": ..., "transfer_lr": ...}``
    (keys sorted, no spaces), as an integer in ``[0, 2**60)``. It depends only on the
    grid seed and the child's own transfer settings (not on the grid's size or order), so
    adding a grid value keeps every existing seed and model id. Parent and child both use
    it (initialisation and data order), and it is the ``seed`` column of their rows.

    Parameters
    ----------
    seed
        The pretrain grid's seed (``pretrain.seeds``).
    transfer_domain, transfer_lr, n_transfer, freeze
        The transfer model's settings.

    Returns
    -------
    int
        The derived seed.

    Examples
    --------
    >>> per_model_seed(0, "10", 1e-4, 64, "none") == per_model_seed(0, "10", 1e-4, 64, "none")
    True
    >>> per_model_seed(0, "10", 1e-4, 64, "none") != per_model_seed(1, "10", 1e-4, 64, "none")
    True
    """
    payload = {
        "seed": int(seed),
        "transfer_domain": str(transfer_domain),
        "transfer_lr": float(transfer_lr),
        "n_transfer": int(n_transfer),
        "freeze": str(freeze),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


def baseline_pairs(pretrain: list[str], transfer: list[str]) -> list[tuple[str, str]]:
    """Unordered (source, target) pairs for mixture baselines.

    Every pretrain-to-transfer pair without repeats, a pair of two pretraining
    domains counted once (source = the one listed first), e.g. 40 pairs for the
    defocus study's 5 pretraining and 11 transfer defoci.
    """
    seen: set[frozenset[str]] = set()
    pairs = []
    for a in pretrain:
        for b in transfer:
            key = frozenset((a, b))
            if a == b or key in seen:
                continue
            seen.add(key)
            pairs.append(
                (a, b) if b not in pretrain or pretrain.index(a) < pretrain.index(b) else (b, a)
            )
    return pairs


def _pretrain_trial(
    domain: str, lr: float, n: int, seed: int, ctx: dict, augment: str | None = None
) -> Trial:
    """The pretrain trial on ``n`` images of ``domain`` at ``lr`` with ``seed``, identified."""
    trial = Trial("pretrain", domain, None, lr, None, n, None, "none", seed, None, augment=augment)
    return _identify(trial, ctx)


def _transfer_trial(
    parent: Trial,
    target: str,
    lr: float,
    n: int,
    freeze: Freeze,
    ctx: dict,
    seed: int | None = None,
    augment: str | None = None,
) -> Trial:
    """The child of ``parent`` with the given transfer settings, identified.

    ``seed`` is the transfer stage's (``transfer.seeds``); ``None``: the parent's. The
    child records its parent's seed (``parent_seed``) and the stage's ``augment``.
    """
    child = Trial(
        "transfer",
        parent.pretrain_domain,
        target,
        parent.pretrain_lr,
        lr,
        parent.n_pretrain,
        n,
        freeze,
        parent.seed if seed is None else seed,
        parent.model_id,
        parent_seed=parent.seed,
        augment=augment,
    )
    return _identify(child, ctx)


def stage_steps(n_images: int, epochs: int, batch_size: int) -> int:
    """Optimizer steps of a stage: ``epochs x ceil(n_images x 8 symmetries / batch_size)``.

    :func:`hrtem_ray.learning.train.train_epoch` visits every image under every symmetry
    in batches of ``batch_size``, the last one possibly smaller.

    Examples
    --------
    >>> stage_steps(24, 4, 16)
    48
    >>> stage_steps(0, 4, 16)
    0
    """
    return epochs * math.ceil(n_images * N_SYMMETRIES / batch_size)


def mixture_steps(spec: StudySpec, n_target: int) -> int:
    """The step budget of a mixture with ``n_target`` target images under ``baseline.match: steps``.

    The steps of its transfer counterpart in both stages together: pretraining on the
    pretrain grid's images (its one ``n_images`` value) plus transfer on ``n_target``
    images, each for ``training.epochs`` (:func:`stage_steps`). Fraction 0 (no target
    image) gets the pretraining steps alone.
    """
    if spec.pretrain is None:
        raise ValueError("baseline.match: steps needs a pretrain grid")
    epochs, batch = spec.training.epoch_limit, spec.training.batch_size
    (n_pretrain,) = spec.pretrain.n_images
    return stage_steps(n_pretrain, epochs, batch) + stage_steps(n_target, epochs, batch)


def plan_trials(spec: StudySpec) -> TrialPlan:
    """Expand a study into its trials (pretrain, transfer, baseline), in a fixed order.

    Pretrain trials follow the pretrain grid (domain, lr, n_images, seed). Under
    ``transfer.parents: shared`` each is the parent of all its configuration's transfer
    trials (every target but its own domain x lr x n_images x freeze x ``transfer.seeds``,
    one child with the parent's seed without them); under ``per_model`` each transfer
    trial gets a parent of its own, seeded with :func:`per_model_seed`; the parents are
    listed in the order of their children (see the module docstring). Baseline trials:
    ``baseline.pairs`` (default every pair of :func:`baseline_pairs`) x mixture (:meth:`StudySpec.mixture_counts`) x
    lr x seed, with a step budget (:func:`mixture_steps`) under ``baseline.match: steps``.

    Raises
    ------
    ValueError
        If two per-model parents would get the same id (a 60-bit seed collision; never
        observed).
    """
    ctx = trial_context(spec)
    pre_domains = spec.domains_for("pretrain")
    tr_domains = spec.domains_for("transfer")
    configs: list[Trial] = []
    if spec.pretrain is not None:
        grid = spec.pretrain
        for domain, lr, n, seed in itertools.product(
            pre_domains, grid.lr, grid.n_images, grid.seeds
        ):
            configs.append(_pretrain_trial(domain, lr, n, seed, ctx, _augment_key(grid.augment)))
    pretrain: list[Trial] = []
    transfer: list[Trial] = []
    per_model = spec.transfer is not None and spec.transfer.parents == "per_model"
    augment = _augment_key(spec.transfer.augment if spec.transfer else None)
    for config in configs:
        targets = [d for d in tr_domains if d != config.pretrain_domain]
        grid = spec.transfer
        settings = (
            list(itertools.product(targets, grid.lr, grid.n_images, grid.freeze))
            if grid is not None
            else []
        )
        if not per_model or not settings:
            pretrain.append(config)
            seeds = grid.seeds if grid is not None and grid.seeds is not None else [None]
            transfer.extend(
                _transfer_trial(config, *s, ctx, seed=seed, augment=augment)
                for s in settings
                for seed in seeds
            )
            continue
        for target, lr, n, freeze in settings:
            seed = per_model_seed(config.seed, target, lr, n, freeze)
            parent = _pretrain_trial(
                config.pretrain_domain, config.pretrain_lr, config.n_pretrain, seed, ctx,
                config.augment,
            )  # fmt: skip
            pretrain.append(parent)
            transfer.append(_transfer_trial(parent, target, lr, n, freeze, ctx, augment=augment))
    if len({t.model_id for t in pretrain}) != len(pretrain):
        raise ValueError("two pretrain trials share a model id (per-model seed collision)")
    return _with_targets(spec, ctx, pretrain, transfer, _baseline_trials(spec, ctx))


def threshold_sizes(spec: StudySpec, domain: str) -> list[int]:
    """The labelled-tile counts a threshold baseline of imported ``domain`` is fitted on.

    The transfer grid's ``n_images`` when ``domain`` is a transfer target (so that each
    transfer size meets a threshold chosen on the same tiles), else the pretrain grid's
    when it is a pretrain domain, else the baseline targets' counts, else the transfer
    grid's or the pretrain grid's; none when the spec has no grid.
    """
    grids = {
        "transfer": list(spec.transfer.n_images) if spec.transfer else [],
        "pretrain": list(spec.pretrain.n_images) if spec.pretrain else [],
    }
    for role in ("transfer", "pretrain"):
        if domain in spec.domains_for(role) and grids[role]:  # type: ignore[arg-type]
            return sorted(set(grids[role]))
    targets = sorted({n for _, n in spec.mixture_counts() if n})
    return targets or sorted(set(grids["transfer"] or grids["pretrain"]))


def _with_targets(
    spec: StudySpec, ctx: dict, pretrain: list[Trial], transfer: list[Trial], baseline: list[Trial]
) -> TrialPlan:
    """The plan, with ``training.target_images`` applied and its threshold trials.

    Under ``random`` every transfer trial and every baseline with target images draws
    them with its seed (:attr:`Trial.draw_seed`), and a threshold is fitted per size and
    per seed those trials drew with; under ``first`` one threshold per size (seed 0).
    """
    if spec.training.target_images == "random":

        def drawn(trial: Trial) -> Trial:
            if trial.n_transfer:
                return _identify(replace(trial, target_images="random"), ctx)
            return trial

        transfer, baseline = [drawn(t) for t in transfer], [drawn(t) for t in baseline]
    return TrialPlan(
        pretrain, transfer, baseline, _threshold_trials(spec, ctx, transfer + baseline)
    )


def _threshold_trials(spec: StudySpec, ctx: dict, trained: list[Trial]) -> list[Trial]:
    """A blur-and-Otsu baseline per imported eval domain and size (:func:`threshold_sizes`),
    and per draw seed of the ``trained`` trials on that domain under ``target_images: random``."""
    trials = []
    for domain in spec.domains_for("eval"):
        if domain not in spec.domains.imported:
            continue
        seeds = sorted({t.seed for t in trained if t.target_images and t.transfer_domain == domain})
        for n in threshold_sizes(spec, domain):
            trial = Trial("threshold", domain, None, 0.0, None, n, None, "none", 0, None)
            if not seeds:
                trials.append(_identify(trial, ctx))
            trials += [
                _identify(replace(trial, seed=seed, target_images="random"), ctx) for seed in seeds
            ]
    return trials


def _baseline_trial(
    spec: StudySpec, pair: tuple[str, str], counts: tuple[int, int], lr: float, seed: int, ctx: dict
) -> Trial:
    """The mixture of ``counts`` (source, target) images of ``pair`` at ``lr`` with ``seed``."""
    (src, tgt), (n_src, n_tgt) = pair, counts
    steps = mixture_steps(spec, n_tgt) if spec.baseline.match == "steps" else None
    trial = Trial("baseline", src, tgt, lr, None, n_src, n_tgt, "none", seed, None)
    augment = _augment_key(spec.baseline.augment)
    return _identify(replace(trial, max_steps=steps, augment=augment), ctx)


def _baseline_trials(spec: StudySpec, ctx: dict) -> list[Trial]:
    """The mixture baselines of ``spec`` (see :func:`plan_trials`), identified."""
    grid = spec.baseline
    if grid is None:
        return []
    pairs = grid.pairs or baseline_pairs(spec.domains_for("pretrain"), spec.domains_for("transfer"))
    return [
        _baseline_trial(spec, pair, counts, lr, seed, ctx)
        for pair, counts, lr, seed in itertools.product(
            pairs, spec.mixture_counts(), grid.lr, grid.seeds
        )
    ]


def config_key(
    phase: str,
    pretrain_domain: str,
    transfer_domain: str | None,
    pretrain_lr: float,
    transfer_lr: float | None,
    n_pretrain: int,
    n_transfer: int | None,
    freeze: str,
) -> str:
    """A configuration's name: everything that defines a model but its seed (and parent).

    The same for a planned :class:`Trial` and a row of its results (the findings'
    configurations of :mod:`hrtem_ray.analysis.findings`, within one study's training
    settings).

    >>> config_key("transfer", "-10", "5", 1e-3, 3e-4, 24, 6, "none")
    'transfer -10>5 lr=0.001/0.0003 n=24/6 none'
    >>> config_key("pretrain", "0", None, 1e-3, None, 24, None, "none")
    'pretrain 0>- lr=0.001/- n=24/- none'
    """

    def text(value: object) -> str:
        if value is None:
            return "-"
        return f"{float(value):g}" if isinstance(value, float) else str(value)

    return (
        f"{phase} {pretrain_domain}>{text(transfer_domain)} lr={text(pretrain_lr)}/"
        f"{text(transfer_lr)} n={text(n_pretrain)}/{text(n_transfer)} {freeze}"
    )


def replicate_seed(seeds: Sequence[int], replicate: int) -> int:
    """The seed of replicate ``replicate`` (0, 1, ...) of a grid: its ``seeds`` in order,
    then the integers after the largest of them.

    >>> [replicate_seed([0, 1, 2], r) for r in range(5)]
    [0, 1, 2, 3, 4]
    >>> [replicate_seed([7], r) for r in range(3)]
    [7, 8, 9]
    """
    if replicate < len(seeds):
        return int(seeds[replicate])
    return max(seeds) + 1 + replicate - len(seeds)


def plan_replicates(spec: StudySpec, replicates: Mapping[str, int]) -> TrialPlan:
    """The trials of every grid configuration at its own number of replicates.

    The plan of an adaptive study's round (:mod:`hrtem_ray.sweep.adaptive`): configuration
    :func:`config_key` -> replicates (missing: none). Replicate ``r`` takes
    :func:`replicate_seed` of its grid's seeds, so that at the grid's own counts the
    plan is :func:`plan_trials`' (the same model ids) and a configuration's first
    replicates never change when more are added. Under ``transfer.parents: shared``
    replicate ``r`` of a transfer configuration is the child of its configuration's parent
    ``r // T`` with transfer seed ``r % T`` (``T`` seeds in ``transfer.seeds``, else 1
    and the parent's seed), and a pretrain configuration has as many models as its count
    or its children need, whichever is more. Under ``per_model`` every transfer replicate
    has a parent of its own (:func:`per_model_seed` of replicate ``r``'s seed) and a
    pretrain configuration's count adds standalone models with the grid's seeds.
    """
    ctx = trial_context(spec)
    pretrain: list[Trial] = []
    transfer: list[Trial] = []
    per_model = spec.transfer is not None and spec.transfer.parents == "per_model"
    t_seeds = spec.transfer.seeds if spec.transfer is not None else None
    per_parent = len(t_seeds) if t_seeds else 1
    p_seeds = spec.pretrain.seeds if spec.pretrain is not None else []
    augment = _augment_key(spec.transfer.augment if spec.transfer else None)
    for config in _pretrain_configs(spec, ctx):
        kids = [
            (settings, replicates.get(_child_config(config, *settings), 0))
            for settings in _child_settings(spec, config.pretrain_domain)
        ]
        own = replicates.get(config.config, 0)
        parents = max([own, *(math.ceil(k / per_parent) for _, k in kids)])
        shared = [] if per_model else [
            _pretrain_trial(config.pretrain_domain, config.pretrain_lr, config.n_pretrain,
                            replicate_seed(p_seeds, r), ctx, config.augment)
            for r in range(parents)
        ]  # fmt: skip
        standalone = [
            _pretrain_trial(config.pretrain_domain, config.pretrain_lr, config.n_pretrain,
                            replicate_seed(p_seeds, r), ctx, config.augment)
            for r in range(own)
        ] if per_model else shared  # fmt: skip
        pretrain.extend(standalone)
        for (target, lr, n, freeze), count in kids:
            for r in range(count):
                if per_model:
                    seed = per_model_seed(replicate_seed(p_seeds, r), target, lr, n, freeze)
                    parent = _pretrain_trial(
                        config.pretrain_domain, config.pretrain_lr, config.n_pretrain, seed, ctx,
                        config.augment,
                    )  # fmt: skip
                    pretrain.append(parent)
                    transfer.append(
                        _transfer_trial(parent, target, lr, n, freeze, ctx, augment=augment)
                    )
                else:
                    seed = t_seeds[r % per_parent] if t_seeds else None
                    parent = shared[r // per_parent]
                    transfer.append(
                        _transfer_trial(parent, target, lr, n, freeze, ctx, seed, augment=augment)
                    )
    baseline = []
    if spec.baseline is not None:
        grid = spec.baseline
        pairs = grid.pairs or baseline_pairs(
            spec.domains_for("pretrain"), spec.domains_for("transfer")
        )
        for pair, counts, lr in itertools.product(pairs, spec.mixture_counts(), grid.lr):
            key = config_key("baseline", pair[0], pair[1], lr, None, counts[0], counts[1], "none")
            for r in range(replicates.get(key, 0)):
                seed = replicate_seed(grid.seeds, r)
                baseline.append(_baseline_trial(spec, pair, counts, lr, seed, ctx))
    return _with_targets(spec, ctx, pretrain, transfer, baseline)


def _pretrain_configs(spec: StudySpec, ctx: dict) -> list[Trial]:
    """One pretrain trial per pretrain-grid configuration (the grid's first seed)."""
    if spec.pretrain is None:
        return []
    grid = spec.pretrain
    return [
        _pretrain_trial(domain, lr, n, grid.seeds[0], ctx, _augment_key(grid.augment))
        for domain, lr, n in itertools.product(spec.domains_for("pretrain"), grid.lr, grid.n_images)
    ]


def _child_settings(spec: StudySpec, domain: str) -> list[tuple[str, float, int, Freeze]]:
    """``(target, lr, n_images, freeze)`` of every transfer configuration from ``domain``."""
    grid = spec.transfer
    if grid is None:
        return []
    targets = [d for d in spec.domains_for("transfer") if d != domain]
    return list(itertools.product(targets, grid.lr, grid.n_images, grid.freeze))


def _child_config(parent: Trial, target: str, lr: float, n: int, freeze: str) -> str:
    """The configuration key of a transfer configuration of ``parent``'s configuration."""
    return config_key(
        "transfer", parent.pretrain_domain, target, parent.pretrain_lr, lr, parent.n_pretrain,
        n, freeze,
    )  # fmt: skip


def _augment_key(augment) -> str | None:
    """A stage's augmentations as a trial records them (canonical JSON), or None."""
    return None if augment is None else augment.key()


def trial_passes(trial: Trial, epochs: int, batch_size: int) -> int:
    """Augmented image passes of one trial: images x 8 symmetries x ``epochs``, or its step budget's.

    A trial with ``max_steps`` trains whole epochs while its budget lasts, then part of one
    (``batch_size`` samples a step).
    """
    if trial.phase == "threshold":
        return 0  # nothing is trained
    per_epoch = trial.n_train_images * N_SYMMETRIES
    if trial.max_steps is None:
        return per_epoch * epochs
    full, rest = divmod(trial.max_steps, math.ceil(per_epoch / batch_size))
    return full * per_epoch + rest * batch_size


def training_passes(trials: list[Trial], epochs: int, batch_size: int) -> int:
    """Augmented image passes of ``trials`` (:func:`trial_passes`) for ``epochs`` epochs."""
    return sum(trial_passes(t, epochs, batch_size) for t in trials)


def _protocol_lines(spec: StudySpec) -> list[str]:
    """Trainings and image passes of ``spec`` under both ``transfer.parents`` protocols.

    One line per protocol, the one of ``spec`` marked ``(this spec)``; the ``shared``
    line also says how much compute shared parents save against ``per_model``.
    """
    if spec.transfer is None:
        return []
    epochs, batch = spec.training.epoch_limit, spec.training.batch_size
    totals = {}
    for parents in ("per_model", "shared"):
        # transfer.seeds are a shared-parents option: per_model replicates with pretrain seeds
        update = {"parents": parents, "seeds": spec.transfer.seeds if parents == "shared" else None}
        variant = spec.model_copy(update={"transfer": spec.transfer.model_copy(update=update)})
        trials = [t for t in plan_trials(variant).all() if t.phase in TRAINED_PHASES]
        totals[parents] = (len(trials), training_passes(trials, epochs, batch))
    (n_per, passes_per), (n_shared, passes_shared) = totals["per_model"], totals["shared"]
    saved = passes_per - passes_shared
    share = saved / passes_per if passes_per else 0.0
    lines = []
    for parents, (n, passes) in totals.items():
        mark = " (this spec)" if parents == spec.transfer.parents else ""
        most = "at most " if spec.training.stops_early else ""
        line = f"transfer.parents: {parents}{mark}: {n:,} trainings, {most}{passes:,} augmented image passes"
        if parents == "shared":
            line += (
                f"; shared parents save {n_per - n_shared:,} pretraining runs, "
                f"{saved:,} passes ({share:.0%})"
            )
        lines.append(line)
    return lines


def training_line(spec: StudySpec) -> str:
    """How the spec's stages train: fixed epochs or early stopping, and how convergence is judged."""
    training = spec.training
    if training.stops_early:
        return (
            f"training: early stopping on the validation loss after {training.patience} epochs "
            f"without an improvement > {training.min_delta:g}, at most {training.max_epochs} "
            "epochs; converged: stopped on patience, or best epoch at least patience before the last"
        )
    if training.patience is not None:
        return (
            f"training: {training.epochs} fixed epochs; converged: best epoch at least "
            f"{training.patience} (training.patience) before the last"
        )
    return (
        f"training: {training.epochs} fixed epochs; convergence not judged (no training.patience)"
    )


def phase_line(spec: StudySpec, phase: str, trials: list[Trial]) -> str:
    """Trials of a phase, the images each trains on and its augmented image passes."""
    epochs, batch = spec.training.epoch_limit, spec.training.batch_size
    sizes = Counter(t.n_train_images for t in trials)
    detail = ", ".join(f"{count} x {images}" for images, count in sorted(sizes.items()))
    if phase == "threshold":
        domains = ", ".join(sorted({t.pretrain_domain for t in trials}))
        return (
            f"threshold: {len(trials)} blur + Otsu baselines of imported domains ({domains}), "
            f"no training; blur chosen on labelled tiles per baseline: {detail}"
        )
    passes = training_passes(trials, epochs, batch)
    if phase == "baseline" and spec.baseline is not None and spec.baseline.match == "steps":
        budgets = ", ".join(f"{n:,}" for n in sorted({int(t.max_steps or 0) for t in trials}))
        extent = f"in steps matched to the transfer arm: {budgets} steps"
    elif spec.training.stops_early:
        extent = f"at most, over at most {epochs} epochs"
    else:
        extent = f"over {epochs} epochs"
    return (
        f"{phase}: {len(trials)} trials training on images per trial: {detail} "
        f"({passes:,} augmented image passes {extent})"
    )


def dry_run(spec: StudySpec) -> str:
    """Trial counts per phase and the images each trial trains on, without running anything.

    Parameters
    ----------
    spec
        The validated study.

    Returns
    -------
    str
        Lines: ``study NAME (AXIS): N pretrain, N transfer, N baseline, N models in all``
        (scripts read this first line: its form stays), the result rows, the training
        protocol (:func:`training_line`), per phase the training-set sizes (``count x
        images``) and the augmented image passes (images x dihedral symmetries x epochs,
        "at most" under early stopping; a step budget's under ``baseline.match: steps``),
        then, for a study with transfer trials, the trainings and image passes of all
        phases under each pretraining protocol (``transfer.parents: per_model`` and
        ``shared``), with what shared parents save.
    """
    plan = plan_trials(spec)
    n_eval = len(spec.domains_for("eval"))
    lines = [
        f"study {spec.name} ({spec.dataset.axis}): "
        + ", ".join(f"{n} {phase}" for phase, n in plan.counts().items())
        + f", {len(plan.all())} models in all",
        f"each model is evaluated on {n_eval} eval domains: {len(plan.all()) * n_eval} result rows",
        training_line(spec),
    ]
    for phase in PHASES:
        trials = getattr(plan, phase)
        if trials:
            lines.append(phase_line(spec, phase, trials))
    return "\n".join(lines + _protocol_lines(spec))
