"""The error a signature-detection input raises: it names the file and, where there is one,
the line."""

from hpcray.errors import HpcrayError


class InputError(HpcrayError):
    """A VCF, gene model, FASTA, GMT, sample sheet or corpus the pipeline cannot use."""
