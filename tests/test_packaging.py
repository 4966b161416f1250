"""The package as shipped works, not only the editable checkout.

``python -m build`` makes the sdist, then the wheel *from the sdist* (so a file missing
from the sdist breaks the wheel); the wheel is installed into a fresh virtual environment
and used there: import, save/load, the ``nbckpt`` command, ``%load_ext nbckpt`` and the
package data. The fresh environment borrows this one's dependencies (a ``.pth`` line naming
its site-packages, which does not carry over the editable install), so the test needs no
network and checks the wheel's own declared requirements with ``pip check``.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=timeout)
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """The sdist and the wheel built from it (build back end from the locked environment)."""
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT)
    (sdist,) = out.glob("nbckpt-*.tar.gz")
    (wheel,) = out.glob("nbckpt-*.whl")
    return {"sdist": sdist, "wheel": wheel}


@pytest.fixture(scope="module")
def fresh(dist, tmp_path_factory) -> Path:
    """A new virtual environment holding the wheel; returns its ``bin`` folder."""
    home = tmp_path_factory.mktemp("fresh")
    venv.create(home, with_pip=False)
    site = Path(run(home / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                .stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "borrowed_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    run(sys.executable, "-m", "pip", "--python", home / "bin" / "python", "install", "--quiet", "--no-deps",
        "--no-index", dist["wheel"])
    return home / "bin"


def package_files() -> set[str]:
    """Every file of the package in the checkout (what the wheel must ship)."""
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / "nbckpt").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def test_sdist_holds_the_sources(dist):
    with tarfile.open(dist["sdist"]) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    assert {"pyproject.toml", "README.md"} <= names
    assert package_files() <= names, sorted(package_files() - names)


def test_wheel_holds_every_package_file_and_nothing_else(dist):
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        names = set(wheel.namelist())
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = wheel.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
        requires = [line for line in wheel.read(metadata).decode().splitlines() if line.startswith("Requires-Dist")]
    shipped = {n for n in names if n.startswith("nbckpt/")}
    assert package_files() == shipped, (sorted(package_files() - shipped), sorted(shipped - package_files()))
    assert not any(n.startswith(("tests/", "notebooks/", "benchmarks/")) for n in names)
    assert "nbckpt = nbckpt.cli:main" in entry_points
    # Users get ranges, never the lock's exact versions (a library must not pin its users).
    core = [r for r in requires if "extra ==" not in r]
    assert core and all(">=" in r and "==" not in r for r in core), core


def test_the_installed_wheel_works(fresh, tmp_path):
    python = fresh / "python"
    script = textwrap.dedent("""
        import io, sys
        from importlib import resources
        import numpy as np
        import nbckpt

        assert nbckpt.__file__.startswith(sys.prefix), nbckpt.__file__   # the wheel, not the checkout
        w = np.arange(6, dtype=np.float32).reshape(2, 3)
        nbckpt.save({"w": w, "wT": w.T, "step": 3}, "smoke.pt")
        out = nbckpt.load("smoke.pt")
        assert np.shares_memory(out["w"], out["wT"]) and out["step"] == 3
        assert resources.files("nbckpt").joinpath("py.typed").is_file()

        from IPython.core.interactiveshell import InteractiveShell
        from IPython.utils.capture import capture_output
        shell = InteractiveShell.instance()
        shell.run_line_magic("load_ext", "nbckpt")
        with capture_output() as captured:
            shell.run_line_magic("ckpt", "ls smoke.pt")
        text = captured.stdout + "".join(o.data.get("text/plain", "") for o in captured.outputs)
        assert "wT" in text and "float32" in text, text
        print("smoke ok", nbckpt.__file__)
    """)
    (tmp_path / "smoke.py").write_text(script)
    done = run(python, "-I", "smoke.py", cwd=tmp_path)
    assert "smoke ok" in done.stdout and str(fresh.parent) in done.stdout
    listing = run(fresh / "nbckpt", "ls", "smoke.pt", cwd=tmp_path)
    assert "wT" in listing.stdout and "(3, 2)" in listing.stdout
    run(sys.executable, "-m", "pip", "--python", python, "check")
