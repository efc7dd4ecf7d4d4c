"""`python -m exporter.cli`: the same entry point as the `edgex` console script."""

from exporter.cli import main

main()
