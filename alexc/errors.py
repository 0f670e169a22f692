"""The errors a user can fix: the CLI prints them as one line, never a traceback."""


class AlexcError(Exception):
    """An error the user can fix: printed as one line, no traceback."""


class GraphError(AlexcError):
    """A graph file (or a graph built in Python) is malformed.

    The message names the file, the line where known, the node and what to change.
    """

    def __init__(self, what: str, *, file=None, line=None, node=None):
        self.what, self.file, self.line, self.node = what, file, line, node
        where = ""
        if file is not None:
            where = f"{file}:{line}: " if line is not None else f"{file}: "
        who = f"node '{node}': " if node is not None else ""
        super().__init__(f"{where}{who}{what}")


class DataError(AlexcError):
    """Bad or missing data."""


class CheckpointError(AlexcError):
    """A checkpoint or weights file is missing, corrupt, or does not fit the graph."""
