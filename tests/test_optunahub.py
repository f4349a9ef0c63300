"""The OptunaHub package in ``optunahub/samplers/hybrid_ift``: it follows the registry's rules
(the front matter its CI checks, the template's sections, MIT, no HTML, no binary files), loads
through ``optunahub.load_local_module``, and its example and tests run."""

from __future__ import annotations

import re
import runpy
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from packaging.version import InvalidVersion, Version

optunahub = pytest.importorskip("optunahub")

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = ROOT / "optunahub"
PACKAGE = "samplers/hybrid_ift"
FOLDER = REGISTRY / PACKAGE

# -- the registry's rules ------------------------------------------------------------------

#: The tag that a package in each category must carry (the registry template's rule).
CATEGORY_TAGS = {"samplers": "sampler", "pruners": "pruner", "visualization": "visualization"}
#: The template's sections that a package may not drop (Installation and Others may go).
REQUIRED_SECTIONS = ("Abstract", "Class or Function Names", "Example")
#: Files every package has.
REQUIRED_FILES = ("README.md", "LICENSE", "__init__.py")
_FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_HTML = re.compile(r"<(?:[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?|/[A-Za-z][A-Za-z0-9-]*\s*|!--)>?",
                   re.DOTALL)


def _front_matter(text: str) -> tuple[dict | None, str]:
    match = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    if match is None:
        return None, text
    return yaml.safe_load(match.group(1)), text[match.end():]


def _is_binary(path: Path) -> bool:
    data = path.read_bytes()
    if b"\0" in data:
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def registry_problems(folder: Path, category: str = "samplers") -> list[str]:
    """What in ``folder`` breaks the OptunaHub registry's rules (empty: nothing)."""
    problems = [f"{name} is missing" for name in REQUIRED_FILES if not (folder / name).is_file()]
    readme = folder / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8", errors="replace")
        try:
            meta, body = _front_matter(text)
        except yaml.YAMLError as error:
            meta, body = None, text
            problems.append(f"README.md: the front matter is not YAML ({error})")
        if meta is None:
            problems.append("README.md: no front matter between --- lines at the top")
            meta = {}
        if not isinstance(meta, dict):
            problems.append("README.md: the front matter is not a mapping")
            meta = {}
        # The registry's CI (optunahub-registry/header_confirm.py) checks these.
        for key in ("author", "title", "description"):
            if not isinstance(meta.get(key), str) or not meta.get(key).strip():
                problems.append(f"README.md: {key} must be a non-empty string")
        for key in ("tags", "optuna_versions"):
            value = meta.get(key)
            if not isinstance(value, list) or not value or not all(
                    isinstance(v, str) for v in value):
                problems.append(f"README.md: {key} must be a non-empty list of strings "
                                f"(quote versions such as '4.8'), got {value!r}")
        if meta.get("license") != "MIT License":
            problems.append(f"README.md: license must be 'MIT License', got "
                            f"{meta.get('license')!r}")
        tags = meta.get("tags") if isinstance(meta.get("tags"), list) else []
        wanted = CATEGORY_TAGS.get(category)
        if wanted is not None and wanted not in tags:
            problems.append(f"README.md: a package in {category}/ must have the tag {wanted!r}")
        for version in meta.get("optuna_versions") or []:
            try:
                Version(str(version))
            except InvalidVersion:
                problems.append(f"README.md: optuna_versions has {version!r}, not a version")
        headings = re.findall(r"^## (.+?)\s*$", body, re.MULTILINE)
        problems += [f"README.md: the template's section '## {name}' is missing"
                     for name in REQUIRED_SECTIONS if name not in headings]
        prose = _INLINE_CODE.sub("", _FENCE.sub("", body))
        problems += [f"README.md: HTML is not allowed, found {tag!r}"
                     for tag in _HTML.findall(prose)]
    license_file = folder / "LICENSE"
    if license_file.is_file() and not license_file.read_text(errors="replace").startswith(
            "MIT License"):
        problems.append("LICENSE: not the MIT License")
    for path in sorted(folder.rglob("*")):
        if "__pycache__" in path.parts or not path.is_file():
            continue  # Python's caches are never committed (.gitignore)
        if _is_binary(path):
            problems.append(f"{path.relative_to(folder)}: binary files are not allowed")
    return problems


