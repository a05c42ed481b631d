"""The public façade: ``ckflow.__all__`` matches the real exports, and the API type-checks as users write it."""

from __future__ import annotations
import __future__

import subprocess
import sys
import types
from pathlib import Path

import ckflow
import ckflow.testing

#: Public submodules (STYLE §10); every other submodule is private and starts with `_`.
PUBLIC_SUBMODULES = frozenset({"testing", "stores", "fastapi"})

TYPING_EXAMPLE = Path(__file__).parent / "typing" / "api.py"


def public_attributes(module: types.ModuleType) -> set[str]:
    """Names a user sees on ``module``: no leading underscore, no submodule, no ``__future__`` feature."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        # `from __future__ import annotations` leaves a compiler-directive object behind; it is no export.
        and not isinstance(value, __future__._Feature)
    }


class TestExports:
    """``__all__`` and the module's real public names agree."""

    def test_every_name_in_all_exists(self) -> None:
        """Every name listed in ckflow.__all__ is an attribute of ckflow."""
        missing = [name for name in ckflow.__all__ if not hasattr(ckflow, name)]
        assert missing == []

    def test_all_has_no_duplicates(self) -> None:
        """ckflow.__all__ lists each name once."""
        assert len(set(ckflow.__all__)) == len(ckflow.__all__)

    def test_every_public_attribute_is_in_all(self) -> None:
        """Every public, non-module attribute of ckflow is listed in __all__."""
        assert public_attributes(ckflow) - set(ckflow.__all__) == set()

    def test_all_holds_only_public_names(self) -> None:
        """__all__ holds public names only, __version__ excepted."""
        assert {n for n in ckflow.__all__ if n.startswith("_")} == {"__version__"}

    def test_only_documented_submodules_are_public(self) -> None:
        """The only submodules without a leading underscore are the documented public ones."""
        import pkgutil

        names = {m.name for m in pkgutil.iter_modules(ckflow.__path__) if not m.name.startswith("_")}
        assert names <= PUBLIC_SUBMODULES

    def test_testing_all_matches(self) -> None:
        """ckflow.testing.__all__ lists exactly the public objects defined in ckflow.testing."""
        defined_here = {
            name
            for name in public_attributes(ckflow.testing)
            if getattr(getattr(ckflow.testing, name), "__module__", None) == "ckflow.testing"
        }
        assert set(ckflow.testing.__all__) == defined_here

    def test_version_is_a_string(self) -> None:
        """ckflow.__version__ is a non-empty string."""
        assert isinstance(ckflow.__version__, str)
        assert ckflow.__version__


class TestModuleNames:
    """Public objects report the package, not the private module that defines them."""

    def test_public_objects_module(self) -> None:
        """Every public object of ckflow has a __module__ that starts with "ckflow"."""
        wrong = {
            name: getattr(obj, "__module__", None)
            for name in ckflow.__all__
            if not isinstance(obj := getattr(ckflow, name), str)
            and not str(getattr(obj, "__module__", "")).startswith("ckflow")
        }
        assert wrong == {}

    def test_no_private_module_in_public_names(self) -> None:
        """No public class or function of ckflow reports a private `ckflow._x` module."""
        private = {
            name: obj.__module__
            for name in ckflow.__all__
            if hasattr(obj := getattr(ckflow, name), "__module__")
            and not isinstance(obj, str)
            and obj.__module__.startswith("ckflow._")
        }
        assert private == {}

    def test_testing_objects_module(self) -> None:
        """Every public object of ckflow.testing has a __module__ that starts with "ckflow"."""
        for name in ckflow.testing.__all__:
            assert getattr(ckflow.testing, name).__module__.startswith("ckflow"), name


def mypy_strict(path: Path) -> subprocess.CompletedProcess[str]:
    """Run `mypy --strict` on one file from the repository root, as CI does."""
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(path)],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        check=False,
        timeout=55,
    )


class TestTyping:
    """The DESIGN §10 example type-checks under mypy --strict as a user writes it."""

    def test_api_example_passes_mypy_strict(self) -> None:
        """`mypy --strict tests/typing/api.py` succeeds."""
        proc = mypy_strict(TYPING_EXAMPLE)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Success" in proc.stdout

    def test_call_form_with_options_type_checks(self, tmp_path: Path) -> None:
        """`task(fn, provides=...)` type-checks and keeps the function's types."""
        example = tmp_path / "call_form.py"
        example.write_text(
            "import ckflow\n\n\n"
            "async def make(size: int) -> str:\n"
            "    return str(size)\n\n\n"
            "t: ckflow.FunctionTask[[int], object] = ckflow.task(make, provides='volume')\n",
            encoding="utf-8",
        )
        proc = mypy_strict(example)
        assert proc.returncode == 0, proc.stdout + proc.stderr
