"""The packaging files: Nix syntax, the systemd unit, and that the unit and the NixOS module agree.

Nix 2.8 (Debian's nix-bin) can parse but not evaluate current nixpkgs, so the module is
compared with the unit as text: every literal setting of the module's serviceConfig must
equal the unit's. nix/vm-test.nix evaluates without nixpkgs, which gives its test script
(compiled here) and its fake upstream (run here against the openai client).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from .daemon import ROOT

UNIT = ROOT / "packaging" / "securellm-bridge.service"
MODULE = ROOT / "nix" / "module.nix"
NIX_FILES = sorted([ROOT / "flake.nix", *(ROOT / "nix").glob("*.nix")])
#: Settings that only the module has, with why.
MODULE_ONLY = {
    "ReadWritePaths": "a state.dir other than /var/lib/securellm",
    "EnvironmentFile": "services.securellm-bridge.environmentFile",
    "LoadCredential": "services.securellm-bridge.credentials",
    "DeviceAllow": "gpu.enable",
}
#: Settings whose module value is an expression; the unit's value is checked here instead.
MODULE_EXPRESSIONS = {
    "ExecStart": None,
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "User": "securellm",
    "Group": "securellm",
    "PrivateDevices": "yes",  # !cfg.gpu.enable
    "SupplementaryGroups": "systemd-journal",  # plus video/render with gpu.enable
}

needs_nix = pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="nix-instantiate not installed")
needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze not installed")


# -- the unit file -------------------------------------------------------------------------

def unit_sections(text: str) -> dict[str, dict[str, list[str]]]:
    """``{section: {key: [value per line]}}``; a repeated key gives several values."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


@needs_systemd_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # The unit as installed by docs/INSTALL.md, with ExecStart pointing at this venv.
    venv_bin = Path(sys.prefix) / "bin"
    text = UNIT.read_text()
    assert "/opt/securellm-bridge/venv/bin/" in text
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace("/opt/securellm-bridge/venv/bin/", f"{venv_bin}/"))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                          check=False, capture_output=True, text=True, timeout=60)
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if UNIT.name in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


@needs_systemd_analyze
def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    # The check above can fail: an unknown key and a missing binary are reported.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                          check=False, capture_output=True, text=True, timeout=60)
    out = done.stdout + done.stderr
    assert "Unknown key 'NoNewPrivilege'" in out and "not executable" in out, out


def test_unit_is_a_hardened_notify_service() -> None:
    service = unit_sections(UNIT.read_text())["Service"]
    expected = {"Type": ["notify"], "NotifyAccess": ["main"], "User": ["securellm"],
                "RuntimeDirectory": ["securellm"], "StateDirectory": ["securellm"],
                "ConfigurationDirectory": ["securellm"], "NoNewPrivileges": ["yes"],
                "ProtectSystem": ["strict"], "CapabilityBoundingSet": [""]}
    assert {k: service.get(k) for k in expected} == expected
    assert "WatchdogSec" in service and service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


# -- Nix -------------------------------------------------------------------------------------

