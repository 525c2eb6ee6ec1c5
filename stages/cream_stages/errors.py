"""The error a stage raises for bad input: the runner reports it in one line and exits 2."""


class StageInputError(ValueError):
    """A request, data file or model that cannot be used; the message names the file and field."""
