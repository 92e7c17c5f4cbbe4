# securellm-bridge from this checkout, with dependencies from nixpkgs.
# Call with python3Packages.callPackage (flake.nix does).
{
  lib,
  python,
  buildPythonApplication,
  setuptools,
  grpcio-tools,
  aiohttp,
  cryptography,
  gguf,
  grpcio,
  grpcio-health-checking,
  grpcio-reflection,
  nvidia-ml-py,
  prometheus-client,
  protobuf,
  shtab,
  systemd-python,
  uvloop,
  httpx,
  openai,
  pytest-timeout,
  pytestCheckHook,
}:
let
  dependencies = [
    aiohttp
    cryptography
    gguf
    grpcio
    grpcio-health-checking
    grpcio-reflection
    nvidia-ml-py
    prometheus-client
    protobuf
    shtab
    systemd-python
    uvloop
  ];
  testDependencies = [
    grpcio-tools
    httpx
    openai
    pytest-timeout
  ];
in
buildPythonApplication {
  pname = "securellm-bridge";
  inherit ((lib.importTOML ../pyproject.toml).project) version;
  pyproject = true;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../README.md
      ../daemon
      ../ctl
      ../proto
      ../scripts/gen_proto.py
      # For the tests:
      ../tests
      ../docs
      ../packaging/config.example.toml
    ];
  };

  build-system = [ setuptools ];
  nativeBuildInputs = [ grpcio-tools ];
  inherit dependencies;

  # The committed _pb modules come from the protobuf on PyPI and check its version at import;
  # regenerate them for nixpkgs' protobuf, offline, with nixpkgs' grpcio-tools.
  preBuild = ''
    rm -r daemon/securellm_bridge/_pb
    ${python.interpreter} scripts/gen_proto.py
  '';

  # pyproject's lower bounds follow PyPI; nixpkgs' versions are the ones tested here.
  pythonRelaxDeps = true;

  nativeCheckInputs = [ pytestCheckHook ] ++ testDependencies;
  # The fast suite: pytest -m "not slow". Slow tests start real daemons, journald and systemd
  # (CI runs them with --slow); without --slow conftest.py deselects them as well.
  disabledTestMarks = [ "slow" ];
  # It checks the unit and the Nix files with systemd-analyze and nix-instantiate, and those
  # files are not part of this source.
  disabledTestPaths = [ "tests/test_packaging.py" ];
  preCheck = ''
    export HOME=$(mktemp -d)
  '';

  pythonImportsCheck = [
    "securellm_bridge"
    "securellmctl"
  ];

  passthru.devDependencies = dependencies ++ testDependencies;

  meta = {
    description = "Secure LLM gateway: mTLS OpenAI-compatible API, cloud and local backends, journald audit";
    license = lib.licenses.mit;
    mainProgram = "securellm-bridged";
    platforms = lib.platforms.linux;
  };
}
