"""Uncertainty quantification (paper section II-C): models x seeds x UQ methods (LoRA,
LoRA ensemble, Laplace-approximated Bayesian LoRA, MC dropout) fine-tuned on QA data,
packed onto GPUs by memory, evaluated for accuracy and calibration."""

from hpcray.pipelines.uq.data import QAError, QAItem, read_qa
from hpcray.pipelines.uq.pipeline import UQConfig, run

__all__ = ["QAError", "QAItem", "UQConfig", "read_qa", "run"]
