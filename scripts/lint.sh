#!/usr/bin/env bash
# The project's style and lint bar, run by CI (.ci/run) before the tests:
#   - rustfmt (rustfmt.toml: 100 columns), on the workspace and the fuzz workspace;
#   - clippy on every crate and target, warnings as errors.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

step "rustfmt"
cargo fmt --all --check
cargo fmt --manifest-path fuzz/Cargo.toml --all --check

step "clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
