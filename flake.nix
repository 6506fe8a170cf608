{
  description = "cim-backup: an event-sourced backup, restore and integrity service for CIM on NATS JetStream";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";
    flake-utils.url = "github:numtide/flake-utils";
  };

  outputs = { self, nixpkgs, flake-utils }:
    flake-utils.lib.eachDefaultSystem (system:
      let
        pkgs = import nixpkgs { inherit system; };

        cim-backup = pkgs.rustPlatform.buildRustPackage {
          pname = "cim-backup";
          version = "0.1.0";
          src = ./.;
          cargoLock.lockFile = ./Cargo.lock;
          cargoBuildFlags = [ "-p" "cim-backup" ];
          # The integration tests spawn nats-server and moto_server; run them with scripts/test.
          doCheck = false;
          nativeBuildInputs = [ pkgs.cmake pkgs.perl pkgs.pkg-config ];
          meta = {
            description = "Backup, restore and CID-chain integrity checks for CIM event streams";
            mainProgram = "cim-backup";
          };
        };

        # Every `nix run .#<name>` of the runbook is a subcommand of the same binary.
        runbookCommands = [
          "serve"
          "backup-event-streams"
          "backup-status"
          "list-jobs"
          "list-backups"
          "verify-backup"
          "restore-events"
          "cancel-job"
          "check-data-integrity"
          "find-corruption-point"
          "restore-from-point"
          "replay-corrupted-events"
          "list-gpu-models"
          "backup-gpu-models"
          "verify-model-backup"
          "restore-gpu-model"
          "restore-all-models"
          "verify-model"
          "backup-checkpoint"
          "restore-checkpoint"
          "backup-prometheus"
          "restore-prometheus"
          "backup-nixos-config"
          "backup-grafana"
          "list-domains"
          "snapshot-projections"
          "list-projection-snapshots"
          "restore-projection-snapshot"
          "clear-projections"
          "replay-events"
          "replay-all-events"
          "rebuild-projections"
          "rebuild-all-projections"
          "export-domain-configs"
          "import-domain-configs"
          "restore-all-configs"
          "restore-deleted"
        ];
        app = command: {
          type = "app";
          program = "${pkgs.writeShellScript "cim-backup-${command}" ''
            exec ${cim-backup}/bin/cim-backup ${command} "$@"
          ''}";
        };
      in
      {
        packages.default = cim-backup;
        packages.cim-backup = cim-backup;

        apps = {
          default = { type = "app"; program = "${cim-backup}/bin/cim-backup"; };
        } // pkgs.lib.genAttrs runbookCommands app;

        devShells.default = pkgs.mkShell {
          packages = [
            pkgs.cargo
            pkgs.rustc
            pkgs.clippy
            pkgs.rustfmt
            pkgs.cargo-nextest
            pkgs.nats-server
            pkgs.natscli
            pkgs.python3Packages.moto
            pkgs.cmake
            pkgs.perl
          ];
        };
      });
}
