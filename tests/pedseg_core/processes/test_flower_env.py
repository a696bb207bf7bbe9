"""Flower's processes speak UTF-8 on any host: Flower prints emoji, and a host whose locale is ASCII must not
turn that into a UnicodeEncodeError in the SuperNode or a UnicodeDecodeError in pedseg (CI had such a host)."""

import os
import subprocess
import sys

from pedseg_core.processes.flower_env import flower_env


def test_a_flower_process_writes_utf8_under_an_ascii_locale(tmp_path, monkeypatch):
    monkeypatch.setenv("LC_ALL", "C")
    monkeypatch.setenv("PYTHONUTF8", "0")
    ascii_env = dict(os.environ)
    probe = [sys.executable, "-c", "import sys; print(sys.stdout.encoding); print('\\u2705 registered')"]
    plain = subprocess.run(probe, env=ascii_env, capture_output=True)
    assert plain.returncode != 0 and b"UnicodeEncodeError" in plain.stderr  # the host really is ASCII
    flower = subprocess.run(probe, env=flower_env(tmp_path / "flwr-home"), capture_output=True, encoding="utf-8")
    assert flower.returncode == 0, flower.stderr
    assert flower.stdout.splitlines() == ["utf-8", "\u2705 registered"]
