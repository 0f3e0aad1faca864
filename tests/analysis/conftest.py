"""The small hand-made results table of the analysis tests (fixture ``table``).

Models in the table (loss per eval domain "0" / "5" / "10"):

pretrain (n_pretrain 512)
  P0a  domain 0,  lr 1e-3, seed 0:  0.30 / 0.50 / 0.90
  P0b  domain 0,  lr 1e-3, seed 1:  0.40 / 0.70 / 1.10
  P0c  domain 0,  lr 1e-4, seed 0:  2.00 / 2.00 / 2.00
  P5a  domain 5,  lr 1e-3, seed 0:  0.80 / 0.20 / 0.60
  P5b  domain 5,  lr 1e-3, seed 1:  1.00 / 0.30 / 0.80
  P10  domain 10, lr 1e-3, seed 0:  1.20 / 0.60 / 0.10
transfer (pretrain lr 1e-3, transfer lr 1e-4, seed 0)
  T05a  0 -> 5,  64 images,  freeze none:     0.50 / 0.15 / 0.50
  T05b  0 -> 5,  128 images, freeze encoder:  0.60 / 0.25 / 0.90
  T50   5 -> 0,  64 images,  freeze none:     0.32 / 0.40 / 0.80
  T010  0 -> 10, 64 images,  freeze none:     0.60 / 0.90 / 0.30
baseline (lr 1e-3, seed 0)
  B1  source 0 (384 images) + target 5 (128 images):  0.33 / 0.22 / 0.90
  B2  source 5 (256 images) + target 0 (256 images):  0.36 / 0.21 / 0.70
"""

from __future__ import annotations

import polars as pl
import pytest

EVALS = ("0", "5", "10")


def _model(model_id, phase, a, b, losses, *, lr=1e-3, tlr=None, n_pre=512, n_tr=None,
           freeze="none", seed=0):  # fmt: skip
    """Rows of one model: one per eval domain."""
    return [
        {
            "study": "defocus",
            "model_id": model_id,
            "phase": phase,
            "parent_id": None,
            "pretrain_domain": a,
            "transfer_domain": b,
            "eval_domain": e,
            "pretrain_lr": lr,
            "transfer_lr": tlr,
            "n_pretrain": n_pre,
            "n_transfer": n_tr,
            "freeze": freeze,
            "seed": seed,
            "epochs": 10,
            "loss": loss,
            "cross_entropy": loss + 0.3,
            "iou": 0.5,
            "best_epoch": 3,
            "train_seconds": 1.0,
            "config_hash": model_id,
            "hrtem_ray_version": "test",
            "extra_column": "ignored",
        }
        for e, loss in zip(EVALS, losses, strict=True)
    ]


@pytest.fixture
def model_rows():
    """The rows of one model of the table's kind: ``model_rows(model_id, phase, a, b, losses)``."""
    return _model


@pytest.fixture
def table() -> pl.DataFrame:
    tr = {"tlr": 1e-4}
    rows = [
        *_model("P0a", "pretrain", "0", None, (0.30, 0.50, 0.90)),
        *_model("P0b", "pretrain", "0", None, (0.40, 0.70, 1.10), seed=1),
        *_model("P0c", "pretrain", "0", None, (2.00, 2.00, 2.00), lr=1e-4),
        *_model("P5a", "pretrain", "5", None, (0.80, 0.20, 0.60)),
        *_model("P5b", "pretrain", "5", None, (1.00, 0.30, 0.80), seed=1),
        *_model("P10", "pretrain", "10", None, (1.20, 0.60, 0.10)),
        *_model("T05a", "transfer", "0", "5", (0.50, 0.15, 0.50), n_tr=64, **tr),
        *_model("T05b", "transfer", "0", "5", (0.60, 0.25, 0.90), n_tr=128, freeze="encoder", **tr),
        *_model("T50", "transfer", "5", "0", (0.32, 0.40, 0.80), n_tr=64, **tr),
        *_model("T010", "transfer", "0", "10", (0.60, 0.90, 0.30), n_tr=64, **tr),
        *_model("B1", "baseline", "0", "5", (0.33, 0.22, 0.90), n_pre=384, n_tr=128),
        *_model("B2", "baseline", "5", "0", (0.36, 0.21, 0.70), n_pre=256, n_tr=256),
    ]
    return pl.DataFrame(rows)