def test_the_package_follows_the_registry_rules() -> None:
    assert registry_problems(FOLDER) == []
    assert (FOLDER / "example.py").is_file() and list((FOLDER / "tests").glob("test_*.py"))


def _copy(tmp_path: Path) -> Path:
    target = tmp_path / "hybrid_ift"
    shutil.copytree(FOLDER, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def _edit_readme(folder: Path, old: str, new: str) -> None:
    readme = folder / "README.md"
    text = readme.read_text()
    assert old in text, old
    readme.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(("old", "new", "problem"), [
    ("author: optuna-ift developers\n", "", "author"),
    ("license: MIT License", "license: MIT", "license must be 'MIT License'"),
    ("license: MIT License", "license: Apache-2.0", "license must be 'MIT License'"),
    ("tags: [sampler, ", "tags: [", "tag 'sampler'"),
    ("optuna_versions: ['4.8.0', '5.1.0']", "optuna_versions: [4.8]", "list of strings"),
    ("optuna_versions: ['4.8.0', '5.1.0']", "optuna_versions: 4.8.0", "list of strings"),
    ("optuna_versions: ['4.8.0', '5.1.0']", "optuna_versions: ['latest']", "not a version"),
    ("## Abstract\n", "## Summary\n", "'## Abstract' is missing"),
    ("## Example\n", "", "'## Example' is missing"),
    ("## Abstract\n", "## Abstract\n\n<img src=\"x.png\">\n", "HTML"),
    ("## Abstract\n", "## Abstract\n\n<!-- a comment -->\n", "HTML"),
    ("## Abstract\n", "## Abstract\n\nA <b>bold</b> claim.\n", "HTML"),
    ("---\nauthor", "author", "no front matter"),
])
def test_the_rules_catch_a_bad_readme(tmp_path: Path, old: str, new: str, problem: str) -> None:
    folder = _copy(tmp_path)
    _edit_readme(folder, old, new)
    problems = registry_problems(folder)
    assert any(problem in p for p in problems), problems


def test_code_in_the_readme_is_not_html(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    _edit_readme(folder, "## Others\n", "## Others\n\nCompare `a<b>c` and\n\n```\n<b>x</b>\n```\n")
    assert registry_problems(folder) == []


def test_the_rules_catch_a_binary_file_and_a_wrong_license(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    (folder / "thumbnail.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    (folder / "LICENSE").write_text("Apache License\nVersion 2.0\n")
    (folder / "__init__.py").unlink()
    problems = registry_problems(folder)
    assert any("thumbnail.png: binary" in p for p in problems), problems
    assert "LICENSE: not the MIT License" in problems
    assert "__init__.py is missing" in problems


# -- loading and running it ----------------------------------------------------------------


def test_the_package_loads_through_optunahub() -> None:
    from optuna_ift.integration import HybridSampler

    module = optunahub.load_local_module(package=PACKAGE, registry_root=str(REGISTRY))
    assert module.HybridSampler is HybridSampler
    assert set(module.__all__) >= {"HybridSampler", "record_refined"}
    study = optuna.create_study(sampler=module.HybridSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=3)
    assert len(study.trials) == 3


def test_the_example_runs_quickly(capsys: pytest.CaptureFixture[str]) -> None:
    start = time.perf_counter()
    runpy.run_path(str(FOLDER / "example.py"), run_name="__main__")
    elapsed = time.perf_counter() - start
    out = capsys.readouterr().out
    assert re.search(r"best validation loss \d+\.\d+ with lr=", out), out
    assert elapsed < 30, elapsed


def test_the_package_tests_run_optunas_sampler_suites() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         str(FOLDER / "tests")],
        cwd=FOLDER, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"\b\d{2,} passed\b", result.stdout), result.stdout[-1000:]
