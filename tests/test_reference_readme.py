"""tests/reference/README.md says where every golden file came from: each file in the folder has a row there."""

import re
from pathlib import Path

REFERENCE_DIR = Path(__file__).parent / "reference"
README = REFERENCE_DIR / "README.md"


def listed_paths() -> set[str]:
    """Paths in backquotes that start with a family folder, e.g. `nvidia/golden_meta.json`."""
    return set(re.findall(r"`((?:nvidia|paddle)/[^`\s]+)`", README.read_text(encoding="utf-8")))


def test_every_reference_file_is_listed_in_the_readme():
    files = {path.relative_to(REFERENCE_DIR).as_posix() for path in REFERENCE_DIR.rglob("*") if path.is_file()}
    files.discard("README.md")
    assert files, "tests/reference holds no data files"
    unlisted = sorted(files - listed_paths())
    assert not unlisted, f"tests/reference/README.md does not describe {unlisted}"


def test_every_listed_file_exists():
    missing = sorted(path for path in listed_paths() if not (REFERENCE_DIR / path).is_file())
    assert not missing, f"tests/reference/README.md lists files that are not there: {missing}"


def test_the_tests_named_as_readers_exist():
    tests_dir = Path(__file__).parent
    named = set(re.findall(r"\btests/[\w/]+\.py\b", README.read_text(encoding="utf-8")))
    assert named, "the README names no reading test"
    missing = sorted(path for path in named if not (tests_dir.parent / path).is_file())
    assert not missing, f"tests/reference/README.md names tests that do not exist: {missing}"
