# NixOS module: services.securellm-bridge. Documentation: docs/NIXOS.md.
# The unit behaves like packaging/securellm-bridge.service (docs/SYSTEMD.md);
# tests/test_packaging.py checks that the two agree on the settings that matter.
{
  config,
  lib,
  pkgs,
  utils,
  ...
}:
let
  inherit (lib) literalExpression mkOption types;

  cfg = config.services.securellm-bridge;
  settingsFormat = pkgs.formats.toml { };

  # Runtime paths as strings: a Nix path literal would copy a secret into the world-readable store.
  absolutePath = types.strMatching "/.+";
  inStore = path: lib.hasPrefix "${builtins.storeDir}/" path;

  # One TOML table: typed keys for the common settings, anything else passes through.
  section =
    description: options:
    mkOption {
      type = types.submodule {
        freeformType = settingsFormat.type;
        inherit options;
      };
      default = { };
      inherit description;
    };

  listenHost = if lib.hasInfix ":" cfg.listenAddress then "[${cfg.listenAddress}]" else cfg.listenAddress;

  # TOML has no null: unset optional keys are left out.
  generatedConfig = settingsFormat.generate "securellm-bridge.toml" (
    lib.filterAttrsRecursive (_: v: v != null) cfg.settings
  );
  configPath = if cfg.configFile != null then cfg.configFile else "/etc/securellm/config.toml";
  tls = cfg.settings.security.tls;

  gpuDevices = [
    # NVIDIA (CUDA, NVML)
    "char-nvidiactl"
    "char-nvidia-caps"
    "char-nvidia-frontend"
    "char-nvidia-uvm"
    # AMD (ROCm) and other DRM render nodes
    "char-drm"
    "char-kfd"
  ];
