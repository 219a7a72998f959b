"""What every data source shares: its error type and what it returns."""

from __future__ import annotations

from sisa import SampleTable

Split = tuple[SampleTable, SampleTable]
"""(train, test) tables of one data set."""


class DatasetError(ValueError):
    """A data set is missing, incomplete or malformed; the message names the file, the row or column, and
    what was expected."""
