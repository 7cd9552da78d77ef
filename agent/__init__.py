"""Beachhead's core: targets, plans, channel selection, the workflow engine, the journal
and the CLI. The library entry points are :func:`customize` and :func:`run_plan`."""

__version__ = "0.1.0"

__all__ = ["__version__", "customize", "run_plan"]


def __getattr__(name: str) -> object:
    # Lazy, so `import agent` stays cheap and free of import cycles.
    if name in ("customize", "run_plan"):
        from agent import api

        return getattr(api, name)
    raise AttributeError(name)
