"""atheris fuzz targets for the long runs by hand (fuzz/README.md); CI runs the same targets on seeds."""
