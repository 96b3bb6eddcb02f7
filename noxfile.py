"""One session per package, plus cross-package tests, the wheel check, the demo and benchmarks.

nox                 every test session (packages, e2e, parity, build) and the demo
nox -s parity       the cross-framework parity suite: one network in PyTorch, Keras, TF1 and ONNX, one int8 model
nox -s common       rq-common's tests
nox -s build        build every package's wheel, install each into a clean venv, test it
nox -s demo         the README's main job: real trained models from the zoo, one per framework
nox -s digits       the quick example: a digits CNN trained here, through all four packages
nox -s bench        benchmarks (not part of plain `nox`: they measure, they do not test)
nox -s zoo          rq on the real trained models of zoo/ beside ONNX Runtime's quantizer (not part of plain `nox`)
nox -s zoo_ci       the zoo's CI subset: one small model per package, few samples, every loader and the runner

Each session removes its virtualenv when it ends: most of them hold torch or TensorFlow (1.3 to 2.7 GB
each), and a full run kept all of them would need about 22 GB of disk at once; this way it needs about
3 GB. Set RQ_KEEP_VENVS=1 to keep them (for `nox -r`, which reuses them).
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import nox

ROOT = Path(__file__).parent
CONSTRAINTS = str(ROOT / "constraints.txt")

# session name -> distribution (folder under packages/); a session exists once its package does
PACKAGES = {"common": "rq-common", "onnx": "rq-onnx", "torch": "rq-torch", "tf2": "rq-tf2", "tf1": "rq-tf1"}
EXISTING = {name: dist for name, dist in PACKAGES.items() if (ROOT / "packages" / dist / "pyproject.toml").exists()}

nox.options.sessions = ["lint", *EXISTING, "e2e", "parity", "zoo_ci", "build", "demo"]
nox.options.error_on_missing_interpreters = True

KEEP_VENVS = os.environ.get("RQ_KEEP_VENVS") == "1"


def session(func: Callable[[nox.Session], None] | None = None, **kwargs):
    """`nox.session` whose virtualenv is removed when the session ends, passed or failed (see above)."""

    def decorate(func: Callable[[nox.Session], None]):
        @functools.wraps(func)
        def run_then_discard_venv(session: nox.Session) -> None:
            try:
                func(session)
            finally:
                if not KEEP_VENVS:
                    shutil.rmtree(session.virtualenv.location, ignore_errors=True)

        return nox.session(run_then_discard_venv, **kwargs)

    return decorate(func) if func is not None else decorate


def install(session: nox.Session, *args: str) -> None:
    session.install("-c", CONSTRAINTS, *args)


def install_packages(session: nox.Session, dists: list[str], extra: str = "test") -> None:
    """rq-common first, so that the others find their dependency installed, not on the index."""
    ordered = sorted(dists, key=lambda d: d != "rq-common")
    for dist in ordered:
        install(session, f"{ROOT / 'packages' / dist}[{extra}]" if extra else str(ROOT / "packages" / dist))


def _package_session(name: str, dist: str) -> None:
    @session(name=name)
    def run_tests(session: nox.Session) -> None:
        deps = [dist] if dist == "rq-common" else ["rq-common", dist]
        install_packages(session, deps)
        session.run("pytest", "-q", str(ROOT / "packages" / dist / "tests"), *session.posargs)

    run_tests.__doc__ = f"{dist}'s tests"


for _name, _dist in EXISTING.items():
    _package_session(_name, _dist)


@session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting (ruff.toml)."""
    session.install("ruff==0.17.*")
    session.run("ruff", "check", str(ROOT))
    session.run("ruff", "format", "--check", str(ROOT))


@session
def e2e(session: nox.Session) -> None:
    """End-to-end tests in tests/ (the demo as a test); the parity suite has its own session."""
    install_packages(session, list(EXISTING.values()))
    install(session, "pytest", "onnxruntime", "scikit-learn", "tqdm")
    session.run(
        "pytest",
        "-q",
        str(ROOT / "tests"),
        "--ignore-glob=*test_parity_*",
        f"--ignore={ROOT / 'tests' / 'zoo'}",
        *session.posargs,
    )


