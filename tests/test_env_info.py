"""The environment report every run logs: torch's collector, with its package list read from the installed
distributions' metadata instead of a ``pip list`` subprocess (1.3 s per run), and once per process."""
import subprocess

import torch
import torch.utils.collect_env as collect_env

from vlprompt.utils import tools


def test_env_report_lists_the_packages_without_running_pip(monkeypatch):
    commands = []
    real = subprocess.Popen

    class Spy(real):
        def __init__(self, args, *a, **k):
            commands.append(args if isinstance(args, str) else " ".join(map(str, args)))
            super().__init__(args, *a, **k)

    monkeypatch.setattr(subprocess, "Popen", Spy)
    slow = collect_env.get_pip_packages
    text = tools._collect_env_info()
    assert not any("pip" in c for c in commands), commands
    assert collect_env.get_pip_packages is slow  # torch's function is put back
    # the distribution's version (pip's too: torch.__version__ may carry a local "+cu130" pip does not list)
    assert f"torch=={torch.__version__.split('+')[0]}" in text and "Pillow (" in text


def test_the_package_list_is_pips_filtered_list():
    patterns = collect_env.PIP_PATTERNS + collect_env.COMMON_PATTERNS
    _, from_pip = collect_env.get_pip_packages(collect_env.run, patterns)
    assert set(tools.installed_packages(patterns).splitlines()) == set(from_pip.splitlines())
    assert any(line.startswith("numpy==") for line in from_pip.splitlines())


def test_collected_once_per_process(monkeypatch):
    calls = []
    monkeypatch.setattr(tools, "_ENV_INFO", [])
    monkeypatch.setattr(tools, "_collect_env_info", lambda: calls.append(1) or "report")
    assert tools.collect_env_info() == tools.collect_env_info() == "report" and calls == [1]