@needs_nix
@pytest.mark.parametrize("path", NIX_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_nix_file_parses(path: Path) -> None:
    done = subprocess.run(["nix-instantiate", "--store", "dummy://", "--parse", str(path)],
                          check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@needs_nix
def test_nix_parse_check_can_fail(tmp_path: Path) -> None:
    broken = tmp_path / "broken.nix"
    broken.write_text(MODULE.read_text().replace("in\n{", "in\n{{", 1))
    done = subprocess.run(["nix-instantiate", "--store", "dummy://", "--parse", str(broken)],
                          check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0


def _block(text: str, opening: str) -> str:
    """The body of the ``{ ... }`` that follows ``opening`` (once) in ``text``."""
    start = text.index(opening) + len(opening)
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    raise ValueError(f"unbalanced braces after {opening!r}")


def _statements(body: str) -> dict[str, str]:
    """``Key = value;`` statements of a Nix attribute set body (comments removed)."""
    body = re.sub(r"#[^\n]*", "", body)
    out: dict[str, str] = {}
    depth, start = 0, 0
    for i, ch in enumerate(body):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == ";" and depth == 0:
            key, _, value = body[start:i].partition("=")
            out[key.strip()] = value.strip()
            start = i + 1
    return out


def _literal(value: str) -> list[str] | None:
    """A Nix literal as unit-file tokens: strings, numbers, booleans and lists of them."""
    if value in ("true", "false"):
        return ["yes" if value == "true" else "no"]
    if re.fullmatch(r"\d+", value):
        return [value]
    if re.fullmatch(r'"[^"$\\]*"', value):
        return value[1:-1].split()
    if re.fullmatch(r'\[(\s*"[^"$\\]*")*\s*\]', value):
        return [token for item in re.findall(r'"([^"]*)"', value) for token in item.split()]
    return None


def module_service() -> tuple[dict[str, str], dict[str, str]]:
    """The module's ``systemd.services.securellm-bridge`` attributes and its ``serviceConfig``."""
    text = MODULE.read_text()
    service = _block(text, "systemd.services.securellm-bridge = {")
    return _statements(service.replace(_block(service, "serviceConfig = {"), "")), \
        _statements(_block(service, "serviceConfig = {"))


def test_module_and_unit_agree_on_every_setting() -> None:
    unit = unit_sections(UNIT.read_text())
    service = {k: [tok for v in vs for tok in v.split()] for k, vs in unit["Service"].items()}
    attrs, module = module_service()
    assert len(module) > 40, "the module's serviceConfig was not found"

    assert set(module) - set(service) == set(MODULE_ONLY), "settings in nix/module.nix only"
    assert set(service) - set(module) == set(), "settings in the unit only"
    disagree = {}
    for key, raw in module.items():
        if key in MODULE_ONLY:
            continue
        if key in MODULE_EXPRESSIONS:
            assert _literal(raw) is None, f"{key} is a literal now; drop it from MODULE_EXPRESSIONS"
            wanted = MODULE_EXPRESSIONS[key]
            if wanted is not None and unit["Service"][key] != [wanted]:
                disagree[key] = (raw, unit["Service"][key])
            continue
        tokens = _literal(raw)
        assert tokens is not None, f"{key} = {raw}: not a literal; list it in MODULE_EXPRESSIONS"
        if tokens != service[key]:
            disagree[key] = (raw, unit["Service"][key])
    assert not disagree, f"nix/module.nix vs the unit: {disagree}"
    assert "-HUP $MAINPID" in module["ExecReload"]

    unit_section = unit["Unit"]
    assert [attrs["startLimitIntervalSec"]] == unit_section["StartLimitIntervalSec"]
    assert [attrs["startLimitBurst"]] == unit_section["StartLimitBurst"]
    assert _literal(attrs["after"]) == unit_section["After"] and _literal(attrs["wants"]) == unit_section["Wants"]


def test_comparison_notices_a_difference(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    changed = tmp_path / "module.nix"
    changed.write_text(MODULE.read_text().replace('WatchdogSec = "30s";', 'WatchdogSec = "31s";'))
    monkeypatch.setattr(sys.modules[__name__], "MODULE", changed)
    with pytest.raises(AssertionError, match="WatchdogSec"):
        test_module_and_unit_agree_on_every_setting()


# -- nix/vm-test.nix, evaluated without nixpkgs ---------------------------------------------

#: Just what vm-test.nix takes from pkgs and lib, so that its strings can be read.
VM_TEST_EVAL = """
let
  test = import %s {
    pkgs = {
      writeText = _name: text: text;
      testers.runNixOSTest = t: t;
      python3.interpreter = "";
      curl = null;
    };
    module = null;
  };
  fake = (test.nodes.machine { lib.mkForce = x: x; }).systemd.services.fake-openai;
in { inherit (test) testScript; upstream = fake.serviceConfig.ExecStart; inherit (fake) environment; }
"""


@pytest.fixture(scope="module")
def vm_test() -> dict[str, object]:
    if shutil.which("nix-instantiate") is None:
        pytest.skip("nix-instantiate not installed")
    done = subprocess.run(["nix-instantiate", "--store", "dummy://", "--eval", "--strict", "--json",
                           "--expr", VM_TEST_EVAL % (ROOT / "nix" / "vm-test.nix")],
                          check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_vm_test_script_is_valid_python(vm_test: dict[str, str]) -> None:
    code = compile(vm_test["testScript"], "vm-test.nix:testScript", "exec")
    assert "subtest" in code.co_names and "machine" in code.co_names


@pytest.fixture
def fake_upstream(vm_test: dict[str, object], tmp_path: Path) -> Iterator[tuple[str, str]]:
    script = tmp_path / "fake_openai.py"
    script.write_text(str(vm_test["upstream"]).strip())
    env = dict(vm_test["environment"])  # type: ignore[call-overload]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        env["FAKE_OPENAI_PORT"] = str(s.getsockname()[1])
    proc = subprocess.Popen([sys.executable, str(script)], env={**os.environ, **env})
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", int(env["FAKE_OPENAI_PORT"])), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "fake upstream did not start"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{env['FAKE_OPENAI_PORT']}/v1", env["FAKE_OPENAI_KEY"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_vm_test_fake_upstream_speaks_openai(fake_upstream: tuple[str, str]) -> None:
    base_url, key = fake_upstream
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    reply = client.chat.completions.create(model="fake-model", messages=messages)
    assert reply.choices[0].message.content == "hello from the fake upstream"
    assert reply.usage is not None and reply.usage.total_tokens == 8
    chunks = list(client.chat.completions.create(model="fake-model", messages=messages, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hello from the fake upstream"
    assert [m.id for m in client.models.list()] == ["fake-model"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
