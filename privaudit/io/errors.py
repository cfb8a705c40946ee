"""Errors with documented exit codes (pip-audit style).

0 clean, 1 a finding at or above ``--fail-on``, 2 usage or input error, 3 runtime error.
"""

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE, EXIT_RUNTIME = 0, 1, 2, 3


class PrivauditError(Exception):
    """Base class; ``exit_code`` is what the CLI returns."""

    exit_code = EXIT_RUNTIME


class InputError(PrivauditError):
    """Bad user input: the message names the path and what is wrong."""

    exit_code = EXIT_USAGE


class Inconclusive(Exception):
    """A plugin's evidence is unusable (not an input error): its result cannot support a verdict."""


class PluginError(PrivauditError):
    """A plugin cannot be registered or configured (duplicate name, bad parameter)."""

    exit_code = EXIT_USAGE
