"""Shared fixtures: a real daemon process per test that asks for one."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Iterator

import pytest

from .daemon import Daemon


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    made: list[Daemon] = []

    def factory(**kwargs: object) -> Daemon:
        workdir = tmp_path / f"d{len(made)}"
        workdir.mkdir()
        d = Daemon(workdir, **kwargs)  # type: ignore[arg-type]
        made.append(d)
        return d

    yield factory
    for d in made:
        d.stop()
        shutil.rmtree(d.run_dir, ignore_errors=True)


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    d = make_daemon()
    d.start()
    return d


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true",
                     help="also run the slow integration tests (real daemon, llama-server, systemd); CI does")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
