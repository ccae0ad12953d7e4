# Builds moat with Nix (rustPlatform, the committed Cargo.lock) and offers a
# development shell with the toolchain and the interop peers the tests use.
#   nix build            -> ./result/bin/moat
#   nix develop          -> cargo, clippy, rustfmt, skopeo, umoci, registry, htpasswd, jq
# The tests themselves need root, kernel sandboxes and a loopback registry:
# they run from scripts/test.sh, not inside the Nix build sandbox.
{
  description = "moat: reproducible sandbox images and the supervisor that runs them";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      # Source without build output, local image stores or VCS metadata.
      src = nixpkgs.lib.cleanSourceWith {
        src = ./.;
        filter = path: type:
          let base = baseNameOf (toString path);
          in nixpkgs.lib.cleanSourceFilter path type
             && !(type == "directory" && (base == "target" || base == "images" || base == "result"));
      };
      cargoToml = builtins.fromTOML (builtins.readFile ./Cargo.toml);
    in
    {
      packages = forAll (pkgs: rec {
        moat = pkgs.rustPlatform.buildRustPackage {
          pname = "moat";
          version = cargoToml.workspace.package.version;
          inherit src;
          cargoLock.lockFile = ./Cargo.lock;
          cargoBuildFlags = [ "--bin" "moat" ];
          # Scenario tests need root, namespaces and a registry; see scripts/test.sh.
          doCheck = false;
          meta = {
            description = cargoToml.package.description;
            license = pkgs.lib.licenses.asl20;
            mainProgram = "moat";
            platforms = pkgs.lib.platforms.linux;
          };
        };
        default = moat;
      });

      apps = forAll (pkgs: {
        default = {
          type = "app";
          program = "${self.packages.${pkgs.system}.moat}/bin/moat";
        };
      });

      devShells = forAll (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.system}.moat ];
          packages = with pkgs; [
            cargo rustc rustfmt clippy rust-analyzer
            skopeo umoci
            docker-distribution # the `registry` server the tests start on loopback
            apacheHttpd         # htpasswd for the TLS + basic-auth registry test
            runc crun busybox iproute2 jq hyperfine
          ];
        };
      });
    };
}
