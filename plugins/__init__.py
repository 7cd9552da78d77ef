"""Built-in channel plugins, one module per channel, registered through the
``beachhead.channels`` entry-point group like third-party ones."""
