#!/usr/bin/env bash
# `make library-check`: the consumer library a subscriber depends on alone (`default-features =
# false, features = ["consumer"]`) has none of the HTTP stack in its dependency tree, builds, passes
# clippy and compiles the smallest consumer of docs/consumers.md; the domain alone (no feature) passes clippy.
# `make lint` runs it, so CI does.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo="${CARGO:-cargo}"

# The service's HTTP server and middleware, its tokens, and the bench's HTTP client.
forbidden=(axum tower-http jsonwebtoken hyper hyper-util http-body-util reqwest)

tree="$("$cargo" tree --locked -e normal --no-default-features --features consumer --prefix none --format '{p}')"
packages="$(awk '{print $1}' <<<"$tree" | sort -u)"
found=()
for package in "${forbidden[@]}"; do
	if grep -qx -- "$package" <<<"$packages"; then
		found+=("$package")
	fi
done
if ((${#found[@]})); then
	echo "feature consumer depends on ${found[*]}:" >&2
	for package in "${found[@]}"; do
		"$cargo" tree --locked -e normal --no-default-features --features consumer -i "$package" >&2
	done
	exit 1
fi

"$cargo" clippy --locked --no-default-features --features consumer --all-targets -- -D warnings
"$cargo" clippy --locked --no-default-features --all-targets -- -D warnings
"$cargo" build --locked --no-default-features --features consumer
# The smallest consumer of docs/consumers.md, compiled against the library alone.
"$cargo" test --doc --locked --no-default-features --features consumer
echo "library check: feature consumer has none of ${forbidden[*]}, builds, passes clippy and compiles the consumer of docs/consumers.md; the domain alone passes clippy"