in
{
  options.services.securellm-bridge = {
    enable = lib.mkEnableOption "securellm-bridge, a secure LLM gateway (mTLS OpenAI-compatible API, journald audit)";

    package = lib.mkPackageOption pkgs "securellm-bridge" { };

    user = mkOption {
      type = types.str;
      default = "securellm";
      description = "System user the daemon runs as; created when left at the default.";
    };

    group = mkOption {
      type = types.str;
      default = "securellm";
      description = ''
        Group of the daemon, created when left at the default. Its members may use
        `securellmctl` on the control socket (`settings.control.socket_group`).
      '';
    };

    listenAddress = mkOption {
      type = types.str;
      default = "127.0.0.1";
      example = "::";
      description = "Address of the HTTPS inference listener (`settings.server.listen`).";
    };

    port = mkOption {
      type = types.port;
      default = 8443;
      description = "Port of the HTTPS inference listener (`settings.server.listen`).";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open {option}`services.securellm-bridge.port` in the firewall. Requires TLS.";
    };

    tls = {
      certFile = mkOption {
        type = types.nullOr absolutePath;
        default = null;
        example = "/run/agenix/securellm-server-crt";
        description = "Server certificate chain (PEM), `settings.security.tls.cert_path`.";
      };
      keyFile = mkOption {
        type = types.nullOr absolutePath;
        default = null;
        example = "/run/agenix/securellm-server-key";
        description = ''
          Server private key (PEM), `settings.security.tls.key_path`. A runtime path outside
          the Nix store, readable by {option}`services.securellm-bridge.user` (e.g. an agenix
          secret with `owner = "securellm"`). Re-read on `systemctl reload`.
        '';
      };
      clientCaFile = mkOption {
        type = types.nullOr absolutePath;
        default = null;
        example = "/etc/securellm/tls/ca.crt";
        description = "CA bundle that client certificates must chain to (mutual TLS), `settings.security.tls.client_ca_path`.";
      };
    };

    models.dirs = mkOption {
      type = types.listOf absolutePath;
      default = [ ];
      example = [ "/var/lib/models" ];
      description = ''
        Directories scanned for local GGUF models (`settings.local.model_dirs`). They are
        read-only to the daemon and must lie outside /home and /root (ProtectHome).
      '';
    };

    llamaCpp.package = mkOption {
      type = types.nullOr types.package;
      default = pkgs.llama-cpp;
      defaultText = literalExpression "pkgs.llama-cpp";
      example = literalExpression "pkgs.llama-cpp.override { cudaSupport = true; }";
      description = ''
        llama.cpp whose `llama-server` the daemon runs for local models
        (`settings.backends.llamacpp.binary`); null leaves the key unset.
      '';
    };

    ollama = {
      enable = lib.mkEnableOption "`ollama serve` as a backend supervised by the daemon (`settings.backends.ollama.binary`)";
      package = lib.mkPackageOption pkgs "ollama" { };
    };

    gpu.enable = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Give the daemon and the backends it runs the GPUs: the NVIDIA and DRM/KFD devices
        (DeviceAllow=), groups video and render, and PrivateDevices= off. The NVIDIA device
        nodes must exist before the service starts (e.g. `hardware.nvidia.nvidiaPersistenced`),
        since NoNewPrivileges= stops the setuid nvidia-modprobe.
      '';
    };

    settings = mkOption {
      description = ''
        The configuration file (docs/CONFIG.md), as Nix. Unset (null) keys are left out.
        Secrets must not be written here (the file is in the Nix store): use
        `"cred:NAME"` with {option}`services.securellm-bridge.credentials`, or `"''${VAR}"`
        with {option}`services.securellm-bridge.environmentFile`.
      '';
      default = { };
      example = literalExpression ''
        {
          providers.openai = { kind = "openai"; models = [ "gpt-4o-mini" ]; api_key = "cred:openai"; };
          security.audit.log_requests = false;
        }
      '';
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          server = section "`[server]`" {
            listen = mkOption {
              type = types.str;
              default = "${listenHost}:${toString cfg.port}";
              defaultText = literalExpression ''"''${listenAddress}:''${toString port}"'';
              description = "HTTPS inference listener, `HOST:PORT` or `[IPv6]:PORT`.";
            };
          };
          control = section "`[control]`" {
            socket = mkOption {
              type = types.strMatching "/run/securellm/.+";
              default = "/run/securellm/control.sock";
              description = "gRPC control socket; it must lie in the unit's RuntimeDirectory /run/securellm.";
            };
            socket_group = mkOption {
              type = types.str;
              default = cfg.group;
              defaultText = literalExpression "config.services.securellm-bridge.group";
              description = "Members of this group may use `securellmctl`.";
            };
          };
          state = section "`[state]`" {
            dir = mkOption {
              type = absolutePath;
              default = "/var/lib/securellm";
              description = "SQLite state (API keys, usage); made writable for the daemon.";
            };
          };
          log = section "`[log]`" {
            level = mkOption {
              type = types.enum [
                "debug"
                "info"
                "warning"
                "error"
              ];
              default = "info";
              description = "Level of the daemon's own journal records.";
            };
          };
          security = section "`[security]`" {
            tls = section "`[security.tls]`" {
              enabled = mkOption {
                type = types.bool;
                default = true;
                description = "Serve HTTPS. false serves plain HTTP: only for a listener on loopback.";
              };
              cert_path = mkOption {
                type = types.nullOr absolutePath;
                default = cfg.tls.certFile;
                defaultText = literalExpression "config.services.securellm-bridge.tls.certFile";
                description = "Server certificate chain (PEM).";
              };
              key_path = mkOption {
                type = types.nullOr absolutePath;
                default = cfg.tls.keyFile;
                defaultText = literalExpression "config.services.securellm-bridge.tls.keyFile";
                description = "Server private key (PEM).";
              };
              client_ca_path = mkOption {
                type = types.nullOr absolutePath;
                default = cfg.tls.clientCaFile;
                defaultText = literalExpression "config.services.securellm-bridge.tls.clientCaFile";
                description = "CA bundle for client certificates.";
              };
              require_client_cert = mkOption {
                type = types.bool;
                default = true;
                description = "Mutual TLS: refuse clients without a valid certificate.";
              };
            };
          };
        };
      };
    };

    configFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/etc/securellm/custom.toml";
      description = ''
        A configuration file to use instead of the one generated from
        {option}`services.securellm-bridge.settings` (which is then ignored, as are the
        options that feed it: listenAddress, port, tls.*, models.dirs, llamaCpp, ollama).
      '';
    };

    environmentFile = mkOption {
      type = types.nullOr absolutePath;
      default = null;
      example = "/run/secrets/securellm.env";
      description = ''
        File of `VAR=value` lines for the daemon's environment (systemd EnvironmentFile=),
        for secrets written as `"''${VAR}"` in the settings.
      '';
    };

    credentials = mkOption {
      type = types.attrsOf absolutePath;
      default = { };
      example = literalExpression ''{ openai = config.age.secrets.openai-key.path; }'';
      description = ''
        systemd credentials: NAME = path of a file read by systemd (as root) and handed to the
        daemon as `$CREDENTIALS_DIRECTORY/NAME` (LoadCredential=). Refer to one in the
        settings as `"cred:NAME"`, e.g. `providers.openai.api_key = "cred:openai"`.
      '';
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Extra arguments for `securellm-bridged`.";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.user != "root";
        message = "services.securellm-bridge.user must not be root.";
      }
      {
        assertion = !(cfg.openFirewall && !tls.enabled);
        message = "services.securellm-bridge: openFirewall exposes the API to the network, which needs TLS (settings.security.tls.enabled).";
      }
      {
        assertion = cfg.configFile != null || !tls.enabled || (tls.cert_path != null && tls.key_path != null);
        message = "services.securellm-bridge: TLS is enabled: set tls.certFile and tls.keyFile, or disable it explicitly (settings.security.tls.enabled = false).";
      }
      {
        assertion =
          cfg.configFile != null || !tls.enabled || !tls.require_client_cert || tls.client_ca_path != null;
        message = "services.securellm-bridge: mutual TLS needs tls.clientCaFile (or settings.security.tls.require_client_cert = false).";
      }
      {
        assertion = cfg.tls.keyFile == null || !inStore cfg.tls.keyFile;
        message = "services.securellm-bridge.tls.keyFile must not be in the world-readable Nix store.";
      }
      {
        assertion = lib.all (path: !inStore path) (lib.attrValues cfg.credentials);
        message = "services.securellm-bridge.credentials must point outside the world-readable Nix store.";
      }
      {
        assertion = lib.all (name: builtins.match "[A-Za-z0-9_.-]+" name != null) (lib.attrNames cfg.credentials);
        message = "services.securellm-bridge.credentials: names may use only letters, digits, '_', '.' and '-'.";
      }
    ];

    warnings = lib.optional (cfg.openFirewall && lib.elem cfg.listenAddress [
      "127.0.0.1"
      "::1"
      "localhost"
    ]) "services.securellm-bridge: openFirewall is set but the listener is on loopback (listenAddress).";

    # Whole definitions under mkIf: a nested one would still leave an empty table behind.
    services.securellm-bridge.settings = lib.mkMerge [
      (lib.mkIf (cfg.models.dirs != [ ]) { local.model_dirs = cfg.models.dirs; })
      (lib.mkIf (cfg.llamaCpp.package != null) {
        backends.llamacpp.binary = lib.getExe' cfg.llamaCpp.package "llama-server";
      })
      (lib.mkIf cfg.ollama.enable { backends.ollama.binary = lib.getExe cfg.ollama.package; })
    ];

    users.users = lib.mkIf (cfg.user == "securellm") {
      securellm = {
        isSystemUser = true;
        group = cfg.group;
        home = cfg.settings.state.dir;
        description = "securellm-bridge daemon";
      };
    };
    users.groups = lib.mkIf (cfg.group == "securellm") { securellm = { }; };

    environment.etc."securellm/config.toml" = lib.mkIf (cfg.configFile == null) { source = generatedConfig; };
    environment.systemPackages = [ cfg.package ];
    environment.variables = lib.mkIf (cfg.configFile == null) {
      SECURELLM_SOCKET = cfg.settings.control.socket;
    };

    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall [ cfg.port ];

    systemd.services.securellm-bridge = {
      description = "securellm-bridge secure LLM gateway";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      # A new configuration file is applied with SIGHUP, not a restart (docs/CONFIG.md lists
      # the few keys that still need one).
      reloadTriggers = [ (if cfg.configFile != null then cfg.configFile else generatedConfig) ];
      # Five failed starts within five minutes stop the restart loop.
      startLimitIntervalSec = 300;
      startLimitBurst = 5;

      serviceConfig = {
        # READY=1 once the control socket is bound; RELOADING=1/READY=1 around SIGHUP;
        # STOPPING=1 on SIGTERM, then in-flight work drains.
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = utils.escapeSystemdExecArgs (
          [
            (lib.getExe' cfg.package "securellm-bridged")
            "--config"
            configPath
          ]
          ++ cfg.extraArgs
        );
        ExecReload = "${lib.getExe' pkgs.coreutils "kill"} -HUP $MAINPID";
        # WATCHDOG=1 comes from the event loop every WatchdogSec/2: a hung loop is killed and restarted.
        WatchdogSec = "30s";
        Restart = "on-failure";
        RestartSec = "2s";
        # Exit 2 is an invalid configuration: restarting cannot fix it.
        RestartPreventExitStatus = 2;
        TimeoutStartSec = "60s";
        # drain_timeout_seconds (30 s by default) plus time to flush state.
        TimeoutStopSec = "45s";
        # SIGTERM to the daemon only; it stops the llama-server/ollama processes it supervises
        # itself, and whatever is left is killed after it exits.
        KillMode = "mixed";

        User = cfg.user;
        Group = cfg.group;
        # /run/securellm holds the control socket; members of the group may traverse it.
        RuntimeDirectory = "securellm";
        RuntimeDirectoryMode = "0750";
        StateDirectory = "securellm";
        StateDirectoryMode = "0700";
        # /var/log/securellm for the optional JSONL audit copy ([security.audit] file).
        LogsDirectory = "securellm";
        LogsDirectoryMode = "0700";
        ConfigurationDirectory = "securellm";
        ReadWritePaths = lib.optional (cfg.settings.state.dir != "/var/lib/securellm") cfg.settings.state.dir;
        EnvironmentFile = lib.optional (cfg.environmentFile != null) cfg.environmentFile;
        LoadCredential = lib.mapAttrsToList (name: path: "${name}:${path}") cfg.credentials;
        UMask = "0077";
        # Core dumps would hold provider keys, API key hashes and the TLS private key.
        LimitCORE = 0;

        # Hardening: at least as strict as services.ollama.
        CapabilityBoundingSet = [ "" ];
        AmbientCapabilities = [ "" ];
        NoNewPrivileges = true;
        PrivateTmp = true;
        # PrivateDevices=true would hide the accelerators from the daemon and its backends.
        PrivateDevices = !cfg.gpu.enable;
        DevicePolicy = "closed";
        DeviceAllow = lib.optionals cfg.gpu.enable gpuDevices;
        # systemd-journal: securellmctl audit query/tail read the audit records back from the
        # journal. video/render: /dev/dri/renderD* and /dev/kfd belong to these groups.
        SupplementaryGroups = [ "systemd-journal" ] ++ lib.optionals cfg.gpu.enable [
          "video"
          "render"
        ];
        # Audit records must never be dropped by journald's per-service rate limit.
        LogRateLimitIntervalSec = 0;
        PrivateUsers = true;
        PrivateMounts = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectProc = "invisible";
        # Not "pid": supervising local models reads /proc/meminfo and /proc/cpuinfo
        # (free memory, CPU features), here and in llama-server/ollama.
        ProcSubset = "all";
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
        ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RemoveIPC = true;
        KeyringMode = "private";
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
          # The daemon gives its control socket to control.socket_group with chown(2); with no
          # capabilities it can only pick a group it belongs to.
          "@chown"
        ];
        SystemCallErrorNumber = "EPERM";
      };
    };
  };
}
