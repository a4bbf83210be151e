"""The version of pyrnn: the one place it is written.

pyproject.toml reads it at build time (scikit-build-core's regex provider, so
the wheel's and sdist's metadata carry it), CMake receives it as
SKBUILD_PROJECT_VERSION, and ``pyrnn.__version__`` imports it, so a source
checkout reports the same version as an installed copy. A release changes
this line and adds its section to CHANGELOG.md (tests/test_version.py checks
that they agree).
"""

__version__ = "0.2.0"
