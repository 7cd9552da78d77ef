"""Beachhead's core: targets, plans, channel selection, the workflow engine, the journal
and the CLI. The library entry points are re-exported by the ``beachhead`` package."""
