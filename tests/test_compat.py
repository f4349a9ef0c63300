"""The Optuna compatibility shim (``optuna_ift.integration._compat``): every use of Optuna's
internals lives there (a static scan of the package fails otherwise), its version check, its
check of the internals it relies on, and the range that ``pyproject.toml`` declares."""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import inspect
import re
import sys
import textwrap
import tomllib
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.study import Study
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from optuna_ift.integration import (
    SUPPORTED_OPTUNA,
    HybridSampler,
    OptunaVersionWarning,
    create_storage,
    record_refined,
)
from optuna_ift.integration import _compat

ROOT = Path(__file__).resolve().parents[1]
COMPAT = ROOT / "optuna_ift" / "integration" / "_compat.py"

optuna.logging.set_verbosity(optuna.logging.WARNING)

# -- the checker: private Optuna names used outside the shim ------------------------------

#: The top-level packages whose private names count as Optuna internals.
OPTUNA_ROOTS = ("optuna", "optuna_integration")

#: Optuna's public classes whose private members (methods, class and instance attributes)
#: the scan knows by name, whatever expression they are reached through.
_CORE_CLASSES = (
    "optuna.study.Study",
    "optuna.trial.Trial",
    "optuna.trial.FrozenTrial",
    "optuna.trial.FixedTrial",
    "optuna.trial.BaseTrial",
    "optuna.storages.BaseStorage",
    "optuna.storages.InMemoryStorage",
    "optuna.storages.JournalStorage",
    "optuna.storages.RDBStorage",
    "optuna.storages.RetryFailedTrialCallback",
    "optuna.samplers.BaseSampler",
    "optuna.samplers.TPESampler",
    "optuna.samplers.RandomSampler",
    "optuna.samplers.PartialFixedSampler",
    "optuna.pruners.BasePruner",
    "optuna_integration.TorchDistributedTrial",
)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve(qualname: str) -> object | None:
    module, _, attr = qualname.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None


