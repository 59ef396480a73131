"""The package list (the rest of the metadata is in pyproject.toml): atlas/ and every folder in
it, found, so an analysis's new folder ships without a line here; and sql/, app/ and flows/,
which sit at the top of the checkout and ship as atlas.sql, atlas.app and atlas.flows."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["atlas", "atlas.*"]),
                "atlas.sql", "atlas.app", "atlas.flows"])
