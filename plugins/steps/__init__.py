"""The built-in plan step kinds and wait conditions, one module each, registered through
the ``beachhead.plugins`` entry points exactly as a third party's would be."""
