"""Every installed command's --help, started as pip's console-script wrapper starts it (the entry
point's module imported, not run as __main__). Reference: `python -m MODULE --help`, where absl
finds the docstring and flags on __main__ itself."""
import importlib.metadata

import pytest

from tests.conftest import run_python

# One flag each command defines itself; --config comes from cli/common.py.
FLAGS = {"generate": ["--story"], "train": ["--workdir", "--config"], "studio": ["--port"],
         "convert": ["--src", "--config"], "bench": ["--shots"], "eval": ["--videos"]}
ENTRY_POINTS = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")
                if e.name.startswith("shotstream-")}


def test_every_command_is_covered():
    assert sorted(ENTRY_POINTS) == sorted(f"shotstream-{n}" for n in FLAGS)


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_console_script_help_matches_python_m(name):
    module, func = ENTRY_POINTS[f"shotstream-{name}"].split(":")
    wrapper = f"import sys; sys.argv[0] = 'shotstream-{name}'; from {module} import {func}; sys.exit({func}())"
    got, want = run_python("-c", wrapper, "--help"), run_python("-m", module, "--help")
    assert got.returncode == want.returncode, got.stderr  # absl exits 1 after --help
    doc = want.stdout.splitlines()[0]
    assert doc.startswith(f"shotstream-{name}: ")
    for out in (got.stdout, want.stdout):
        assert doc in out and "USAGE" not in out
        for flag in FLAGS[name]:
            assert f"  {flag}: " in out, out