def _class_privates(cls: type) -> set[str]:
    """The private names of ``cls`` and its Optuna bases: members, and ``self._x`` that its
    source assigns or reads."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass.__module__.split(".")[0] not in OPTUNA_ROOTS:
            continue
        names.update(n for n in vars(klass) if _is_private(n))
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        names.update(node.attr for node in ast.walk(tree)
                     if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                     and node.value.id in ("self", "cls") and _is_private(node.attr))
    names.discard("_abc_impl")
    return names


@functools.cache
def optuna_private_names() -> frozenset[str]:
    """The private names of Optuna's core classes (``_trial_id``, ``_get_trials``,
    ``_params``, ``_delegate``, ``_storage``, ...)."""
    names: set[str] = set()
    for qualname in _CORE_CLASSES:
        cls = _resolve(qualname)
        if isinstance(cls, type):
            names |= _class_privates(cls)
    return frozenset(names)


def _module_path(module: str) -> list[str]:
    return module.split(".")


class _PrivateOptunaUse(ast.NodeVisitor):
    def __init__(self, filename: str, private_names: frozenset[str]) -> None:
        self.filename = filename
        self.private_names = private_names
        self.bound: dict[str, str] = {}  # local name -> the Optuna module or object it names
        self.known: set[str] = set(dir(__builtins__))  # names bound by imports and classes
        self.classes: list[set[str]] = []  # per enclosing class: its Optuna bases' privates
        self.problems: list[str] = []

    def _report(self, node: ast.AST, what: str) -> None:
        self.problems.append(f"{self.filename}:{getattr(node, 'lineno', '?')}: {what}")

    # Imports are bound in a first pass, so that an import below a use still counts.
    def bind_imports(self, tree: ast.AST) -> None:
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                self.known.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, ast.ClassDef):
                self.known.add(node.name)
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in OPTUNA_ROOTS:
                        local = alias.asname or alias.name.split(".")[0]
                        self.bound[local] = alias.name if alias.asname else local
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.split(".")[0] in OPTUNA_ROOTS:
                    for alias in node.names:
                        self.bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            parts = _module_path(alias.name)
            if parts[0] in OPTUNA_ROOTS and any(_is_private(p) for p in parts):
                self._report(node, f"import of the private module {alias.name}")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module and node.module.split(".")[0] in OPTUNA_ROOTS:
            if any(_is_private(p) for p in _module_path(node.module)):
                self._report(node, f"import from the private module {node.module}")
            for alias in node.names:
                if _is_private(alias.name):
                    self._report(node, f"import of the private name {node.module}.{alias.name}")

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        privates: set[str] = set()
        for base in node.bases:
            root = base
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in self.bound:
                qualname = ".".join([self.bound[root.id], *_attribute_tail(base)])
                cls = _resolve(qualname)
                privates |= (_class_privates(cls) if isinstance(cls, type)
                             else self.private_names)
            elif not (isinstance(root, ast.Name) and root.id in self.known):
                # A base made at run time (a parameter, a call): it may be any Optuna class.
                privates |= self.private_names
        for item in node.body:
            if (isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Assign))
                    and privates):
                names = ([item.name] if not isinstance(item, ast.Assign)
                         else [t.id for t in item.targets if isinstance(t, ast.Name)])
                for name in names:
                    if name in privates:
                        self._report(item, f"class {node.name} overrides Optuna's private "
                                           f"{name}")
        self.classes.append(privates)
        self.generic_visit(node)
        self.classes.pop()

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if _is_private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            own = self.classes[-1] if self.classes else set()
            if isinstance(root, ast.Name) and root.id in self.bound:
                self._report(node, f"private attribute {node.attr} of {root.id} (Optuna)")
            elif _is_self(node.value) or _is_super(node.value):
                if node.attr in own:
                    self._report(node, f"private attribute {node.attr} that an Optuna base "
                                       f"class defines")
            elif node.attr in self.private_names:
                self._report(node, f"Optuna's private attribute {node.attr}")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if (isinstance(func, ast.Name) and func.id in ("getattr", "setattr", "hasattr",
                                                       "delattr")
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
                and node.args[1].value in self.private_names):
            self._report(node, f"{func.id}(..., {node.args[1].value!r}): Optuna's private "
                               f"attribute")
        self.generic_visit(node)


def _attribute_tail(node: ast.AST) -> list[str]:
    tail = []
    while isinstance(node, ast.Attribute):
        tail.append(node.attr)
        node = node.value
    return tail[::-1]


def _is_self(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id in ("self", "cls")


def _is_super(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "super")


def private_optuna_uses(source: str, filename: str = "<snippet>") -> list[str]:
    """Every use of a private Optuna name in ``source``, one line each (empty: none)."""
    tree = ast.parse(source, filename)
    checker = _PrivateOptunaUse(filename, optuna_private_names())
    checker.bind_imports(tree)
    checker.visit(tree)
    return checker.problems


def _scanned_files() -> list[Path]:
    files = sorted((ROOT / "optuna_ift").rglob("*.py"))
    files += sorted((ROOT / "optunahub").rglob("*.py"))
    return [f for f in files if f != COMPAT]


def test_the_private_names_the_scan_knows_include_those_the_shim_uses() -> None:
    assert {"_trial_id", "_get_trials", "_get_best_trial", "_params", "_delegate",
            "_storage", "_study_id", "_cached_frozen_trial"} <= optuna_private_names()


@pytest.mark.parametrize("snippet", [
    "import optuna\nstudy._get_trials(deepcopy=False)",
    "import optuna\nt = optuna.trial.create_trial(value=1.0)\nprint(t._trial_id)",
    "def f(trial):\n    return trial._trial_id",
    "def f(trial, p):\n    trial._params = p",
    "def f(t):\n    return t._delegate",
    "def f(study):\n    return study._storage.get_all_trials(study._study_id)",
    "from optuna.study import Study\nStudy._get_best_trial",
    "import optuna\nx = optuna.storages._heartbeat.BaseHeartbeat",
    "from optuna.storages._heartbeat import BaseHeartbeat",
    "import optuna.storages._heartbeat",
    "import optuna.storages._heartbeat as hb",
    "from optuna.storages import _heartbeat",
    "from optuna_integration.pytorch_distributed import _x",
    "import optuna as o\no.Study._get_trials",
    "def f(t):\n    return getattr(t, '_trial_id')",
    "def f(t):\n    setattr(t, '_params', {})",
    "from optuna import Study\nclass V(Study):\n    def _get_trials(self, deepcopy=True):\n"
    "        return []",
    "from optuna.samplers import TPESampler\nclass S(TPESampler):\n    def f(self):\n"
    "        return self._rng",
    "from optuna.storages import JournalStorage\nclass S(JournalStorage):\n    def f(self):\n"
    "        return super()._backend",
    # A subclass of a class chosen at run time (a study's class, say).
    "def view(study_class):\n    class V(study_class):\n        def _get_trials(self):\n"
    "            return super()._get_trials(deepcopy=False)\n    return V",
])
def test_the_checker_catches_a_private_optuna_name(snippet: str) -> None:
    assert private_optuna_uses(snippet), snippet


@pytest.mark.parametrize("snippet", [
    "import optuna\nstudy = optuna.create_study()\nstudy.get_trials(deepcopy=False)",
    "import optuna\nclass Mine:\n    def __init__(self):\n        self._storage = 1\n"
    "        self._params = {}\n    def f(self):\n        return self._params",
    "from optuna.samplers import BaseSampler\nclass S(BaseSampler):\n"
    "    def __init__(self):\n        self._base = None\n    def __str__(self):\n"
    "        return 'S'",
    "import torch\nm = torch.nn.Linear(1, 1)\nlist(m._parameters)",
    "from optuna_ift.integration._compat import trial_id\n",
    "import optuna\noptuna.trial.FrozenTrial.__init__",
    "class Base:\n    def _get_trials(self):\n        return []\n"
    "class Mine(Base):\n    def _get_trials(self):\n        return super()._get_trials()",
])
def test_the_checker_lets_public_use_pass(snippet: str) -> None:
    assert private_optuna_uses(snippet) == []


def test_no_private_optuna_name_outside_the_shim() -> None:
    problems = [p for path in _scanned_files()
                for p in private_optuna_uses(path.read_text(), str(path.relative_to(ROOT)))]
    assert problems == [], "\n".join(problems)


def test_the_scan_covers_the_package_and_would_see_the_shim() -> None:
    files = {p.relative_to(ROOT).as_posix() for p in _scanned_files()}
    assert {"optuna_ift/integration/_sampler.py", "optuna_ift/integration/_trial.py",
            "optuna_ift/integration/_distributed.py"} <= files
    # The shim itself does use internals: the scan finds them there (it is the only place).
    assert private_optuna_uses(COMPAT.read_text(), "_compat.py")


# -- the version check ---------------------------------------------------------------------


@pytest.mark.parametrize("version", ["4.8.0", "4.9.0", "5.0.0", "5.1.0", "5.9.9",
                                     "5.2.0.dev0", "4.8.0.post1"])
def test_versions_inside_the_range_pass_silently(version: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _compat.check_optuna_version(version) is True


@pytest.mark.parametrize("version", ["3.6.1", "4.0.0", "4.7.0", "6.0.0", "6.0.0.dev0", "7.1"])
def test_versions_outside_the_range_warn(version: str) -> None:
    with pytest.warns(OptunaVersionWarning, match=re.escape(version)):
        assert _compat.check_optuna_version(version) is False


def test_the_version_check_rejects_non_versions() -> None:
    with pytest.raises(TypeError, match="version string"):
        _compat.check_optuna_version(5.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="PEP 440"):
        _compat.check_optuna_version("five")


def test_the_installed_optuna_is_in_the_range() -> None:
    assert Version(optuna.__version__) in SpecifierSet(SUPPORTED_OPTUNA, prereleases=True)


def _load_compat_copy() -> object:
    """Run the shim's module code again, as a separate module (the package keeps its own)."""
    spec = importlib.util.spec_from_file_location("_compat_copy", COMPAT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_importing_under_an_unsupported_optuna_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optuna, "__version__", "6.1.0")
    # The copy has its own OptunaVersionWarning class: match it by name.
    with pytest.warns(UserWarning) as record:
        _load_compat_copy()
    assert any(type(w.message).__name__ == "OptunaVersionWarning" and "6.1.0" in str(w.message)
               for w in record)


