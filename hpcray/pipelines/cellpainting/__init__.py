"""Cell painting (paper section II-A): five-channel microscopy fields, streamed through CPU
preprocessing into ViT fine-tuning, searched with Ray Tune + Optuna + ASHA; the best model
served as a classification service and evaluated on a held-out split."""

from hpcray.pipelines.cellpainting.data import CHANNELS, ColumnMap, DataError, Field, read_fields
from hpcray.pipelines.cellpainting.pipeline import CellPaintingConfig, run

__all__ = ["CHANNELS", "CellPaintingConfig", "ColumnMap", "DataError", "Field", "read_fields",
           "run"]
