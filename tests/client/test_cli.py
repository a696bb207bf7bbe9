"""`pedseg-client` refuses bad input before any SuperNode starts, with one clear line and a non-zero exit."""

import hashlib
import subprocess
import sys
import time

import pytest
from flwr.cli.build import build_fab_from_disk

from client.approved_app import own_app, own_app_hash
from client.cli import main, node_config
from pedseg_core.processes.ports import free_port


@pytest.fixture
def dataset(write_dataset):
    return write_dataset()


def test_node_config_is_toml(tmp_path):
    text = node_config({"site": 'a "b"', "data-dir": str(tmp_path), "threads": 2, "keep-sent": False})
    assert text == f'site="a \\"b\\"" data-dir="{tmp_path}" threads=2 keep-sent=false'


def test_broken_data_is_refused_before_connecting(dataset, capsys):
    label = next((dataset / "labelsTr").iterdir())
    label.unlink()
    status = main(["--site", "h1", "--joint", "knee", "--data", str(dataset), "--superlink", "127.0.0.1:1",
                   "--insecure"])
    err = capsys.readouterr().err
    assert status == 2 and f"site h1: {dataset / 'imagesTr' / 'case_000_0000.nii.gz'}: missing label" in err


@pytest.mark.parametrize("extra, message", [
    (["--insecure", "--auth-key", "k"], "--auth-key needs TLS"),
    (["--root-certificates", "missing.pem"], "missing.pem: --root-certificates file not found"),
])
def test_bad_security_options(dataset, extra, message, capsys):
    assert main(["--site", "h1", "--joint", "knee", "--data", str(dataset), "--superlink", "127.0.0.1:1",
                 *extra]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("names, message", [
    (["--site", "../etc", "--joint", "knee"], "--site: site name '../etc' may hold only"),
    (["--site", "bad site", "--joint", "knee"], "--site: site name 'bad site' may hold only"),
    (["--site", "h1", "--joint", "knee/../x"], "--joint: joint name 'knee/../x' may hold only"),
])
@pytest.mark.parametrize("command", [[], ["run"]])
def test_bad_site_and_joint_names_are_refused_before_any_folder_is_made(dataset, tmp_path, names, message, command,
                                                                        monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*command, *names, "--data", str(dataset), "--superlink", "127.0.0.1:1", "--insecure"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir()) and not list(dataset.parent.glob(".pedseg-*"))


def test_a_new_joint_is_a_name_like_any_other(dataset, capsys):
    """Joints are not a fixed list: a spine site passes the name check (and fails later, at the SuperLink)."""
    assert main(["--site", "spine-1", "--joint", "spine", "--data", str(dataset), "--superlink", "127.0.0.1:1",
                 "--insecure", "--connect-timeout", "0.1"]) == 2
    assert "cannot reach the SuperLink" in capsys.readouterr().err


def test_bare_command_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as done:
        main([])
    assert done.value.code == 2 and "{run,app-hash}" in capsys.readouterr().err


def test_unreachable_superlink_gives_a_clear_error_after_retries(dataset, tmp_path):
    port = free_port()  # nothing listens there
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "client.cli", "--site", "h1", "--joint", "knee",
                           "--data", str(dataset), "--superlink", f"127.0.0.1:{port}", "--insecure",
                           "--state-dir", str(tmp_path / "state"), "--connect-timeout", "3"],
                          capture_output=True, encoding="utf-8", errors="replace", timeout=60)
    assert proc.returncode == 2
    assert f"cannot reach the SuperLink at 127.0.0.1:{port} (retried for 3 s)" in proc.stderr
    assert f"waiting for the SuperLink at 127.0.0.1:{port} to accept connections (up to 3 s" in proc.stdout
    assert "Traceback" not in proc.stderr and time.monotonic() - start >= 2.5


def test_a_site_runs_its_own_app_unless_told_otherwise_and_says_so_at_start(dataset, tmp_path, capsys):
    """No approved_apps: the start line names the one app it runs (its own pedseg's); --allow-any-app is warned
    on stderr (the site's log); a malformed --approve-app is refused in one line."""
    site = ["--site", "h1", "--joint", "knee", "--data", str(dataset), "--superlink", "127.0.0.1:1", "--insecure",
            "--state-dir", str(tmp_path / "state"), "--connect-timeout", "0.1"]
    assert main(site) == 2
    out, err = capsys.readouterr()
    assert f"pedseg-client: apps: runs only {own_app_hash()} (its own pedseg's app)" in out
    assert "--allow-any-app" not in err
    other = "c" * 64
    assert main([*site, "--approve-app", other]) == 2
    assert other in capsys.readouterr().out
    assert main([*site, "--allow-any-app"]) == 2
    out, err = capsys.readouterr()
    assert "pedseg-client: warning: --allow-any-app: this site runs any app its federation sends" in err
    assert "apps: runs only" not in out
    assert main([*site, "--approve-app", "c0ffee"]) == 2
    assert "--approve-app c0ffee: not a sha256" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main([*site, "--approve-app", other, "--allow-any-app"])
    assert done.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_app_hash_is_the_hash_of_the_fab_flower_sends(capsys, tmp_path):
    """`pedseg-client app-hash` prints what `flwr run` would send, byte for byte (Flower's own FAB builder)."""
    assert main(["app-hash"]) == 0
    printed = capsys.readouterr().out.strip()
    with own_app() as app_dir:
        assert printed == hashlib.sha256(build_fab_from_disk(app_dir)).hexdigest()
    assert main(["app-hash", str(tmp_path)]) == 2
    assert "not a Flower app" in capsys.readouterr().err


def test_every_option_has_help():
    import argparse

    from client.cli import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in commands.choices.items():
        assert all(action.help for action in sub._actions), name
        assert all("default" in action.help for action in sub._actions
                   if action.default is not None and action.default is not False and action.dest != "help"), name
