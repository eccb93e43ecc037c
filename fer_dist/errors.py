"""The one error type for bad user input (files, flags, configs).

Raised anywhere in the package; only the job adapters in `jobs/` catch it, print
`error: <message>` on one line to stderr and exit with status 2.
"""


class UserError(Exception):
    """A problem with what the user gave us: a file, a flag, a config value."""
