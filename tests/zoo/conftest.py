"""The package the zoo tests share: a tiny trained run exported once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from zoo.helpers import tiny_run


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(data, run, package) of a tiny trained run, exported with two authors under MIT."""
    pytest.importorskip("bioimageio.core")
    from unetseg.zoo import export_bioimageio

    root = tmp_path_factory.mktemp("zoo")
    data, run = tiny_run(root)
    package = export_bioimageio(run, root / "model.zip", authors=["Jane Doe", "Joe Bloggs"], license="MIT")
    return data, run, package
