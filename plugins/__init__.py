"""Pigeon's built-in plugins, registered through the ``pigeon`` entry-point group like any other."""
