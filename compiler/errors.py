"""edgec's errors: each names what was wrong and the valid choices.

The CLI turns any ``EdgecError`` into one line on stderr and exit code 2.
"""


class EdgecError(ValueError):
    """Base class of every error edgec reports to a user."""


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
