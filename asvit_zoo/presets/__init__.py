"""Build presets of ``asvit build`` (one JSON file each; see :mod:`asvit_zoo.build`)."""
