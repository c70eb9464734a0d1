"""Package map: ``kernels/`` installs as ``rawseq.kernels`` and ``modalities/`` as ``rawseq.modalities``.

Metadata lives in pyproject.toml; this file only lists the packages, found on disk so new sub-packages are never
forgotten in the wheel.
"""

from setuptools import find_packages, setup

_ROOTS = {"rawseq": "rawseq", "rawseq.kernels": "kernels", "rawseq.modalities": "modalities"}


def _packages() -> list[str]:
    packages = []
    for name, folder in _ROOTS.items():
        packages.append(name)
        packages += [f"{name}.{sub}" for sub in find_packages(folder)]
    return packages


setup(packages=_packages(), package_dir=_ROOTS)