@session
def parity(session: nox.Session) -> None:
    """The parity suite: the same network from every framework gives the same int8 model."""
    install_packages(session, list(EXISTING.values()))
    install(session, "pytest", "onnxruntime")
    session.run("pytest", "-q", *sorted(str(p) for p in (ROOT / "tests").glob("test_parity_*.py")), *session.posargs)


@session
def build(session: nox.Session) -> None:
    """Build every wheel; install each from the wheels alone into a clean venv and test it there."""
    install(session, "build")
    dist_dir = ROOT / "dist"
    shutil.rmtree(dist_dir, ignore_errors=True)
    for dist in EXISTING.values():
        session.run("python", "-m", "build", "--wheel", "--outdir", str(dist_dir), str(ROOT / "packages" / dist))
    for dist in EXISTING.values():
        venv = Path(session.create_tmp()) / f"wheel-{dist}"
        shutil.rmtree(venv, ignore_errors=True)
        session.run("python", "-m", "venv", str(venv))
        pip, python = str(venv / "bin" / "pip"), str(venv / "bin" / "python")
        # rq-* come from dist/ only (the dependency on rq-common is resolved there); the rest from the index
        session.run(pip, "install", "-q", "-c", CONSTRAINTS, "--find-links", str(dist_dir), f"{dist}[test]", external=True)
        session.run(pip, "check", external=True)
        module = dist.replace("-", "_")
        session.run(
            python, "-c", f"import {module}, sys; assert 'site-packages' in {module}.__file__, {module}.__file__", external=True
        )
        # the package's own tests, run against the installed wheel (src/ is not on the path)
        session.run(
            python, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "packages" / dist / "tests"), external=True
        )
        shutil.rmtree(venv)  # one wheel venv on disk at a time


@session
def demo(session: nox.Session) -> None:
    """The main job: one trained model per framework from the zoo, PTQ (QAT where it falls short), int8 ONNX, one table."""
    install_zoo(session)
    session.run("python", "-m", "zoo.demo", "--out", str(ROOT / "out" / "demo"), "--quiet", *session.posargs)


@session
def digits(session: nox.Session) -> None:
    """The quick example: a digits CNN trained here, through all four packages."""
    install_packages(session, list(EXISTING.values()), extra="")
    install(session, "onnxruntime", "scikit-learn", "tqdm")
    session.run("python", str(ROOT / "examples" / "digits_demo.py"), "--out", str(ROOT / "out" / "digits"), *session.posargs)


@session
def bench(session: nox.Session) -> None:
    """Every benchmark (against ONNX Runtime's quantizer where it has a counterpart), then bench/RESULTS.md."""
    install_packages(session, list(EXISTING.values()), extra="")
    install(session, "onnxruntime", "scikit-learn", "sympy")  # sympy: ORT's quant_pre_process
    session.run("python", str(ROOT / "bench" / "run_all.py"))


def install_zoo(session: nox.Session) -> None:
    """Every rq package and what the zoo's models, data and anchor need (zoo/requirements.txt)."""
    install_packages(session, list(EXISTING.values()), extra="")
    install(session, "-r", str(ROOT / "zoo" / "requirements.txt"))


@session
def zoo(session: nox.Session) -> None:
    """The real-model zoo: bench/results/zoo.md and the zoo rows of bench/RESULTS.md."""
    install_zoo(session)
    session.run("python", "-m", "zoo.run", *session.posargs)


@session
def zoo_ci(session: nox.Session) -> None:
    """The zoo's CI subset: one small model per package, few samples (tests/zoo)."""
    install_zoo(session)
    install(session, "pytest")
    session.run("pytest", "-q", str(ROOT / "tests" / "zoo"), *session.posargs)
