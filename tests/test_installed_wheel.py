"""lorentz_rag built as a wheel and run outside the checkout: the quickstart finds its configs and data through
--config-dir / --data-dir, and says what is missing when they are absent.

The wheel is built from a copy of the project (pyproject.toml, README.md, src/), so the shared checkout gets
no build/ or egg-info. It is pure Python (``py3-none-any``): installing it is unpacking it into a
site-packages folder, which is what the test does (with ``PYTHONPATH`` ahead of the checkout's editable
install), instead of a fresh virtual environment (minutes of dependency installs); the dependencies
(torch, the packaged MiniLM) come from this environment, as they would from the user's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, set[str]]:
    base = tmp_path_factory.mktemp("wheel")
    project = base / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(base / "dist"),
            str(project),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (base / "dist").glob("lorentz_rag-*-py3-none-any.whl")
    site = base / "venv" / "lib" / "site-packages"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(site)
    return site, names


def test_the_wheel_is_lorentz_rag_and_its_command_runs(installed, tmp_path):
    """The distribution, the import package and the console script carry the project's own name (``hyprag``
    on the package index is another project): pip installs the wheel's ``lorentz-rag`` command, which runs."""
    site, names = installed
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    assert "\nName: lorentz-rag\n" in (site / metadata).read_text()
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert (site / entry_points).read_text().split("[console_scripts]")[1].split() == [
        "lorentz-rag",
        "=",
        "lorentz_rag.cli:main",
    ]
    assert not any(n.startswith("hyprag") for n in names)
    (wheel,) = (site.parents[2] / "dist").glob("lorentz_rag-*.whl")
    target = tmp_path / "target"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    environ = {k: v for k, v in os.environ.items() if k != "LORENTZ_RAG_DATA_DIR"}
    environ["PYTHONPATH"] = str(target)
    for argv, expect in ((["--help"], "usage: lorentz-rag"), (["--version"], "lorentz-rag ")):
        out = subprocess.run(
            [str(target / "bin" / "lorentz-rag"), *argv],
            cwd=tmp_path,
            env=environ,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.startswith(expect), out.stdout[:300]


def _run(site: Path, cwd: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "LORENTZ_RAG_DATA_DIR"}
    environ.update(PYTHONPATH=str(site), **env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_wheel_holds_every_module_and_no_checkout_folders(installed):
    _, names = installed
    modules = {p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src" / "lorentz_rag").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert "lorentz_rag/py.typed" in names
    # Configs and data are not package resources: they come from --config-dir / --data-dir.
    assert not any(n.startswith(("configs/", "data/", "lorentz_rag/configs/")) for n in names)


def test_quickstart_from_an_installed_wheel_outside_the_checkout(installed, tmp_path):
    site, _ = installed
    probe = f"""
        import lorentz_rag, lorentz_rag.quickstart as qs
        from lorentz_rag.cli import build_parser
        from lorentz_rag.models import packaged_minilm_path
        assert lorentz_rag.__file__.startswith({str(site)!r}), lorentz_rag.__file__
        assert packaged_minilm_path().is_dir()
        try:
            qs.quickstart_resources()
        except FileNotFoundError as error:
            print("ABSENT:", error)
        seen = {{}}
        def fake_run(out, **kwargs):
            seen.update(qs.quickstart_resources(kwargs.get("config_dir")))
            return {{}}
        args = build_parser().parse_args(
            ["quickstart", "--out", "o", "--fast", "--data-dir", {str(ROOT / "data")!r},
             "--config-dir", {str(ROOT / "configs" / "quickstart")!r}]
        )
        assert qs.main_from_args(args, run=fake_run) == 0
        for name, path in seen.items():
            print("RESOLVED:", name, path, path.exists())
    """
    out = _run(site, tmp_path, probe)
    assert out.returncode == 0, out.stderr[-3000:]
    absent = next(line for line in out.stdout.splitlines() if line.startswith("ABSENT:"))
    assert "quickstart config files not found" in absent and "--config-dir" in out.stdout
    assert "bundled data folder" in out.stdout and "--data-dir" in out.stdout
    resolved = [line.split() for line in out.stdout.splitlines() if line.startswith("RESOLVED:")]
    assert len(resolved) == 12  # 5 configs, 2 pair files, MLM text, WordNet nouns, 3 evaluation sets
    for _, *name, path, exists in resolved:
        assert exists == "True", name
        assert (
            Path(path).is_relative_to(ROOT / "data") or Path(path).parent == ROOT / "configs" / "quickstart"
        )

    # Without them, the command stops at once with one error line naming both options, exit status 2.
    failed = _run(
        site,
        tmp_path,
        "from lorentz_rag.cli import main; raise SystemExit(main(['quickstart', '--out', 'o', '--fast']))",
    )
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert failed.stderr.startswith("error: quickstart config files not found")
    assert "--config-dir" in failed.stderr and "--data-dir" in failed.stderr
    assert not (tmp_path / "o").exists()
