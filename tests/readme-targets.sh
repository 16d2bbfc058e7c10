#!/usr/bin/env bash
# `make readme-targets`: the targets the README's first steps name succeed on this checkout (CI runs
# it on a fresh clone): a token that looks like a JWT, schemas identical to the checked-in ones, the
# test image, lint. A script rather than recipe lines, so that `make -n readme-targets` only shows
# what would run.
set -euo pipefail
cd "$(dirname "$0")/.."
make=make

token="$("$make" -s --no-print-directory token ROLE=admin)"
if ! echo "$token" | grep -Eq '^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$'; then
	echo "make token did not print a token: $token" >&2
	exit 1
fi
"$make" --no-print-directory schemas
if ! git diff --exit-code --stat -- nats/schemas; then
	echo "make schemas changed nats/schemas: commit the regenerated files" >&2
	exit 1
fi
"$make" --no-print-directory nats-image
"$make" --no-print-directory lint
echo "readme targets: token, schemas, nats-image and lint succeed"
