"""Validating a config and looking up a method's parameters must not import torch (a 3-second import)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

MARKER = "NO-TORCH-OK"

# Runs in a fresh interpreter: this test process has torch loaded already. A finder on sys.meta_path records
# the stack of the first `import torch`, so a failure names the module that pulled it in.
CHILD = textwrap.dedent(
    f"""
    import sys
    import traceback

    class _Spy:
        stack = None

        def find_spec(self, name, path=None, target=None):
            if name == "torch" and _Spy.stack is None:
                _Spy.stack = "".join(traceback.format_stack())
            return None

    sys.meta_path.insert(0, _Spy())

    from mergeguard.merge.methods import ALL_PARAM_NAMES, METHODS, REQUIRED, MergeMethod, Param, get_method
    import mergeguard.merge.arch
    import mergeguard.merge.config
    import mergeguard.merge.params
    import mergeguard.merge.plan

    ties = get_method("ties")
    assert isinstance(ties, MergeMethod), ties
    assert all(isinstance(p, Param) for p in ties.params)
    assert ties.param("weight").required and ties.param("weight").default is REQUIRED
    assert ties.param("density").per_model and not ties.param("density").required
    assert "density" in ALL_PARAM_NAMES and "weight" in ALL_PARAM_NAMES, ALL_PARAM_NAMES
    assert "ties" in METHODS and "slerp" in METHODS

    config = mergeguard.merge.config.load_config(
        "models:\\n"
        "  - model: ./a\\n"
        "    parameters: {{weight: 0.5, density: 0.5}}\\n"
        "  - model: ./b\\n"
        "    parameters: {{weight: 0.5, density: 0.7}}\\n"
        "base_model: ./base\\n"
        "merge_method: ties\\n"
        "dtype: bfloat16\\n"
    )
    assert config.merge_method == "ties" and config.base_model == "./base", config
    assert mergeguard.merge.config.config_models(config) == ["./base", "./a", "./b"], config

    if "torch" in sys.modules:
        print("TORCH IMPORTED FROM:\\n" + (_Spy.stack or "?"))
    else:
        print({MARKER!r})
    """
)


def test_methods_and_config_import_without_torch() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert MARKER in done.stdout, done.stdout + done.stderr
