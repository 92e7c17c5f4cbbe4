{
  description = "securellm-bridge: a secure LLM gateway daemon (mTLS OpenAI-compatible API, journald audit)";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      packageFor = pkgs: self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      app = pkgs: program: description: {
        type = "app";
        program = lib.getExe' (packageFor pkgs) program;
        meta = { inherit description; };
      };
    in
    {
      overlays.default = final: _prev: {
        securellm-bridge = final.python3Packages.callPackage ./nix/package.nix { };
      };

      packages = forAllSystems (pkgs: rec {
        securellm-bridge = pkgs.python3Packages.callPackage ./nix/package.nix { };
        default = securellm-bridge;
      });

      apps = forAllSystems (pkgs: rec {
        securellm-bridged = app pkgs "securellm-bridged" "The securellm-bridge daemon (--config PATH)";
        securellmctl = app pkgs "securellmctl" "Control a running securellm-bridge daemon";
        default = securellm-bridged;
      });

      # Without the overlay, the module's package defaults to this flake's build.
      nixosModules.default =
        { pkgs, ... }:
        {
          imports = [ ./nix/module.nix ];
          services.securellm-bridge.package = lib.mkDefault (packageFor pkgs);
        };

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            (pkgs.python3.withPackages (_: (packageFor pkgs).devDependencies ++ [ pkgs.python3Packages.pytest ]))
            pkgs.llama-cpp
            pkgs.nixfmt
          ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt);

      checks = forAllSystems (pkgs: {
        # The package's check phase is the fast pytest suite (pytestCheckHook, -m "not slow").
        pytest = packageFor pkgs;
        vm-test = import ./nix/vm-test.nix {
          inherit pkgs;
          module = self.nixosModules.default;
        };
      });
    };
}
