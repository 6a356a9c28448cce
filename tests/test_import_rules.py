"""Architecture rules: models depend only on torch and themselves; engine/inference never read configs."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "attnseg"
STANDARD_LIBRARY_OK = {"__future__", "collections", "dataclasses", "functools", "itertools", "math", "typing", "re"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((PACKAGE / "models").rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_models_import_only_torch_and_themselves(path):
    for name in imported_modules(path):
        top = name.split(".")[0]
        allowed = top in {"torch", "numpy"} | STANDARD_LIBRARY_OK or name.startswith("attnseg.models")
        assert allowed, (f"{path.relative_to(PACKAGE)} imports {name}: "
                         "model code may import only torch and attnseg.models")


@pytest.mark.parametrize("folder", ["models", "engine", "inference", "losses", "metrics", "export"])
def test_library_code_does_not_read_configs(folder):
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        if path.name == "build.py":
            continue  # builders are where config sections become constructor arguments
        for name in imported_modules(path):
            assert not name.startswith("attnseg.config"), (
                f"{path.relative_to(PACKAGE)} imports {name}: only the CLI and builders read configs"
            )


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_the_top_package(path):
    # `import attnseg` inside the package runs attnseg/__init__ (models, weights) from wherever it is imported and
    # makes import cycles easy; the version lives in attnseg._version for the modules that record it.
    offending = sorted(name for name in imported_modules(path) if name == "attnseg")
    assert not offending, f"{path.relative_to(PACKAGE)} imports the top package 'attnseg' (import a submodule)"


def test_the_top_package_check_sees_both_spellings(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import attnseg\nfrom attnseg import create_model\nfrom attnseg._version import __version__\n")
    assert imported_modules(sample) == {"attnseg", "attnseg._version"}
    sample.write_text("def f():\n    from attnseg import weights\n")
    assert "attnseg" in imported_modules(sample)


# The scales seam (issue #17): eval scales reach MscaleOCR as a forward argument, never by setting the attribute,
# and "does this model fuse scales" is `attnseg.models.fuses_scales`, not an attribute test.
SCALES_MUTATION = re.compile(r"\.eval_scales\s*=(?!=)|\.keep_scale_outputs\s*=(?!=)|setattr\([^)]*[\"']eval_scales")
SCALES_TYPE_TEST = re.compile(r"hasattr\([^)]*[\"'](eval_scales|keep_scale_outputs)[\"']")


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_eval_scales_assignment_or_attribute_test(path):
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        where = f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        assert not SCALES_MUTATION.search(line), f"{where}: pass scales=... to the model's forward instead"
        assert not SCALES_TYPE_TEST.search(line), f"{where}: use attnseg.models.fuses_scales(model)"