def test_importing_under_a_supported_optuna_is_silent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _load_compat_copy()


# -- the check of the internals ------------------------------------------------------------


def test_the_installed_optuna_has_every_internal() -> None:
    _compat.check_optuna_internals()  # raises otherwise


@pytest.mark.parametrize("name", ["_get_trials", "_get_best_trial"])
def test_a_missing_study_method_is_named(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.delattr(Study, name)
    with pytest.raises(ImportError, match=f"Study.{name}"):
        _compat.check_optuna_internals()


def test_a_study_method_of_another_shape_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Study, "_get_trials", lambda self, deepcopy=True: [])
    with pytest.raises(ImportError, match=r"Study._get_trials\(deepcopy, states, use_cache\)"):
        _compat.check_optuna_internals()


def test_a_missing_trial_id_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    real = optuna.trial.create_trial

    def create_trial(**kwargs):
        trial = real(**kwargs)
        del trial._trial_id
        return trial

    monkeypatch.setattr(optuna.trial, "create_trial", create_trial)
    with pytest.raises(ImportError, match="FrozenTrial._trial_id"):
        _compat.check_optuna_internals()


def test_a_missing_heartbeat_protocol_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_compat, "BaseHeartbeat", None)
    with pytest.raises(ImportError, match="BaseHeartbeat"):
        _compat.check_optuna_internals()


def test_a_heartbeat_protocol_with_a_new_abstract_method_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_compat.HeartbeatJournalStorage, "__abstractmethods__",
                        frozenset({"get_heartbeat_everything"}))
    with pytest.raises(ImportError, match="get_heartbeat_everything"):
        _compat.check_optuna_internals()


def test_the_error_names_the_supported_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(Study, "_get_trials")
    with pytest.raises(ImportError, match=re.escape(SUPPORTED_OPTUNA)):
        _compat.check_optuna_internals()


# -- what the shim offers ------------------------------------------------------------------


