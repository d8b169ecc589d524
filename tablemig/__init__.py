"""tablemig: plan, rehearse, execute, verify and roll back the table rename strategy."""

__version__ = "0.1.0"


def version() -> str:
    """The version of the installed distribution (this tree's `__version__` when it runs
    uninstalled)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as distribution_version

    try:
        return distribution_version("tablemig")
    except PackageNotFoundError:
        return __version__
