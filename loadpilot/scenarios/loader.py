"""Reading scenario files: every problem is reported with its file and line."""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType

from loadpilot.errors import ScenarioError
from loadpilot.scenarios.scenario import Scenario, scenario_of


def load_module(path: str | Path) -> ModuleType:
    """A Python file run as a module; an error in it is reported with its file and line."""
    file = Path(path)
    if not file.is_file():
        raise ScenarioError(f"{file}: no such scenario file")
    module_name = f"loadpilot_scenario_{abs(hash(str(file.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise ScenarioError(f"{file}: cannot be read as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except ScenarioError:
        raise
    except SyntaxError as e:
        raise ScenarioError(f"{e.filename}:{e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:  # an exception while importing the user's file
        mine = file.resolve()
        frames = [
            f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == mine
        ]
        line = frames[-1].lineno if frames else "?"
        raise ScenarioError(f"{file}:{line}: {type(e).__name__}: {e}") from None
    finally:
        sys.modules.pop(module_name, None)
    return module


def load_scenarios(path: str | Path) -> list[Scenario]:
    """The scenarios a Python file declares, in the order they appear."""
    file = Path(path)
    module = load_module(file)
    found = [sc for v in vars(module).values() if isinstance(v, type) and (sc := scenario_of(v))]
    if not found:
        raise ScenarioError(f"{file}: no scenario (decorate a VUser subclass with @lp.scenario)")
    return found


def load_scenario(path: str | Path, name: str | None = None) -> Scenario:
    """One scenario of a file: the one called ``name``, or the only one."""
    found = load_scenarios(path)
    names = [s.name for s in found]
    if name is None:
        if len(found) > 1:
            raise ScenarioError(
                f"{path}: several scenarios ({', '.join(names)}); pick one with --scenario"
            )
        return found[0]
    for s in found:
        if s.name == name:
            return s
    raise ScenarioError(f"{path}: no scenario {name!r}; scenarios: {', '.join(names)}")
