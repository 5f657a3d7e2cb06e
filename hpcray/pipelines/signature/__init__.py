"""Signature detection (paper section II-B): variant annotation as a service, gene-set
enrichment, dose response, and LLM hypotheses grounded in retrieved literature."""

from hpcray.pipelines.signature.pipeline import run

__all__ = ["run"]
