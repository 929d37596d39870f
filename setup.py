"""Packaging: the stage folders install under one namespace.

``flows/``, ``tasks/`` and ``storage/`` stay at the repository's top level (the layout is part
of the design) but install as ``layerdrift.flows``, ``layerdrift.tasks`` and
``layerdrift.storage``, so a user's environment gains one package, not three generic names
that collide with other projects. Everything else lives in ``pyproject.toml``.
"""

from setuptools import find_packages, setup

STAGE_FOLDERS = ("flows", "tasks", "storage")

subpackages = find_packages(include=[f"{folder}*" for folder in STAGE_FOLDERS])
setup(
    packages=["layerdrift", *(f"layerdrift.{name}" for name in subpackages)],
    package_dir={"layerdrift": "layerdrift", **{f"layerdrift.{f}": f for f in STAGE_FOLDERS}},
    # The explorer page's script and stylesheet, inlined into explorer.html.
    package_data={"layerdrift.tasks.report": ["assets/*.js", "assets/*.css"]},
)
