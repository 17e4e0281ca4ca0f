"""One build step beyond pyproject.toml: the paper's study files ship with the package.

They live at the top of the repository (``studies/``, next to their README); a wheel gets a
copy in ``lradvisor/study_files/``, where :func:`lradvisor.replication.spec.default_studies_dir`
looks first, so that ``lradvisor reproduce`` works after a non-editable ``pip install .``.
An editable install reads ``studies/`` in place.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

STUDIES = Path(__file__).resolve().parent / "studies"
PACKAGED = Path("lradvisor") / "study_files"


class BuildWithStudies(build_py):
    """``build_py``, then the study files (``E*.yaml`` and their README) into the package."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / PACKAGED
        target.mkdir(parents=True, exist_ok=True)
        files = [*sorted(STUDIES.glob("E*.yaml")), STUDIES / "README.md"]
        for path in files:
            if path.is_file():
                shutil.copy2(path, target / path.name)
        if not any(target.glob("E*.yaml")):
            raise RuntimeError(f"no study files (E*.yaml) in {STUDIES} to package")


setup(cmdclass={"build_py": BuildWithStudies})
