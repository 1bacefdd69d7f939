"""edgec's errors: each names what was wrong and the valid choices.

The CLI turns any of ``USER_ERRORS`` into one line on stderr and exit code 2.
"""
from edgec.targets import UnknownTargetError


class EdgecError(ValueError):
    """Base class of every error edgec reports to a user."""


# every error the CLI reports as one line: edgec's, and the target table's (targets/ is
# data and imports nothing of edgec, so its error cannot subclass EdgecError)
USER_ERRORS = (EdgecError, UnknownTargetError)


class FrontendError(EdgecError):
    """A model could not be read or imported."""


class UnsupportedOperatorError(FrontendError):
    """The model uses operators TVM's frontend cannot convert."""


class BuildError(EdgecError):
    """Compiling or exporting the library failed."""


class ArtifactError(EdgecError):
    """A built artifact is missing, incomplete, or for another machine."""


class InputError(EdgecError):
    """Inputs given at run time do not match the manifest."""