def test_trial_id_of_a_trial_and_a_frozen_trial() -> None:
    study = optuna.create_study()
    trial = study.ask()
    study.tell(trial, 1.0)
    frozen = study.trials[0]
    assert _compat.trial_id(trial) == _compat.trial_id(frozen)
    assert study._storage.get_trial(_compat.trial_id(frozen)).number == 0
    with pytest.raises(TypeError, match="optuna.Trial or a FrozenTrial"):
        _compat.trial_id(object())  # type: ignore[arg-type]


def test_wrapped_trial_rejects_other_trials() -> None:
    pytest.importorskip("optuna_integration")
    with pytest.raises(TypeError, match="TorchDistributedTrial"):
        _compat.wrapped_trial(optuna.create_study().ask())


def test_study_view_argument_errors() -> None:
    study = optuna.create_study()
    with pytest.raises(TypeError, match="optuna.Study"):
        _compat.study_view(object(), owner=None, show=lambda t: t)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        _compat.study_view(study, owner=None, show=1)  # type: ignore[arg-type]


def test_study_view_shows_through_and_is_not_stacked_by_its_owner() -> None:
    study = optuna.create_study()
    study.enqueue_trial({"x": 0.5})
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    owner = object()
    seen = []
    view = _compat.study_view(study, owner=owner, show=lambda t: seen.append(t) or t)
    assert isinstance(view, Study) and view.__dict__ is study.__dict__
    assert _compat.view_owner(view) is owner and _compat.view_owner(study) is None
    assert _compat.study_view(view, owner=owner, show=lambda t: t) is view
    assert [t.number for t in view.trials] == [0, 1] and len(seen) == 2
    assert view.best_trial.number == study.best_trial.number


def test_the_journal_heartbeat_storage_is_complete(tmp_path: Path) -> None:
    storage = create_storage(str(tmp_path / "s.log"), heartbeat_interval=2)
    assert isinstance(storage, _compat.HeartbeatJournalStorage)
    assert not _compat.HeartbeatJournalStorage.__abstractmethods__
    assert storage.get_heartbeat_interval() == 2 and storage.grace_period == 4
    # Optuna's optimize loop sees it as a storage with heartbeats.
    heartbeat = importlib.import_module("optuna.storages._heartbeat")
    assert heartbeat.is_heartbeat_enabled(storage)


# -- the Lamarckian view is experimental ---------------------------------------------------


def _objective(refine: bool):
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -1.0, 1.0)
        if refine:
            record_refined(trial, "x", x / 2)
        return x * x

    return objective


def test_the_lamarckian_view_warns_that_it_is_experimental() -> None:
    study = optuna.create_study(sampler=HybridSampler(seed=0))
    with pytest.warns(optuna.exceptions.ExperimentalWarning, match="Lamarckian"):
        study.optimize(_objective(refine=True), n_trials=3)


def test_the_experimental_warning_comes_once_per_sampler() -> None:
    study = optuna.create_study(sampler=HybridSampler(seed=0))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        study.optimize(_objective(refine=True), n_trials=6)
    experimental = [w for w in record
                    if issubclass(w.category, optuna.exceptions.ExperimentalWarning)]
    assert len(experimental) == 1


def test_without_refined_values_nothing_is_experimental() -> None:
    study = optuna.create_study(sampler=HybridSampler(seed=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", optuna.exceptions.ExperimentalWarning)
        study.optimize(_objective(refine=False), n_trials=4)


# -- the declared range --------------------------------------------------------------------


def _declared_optuna() -> SpecifierSet:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = [dep for dep in project["dependencies"]
             if re.match(r"optuna\s*[<>=!~]", dep)]
    assert len(specs) == 1, project["dependencies"]
    return SpecifierSet(specs[0][len("optuna"):].strip())


def _oldest(spec: SpecifierSet) -> str:
    lower = [s.version for s in spec if s.operator == ">="]
    assert len(lower) == 1, spec
    return lower[0]


def test_pyproject_declares_the_supported_range() -> None:
    assert _declared_optuna() == SpecifierSet(SUPPORTED_OPTUNA)
    assert any(s.operator == "<" for s in _declared_optuna())  # an upper bound too


def test_the_oldest_release_ci_runs_is_the_bottom_of_the_range() -> None:
    script = (ROOT / ".ci" / "optuna-oldest.sh").read_text()
    pinned = re.findall(r"OPTUNA_OLDEST=\"?([0-9.]+)", script)
    assert len(pinned) == 1, pinned
    assert Version(pinned[0]) == Version(_oldest(SpecifierSet(SUPPORTED_OPTUNA)))


def test_the_shim_is_exported() -> None:
    import optuna_ift.integration as integration

    assert {"SUPPORTED_OPTUNA", "OptunaVersionWarning"} <= set(integration.__all__)
    assert sys.modules["optuna_ift.integration._compat"] is _compat
