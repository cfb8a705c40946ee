"""privaudit's built-in plugins, registered through the ``privaudit.plugins`` entry points."""
