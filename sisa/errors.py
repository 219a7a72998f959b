"""Errors raised to users of the SISA library: each says what was wrong and what is valid."""


class SisaError(Exception):
    """Base class of every error the SISA library raises on purpose."""


class InvalidRequestError(SisaError, ValueError):
    """A deletion request names ids that cannot be deleted (unknown, duplicate, already deleted, ...)."""


class CheckpointCorruptError(SisaError):
    """A checkpoint's bytes do not match the checksum in its manifest (truncated or tampered)."""


class CheckpointMissingError(SisaError):
    """No checkpoint exists for the requested (shard, slice, key)."""


class ConfigMismatchError(SisaError, ValueError):
    """A run directory was made with another configuration than the one given."""


class PendingRequestError(SisaError):
    """A deletion request was recorded but not finished, so some models may still have seen its ids."""


class RunLockedError(SisaError):
    """Another command holds the run directory's lock."""


class LedgerError(SisaError):
    """The ledger is missing, corrupt or fails its tamper check; the run cannot be trusted as it is."""


class RunBindingError(SisaError, ValueError):
    """A run was given a store, data or secret that is not its own (another run's store, changed data, ...)."""
