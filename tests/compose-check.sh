#!/usr/bin/env bash
# `make compose-check` (and the end of `make test`): the development environment of
# docker-compose.yml works as the contract says. `make compose-up` starts it and waits until the
# service is ready; an order placed over HTTP comes back from the `events` subscriber's log
# (`docker-compose logs events`), the service's log answers `docker-compose logs order`, and
# `make compose-down` removes it all, volumes included, whatever happened before.
set -euo pipefail
cd "$(dirname "$0")/.."
make=make
compose=$("$make" -s --no-print-directory print-compose)
port=${COMPOSE_HTTP_PORT:-8081}

trap '"$make" --no-print-directory compose-down >/dev/null 2>&1 || true' EXIT
"$make" --no-print-directory compose-up

token="$("$make" -s --no-print-directory token ROLE=admin)"
order=$(curl -fsS -X POST "http://127.0.0.1:$port/api/v1/orders" \
	-H "Authorization: Bearer $token" -H 'Content-Type: application/json' -d '{
		"customer_id": "0190b7a4-5b1e-7c4e-9a51-1c2d3e4f5a6b",
		"items": [{"product_id": "0190b7a4-0000-7000-8000-000000000001", "quantity": 2, "unit_price": 100.00}],
		"shipping_address": {"street": "123 Main St", "city": "Bangkok", "postal_code": "10100", "country": "Thailand"}
	}')
number=$(echo "$order" | sed -n 's/.*"order_number":"\([^"]*\)".*/\1/p')
if [ -z "$number" ]; then
	echo "compose check: the order was not created: $order" >&2
	exit 1
fi

# The subscriber prints the order's order.created once the relay has published it.
for _ in $(seq 60); do
	if $compose logs --no-color events | grep -q "order.created .* $number "; then
		break
	fi
	sleep 1
done
if ! $compose logs --no-color events | grep -q "order.created .* $number "; then
	echo "compose check: the events subscriber never printed $number:" >&2
	$compose logs --no-color --tail 30 events order >&2
	exit 1
fi
if ! $compose logs --no-color order | grep -q "outbox relay started"; then
	echo "compose check: docker-compose logs order does not show the service's log" >&2
	exit 1
fi
"$make" --no-print-directory compose-down
trap - EXIT
if [ -n "$(docker ps -aq --filter "label=com.docker.compose.project=$(basename "$PWD" | tr -cd 'a-z0-9_-')")" ]; then
	echo "compose check: make compose-down left containers behind" >&2
	exit 1
fi
echo "compose check: make compose-up, an order to the events subscriber, docker-compose logs order, make compose-down"
