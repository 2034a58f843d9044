"""Map the repository's top-level folders into the single `mergeguard` import namespace.

`auditor/`, `merge/`, `benchmarks/` and `db/` install as `mergeguard.auditor` and so on, so no generic
top-level name such as `db` or `merge` lands in site-packages. Everything else lives in pyproject.toml.
"""

from setuptools import find_packages, setup

MAPPED = ("auditor", "merge", "benchmarks", "db")

packages = find_packages(include=["mergeguard", "mergeguard.*"])
package_dir = {"mergeguard": "mergeguard"}
for folder in MAPPED:
    package_dir[f"mergeguard.{folder}"] = folder
    packages += [f"mergeguard.{name}" for name in [folder, *find_packages(include=[f"{folder}.*"])]]

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"": ["*.json", "*.jsonl", "*.yaml", "*.yml", "*.txt", "*.sql", "*.md"]},
    include_package_data=True,
)
