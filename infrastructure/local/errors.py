class RuntimeSetupError(Exception):
    """A problem starting the local runtime, worded as one line an operator can act on."""
