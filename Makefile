# order-service: `make run` runs the service with its NATS server and a local SQLite file under
# ./data/, `make test` runs every test against a real nats-server. Both work on a fresh machine:
# what they need (the pinned nats-server, its test image) is installed here.

CARGO      ?= cargo
DATA       := data
DEV_SECRET := $(DATA)/dev-jwt-secret
DEV_NATS   := $(DATA)/dev-nats.env
ROLE       ?= admin

include nats/nats.mk

.PHONY: run test lint fmt schemas token build demo bench chromium ops-screenshot readme-targets library-check openapi schemathesis prometheus alert-rules

## run: NATS (./data/nats) and the service (http://localhost:8081, ./data/order-service.db);
## Ctrl-C stops both. NATS runs the shipped identities with the development passwords of
## data/dev-nats.env; the service connects as `order-service`.
run: $(DEV_SECRET) $(DEV_NATS) nats-server build
	@mkdir -p $(DATA)
	@set -a && . ./$(DEV_NATS) && set +a; \
	'$(NATS_SERVER)' -c nats/nats-server.conf & nats=$$!; \
	trap 'kill -INT $$nats 2>/dev/null; wait $$nats' EXIT; \
	trap 'exit 0' INT TERM; \
	AUTH_JWT_SECRET="$$(cat $(DEV_SECRET))" DATABASE_PATH="$${DATABASE_PATH:-$(DATA)/order-service.db}" \
		NATS_URL="$${NATS_URL:-nats://127.0.0.1:4222}" \
		NATS_USER="$${NATS_USER:-order-service}" NATS_PASSWORD="$${NATS_PASSWORD:-$$NATS_SERVICE_PASSWORD}" \
		./target/release/order-service serve

## demo: a throw-away NATS (./data/demo/nats, port DEMO_NATS_PORT), the service and three example
## consumers (inventory, notification, finance); drives a few orders through their life cycle over
## the HTTP API, prints the events and each consumer's effect, a summary, and stops everything.
DEMO_NATS_PORT ?= 4333
demo: nats-server build
	@rm -rf $(DATA)/demo && mkdir -p $(DATA)/demo
	@'$(NATS_SERVER)' -js -sd $(DATA)/demo/nats -a 127.0.0.1 -p $(DEMO_NATS_PORT) -l $(DATA)/demo/nats.log & nats=$$!; \
	trap 'kill $$nats 2>/dev/null; wait $$nats 2>/dev/null' EXIT; \
	RUST_LOG="$${RUST_LOG:-error}" NATS_URL=nats://127.0.0.1:$(DEMO_NATS_PORT) \
		./target/release/order-service demo --dir $(DATA)/demo

## test: unit and integration tests against a real nats-server: the local image in a container
## where a Docker engine answers (ORDER_SERVICE_TEST_NATS=container makes that mandatory), else
## the pinned binary as a process. nextest when installed (then `cargo test --doc` for the Rust
## code of the README, docs/ and the modules, which nextest does not run), cargo test otherwise.
## The operations page's browser tests need Chromium: chromium (or CHROMIUM_BIN) is installed
## when missing, and a browser that cannot start fails those tests; the alert test needs
## Prometheus, installed the same way (`prometheus`), and the rules' unit tests run first.
test: nats-server chromium schemathesis alert-rules
	@if docker info >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory nats-image; \
	elif [ "$${ORDER_SERVICE_TEST_NATS:-}" = container ]; then \
		echo "ORDER_SERVICE_TEST_NATS=container but no Docker engine answers" >&2; exit 1; \
	fi
	@export NATS_SERVER_BIN='$(NATS_SERVER)' CHROMIUM_BIN='$(CHROMIUM)' SCHEMATHESIS_BIN='$(SCHEMATHESIS)' \
		PROMETHEUS_BIN='$(PROMETHEUS)'; \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --locked --no-fail-fast && $(CARGO) test --doc --locked; \
	else \
		$(CARGO) test --locked --no-fail-fast; \
	fi
	@$(MAKE) --no-print-directory compose-check

## schemathesis: the property-based API tester of `make test`, pinned with its dependencies in
## tests/schemathesis-requirements.txt, installed from PyPI into the project-local virtualenv
## tools/schemathesis (again whenever that file changes).
SCHEMATHESIS_VENV := $(CURDIR)/tools/schemathesis
SCHEMATHESIS := $(SCHEMATHESIS_VENV)/bin/st
SCHEMATHESIS_REQUIREMENTS := tests/schemathesis-requirements.txt
schemathesis: $(SCHEMATHESIS_VENV)/requirements.txt
	@'$(SCHEMATHESIS)' --version

$(SCHEMATHESIS_VENV)/requirements.txt: $(SCHEMATHESIS_REQUIREMENTS)
	@echo 'installing $(SCHEMATHESIS_REQUIREMENTS) into $(SCHEMATHESIS_VENV)'
	@rm -rf '$(SCHEMATHESIS_VENV)'
	@python3 -m venv '$(SCHEMATHESIS_VENV)'
	@'$(SCHEMATHESIS_VENV)/bin/pip' install --quiet --disable-pip-version-check --no-deps \
		-r '$(SCHEMATHESIS_REQUIREMENTS)'
	@cp '$(SCHEMATHESIS_REQUIREMENTS)' '$@'

## chromium: the headless browser of the operations page's tests: Debian's `chromium` package,
## installed with apt-get when missing (CHROMIUM_BIN names another browser and skips the install).
CHROMIUM_BIN ?=
CHROMIUM := $(or $(CHROMIUM_BIN),chromium)
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
# Installs Debian's package $(1) with apt-get (options $(2)); fails when apt knows no such package.
apt_install = $(SUDO) apt-get update -q && \
	apt-cache policy $(1) | grep -q 'Candidate: [0-9]' && \
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(2) $(1)
chromium:
	@if command -v '$(CHROMIUM)' >/dev/null 2>&1; then \
		echo "chromium: $$(command -v '$(CHROMIUM)')"; \
	elif [ -n '$(CHROMIUM_BIN)' ]; then \
		echo 'CHROMIUM_BIN=$(CHROMIUM_BIN) is not a program' >&2; exit 1; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the operations page's browser tests"; \
		$(call apt_install,chromium); \
	else \
		echo "chromium is missing and there is no apt-get: install Chromium or set CHROMIUM_BIN" >&2; exit 1; \
	fi

## prometheus: Prometheus and promtool for the alert rules' tests: Debian's `prometheus` package,
## installed with apt-get when missing (PROMETHEUS_BIN and PROMTOOL_BIN name others and skip it).
## Only the binaries are used: the package's own service is not started here.
PROMETHEUS_BIN ?=
PROMTOOL_BIN ?=
PROMETHEUS := $(or $(PROMETHEUS_BIN),prometheus)
PROMTOOL := $(or $(PROMTOOL_BIN),promtool)
prometheus:
	@if command -v '$(PROMETHEUS)' >/dev/null 2>&1 && command -v '$(PROMTOOL)' >/dev/null 2>&1; then \
		echo "prometheus: $$(command -v '$(PROMETHEUS)'), promtool: $$(command -v '$(PROMTOOL)')"; \
	elif [ -n '$(PROMETHEUS_BIN)$(PROMTOOL_BIN)' ]; then \
		echo 'PROMETHEUS_BIN=$(PROMETHEUS_BIN) PROMTOOL_BIN=$(PROMTOOL_BIN): not both programs' >&2; exit 1; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's prometheus for the alert rules' tests"; \
		$(call apt_install,prometheus,--no-install-recommends); \
	else \
		echo "prometheus is missing and there is no apt-get: install it or set PROMETHEUS_BIN and PROMTOOL_BIN" >&2; exit 1; \
	fi

## alert-rules: the contract's alerts (nats/prometheus/alerts.yml) pass `promtool check rules` and
## their unit tests (nats/prometheus/alerts.test.yml: each alert firing and not firing).
alert-rules: prometheus
	@'$(PROMTOOL)' check rules nats/prometheus/alerts.yml
	@cd nats/prometheus && '$(PROMTOOL)' test rules alerts.test.yml

## ops-screenshot: regenerate nats/ops-page.png, the picture of /ops in docs/operations-page.md, with the browser
## test that fills every panel (a real service, SQLite file, nats-server and Chromium).
ops-screenshot: nats-server chromium
	@if docker info >/dev/null 2>&1; then $(MAKE) --no-print-directory nats-image; fi
	@NATS_SERVER_BIN='$(NATS_SERVER)' CHROMIUM_BIN='$(CHROMIUM)' \
		OPS_README_SCREENSHOT='$(CURDIR)/nats/ops-page.png' \
		$(CARGO) test --locked --test it -- ops_page::every_panel
	@echo "wrote nats/ops-page.png"

## lint: formatting, clippy and the documentation (`cargo doc --no-deps`: a broken link is an
## error), warnings are errors; then library-check
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	RUSTDOCFLAGS='-D warnings' $(CARGO) doc --locked --no-deps --all-features
	@$(MAKE) --no-print-directory library-check

## library-check: feature `consumer` (the library a subscriber depends on alone) has none of axum,
## tower-http, jsonwebtoken or the bench's hyper client in `cargo tree`, builds, passes clippy and
## compiles the smallest consumer of docs/consumers.md; the domain alone (no feature) passes clippy.
library-check:
	@CARGO='$(CARGO)' bash tests/library-check.sh

fmt:
	$(CARGO) fmt --all

## schemas: regenerate nats/schemas/<topic>.json from the event types
schemas:
	$(CARGO) run --locked -q --bin order-service -- schema --out nats/schemas

## openapi: regenerate nats/openapi.json, the HTTP API's OpenAPI 3.1 document, from the handlers
openapi:
	$(CARGO) run --locked -q --bin order-service -- openapi > nats/openapi.json.part && \
		mv nats/openapi.json.part nats/openapi.json

## token: print a token for the development secret, e.g. `make token ROLE=customer`
token: $(DEV_SECRET)
	@AUTH_JWT_SECRET="$$(cat $(DEV_SECRET))" $(CARGO) run --release --locked -q --bin order-service -- token --role $(ROLE)

build:
	$(CARGO) build --release --locked

## readme-targets: the targets the README's first steps name succeed (CI runs it on a fresh
## clone): a token that looks like a JWT, schemas identical to the checked-in ones, the image, lint.
readme-targets:
	@bash tests/readme-targets.sh

## bench: release build, then one run of src/bin/bench/: its own NATS and service on loopback,
## baselines A/B/C beside the end-to-end figures; prints a table, writes target/bench/latest.json.
## Under 3 minutes once built (a first release build takes longer).
bench: nats-server build
	@NATS_SERVER_BIN='$(NATS_SERVER)' ./target/release/bench

# Development passwords of the NATS identities (nats/identities.conf), generated once and kept,
# as `KEY=value` lines for `make run` to put into the server's and the service's environment.
# Subscribers use the second: `. ./data/dev-nats.env; NATS_USER=subscriber
# NATS_PASSWORD=$$NATS_SUBSCRIBER_PASSWORD ...`. The `dev-` prefix keeps each a string to the
# server's config parser, which would read an all-digit value as a number.
# NATS_ROUTE_PASSWORD is the cluster's routes' (nats/cluster/); a file made before it gets it
# added by `make cluster-up`.
$(DEV_NATS):
	@mkdir -p $(DATA)
	@umask 077 && for user in SERVICE SUBSCRIBER ROUTE; do \
		echo "NATS_$${user}_PASSWORD=dev-$$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"; \
	done > $@
	@echo "generated development NATS passwords in $@" >&2

# A development secret, generated once and kept (the message goes to stderr, so that
# `TOKEN=$$(make -s token)` gets only the token on a fresh clone): tokens stay valid across restarts.
$(DEV_SECRET):
	@mkdir -p $(DATA)
	@umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > $@
	@echo "generated a development JWT secret in $@" >&2

## service-image: order-service/service:local, the service for nats/cluster/compose.yaml: the
## release binary and the shared libraries `ldd` lists, in a FROM scratch image (no registry).
SERVICE_IMAGE := order-service/service:local
SERVICE_IMAGE_CONTEXT := target/service-image
service-image: build
	@rm -rf '$(SERVICE_IMAGE_CONTEXT)' && mkdir -p '$(SERVICE_IMAGE_CONTEXT)/rootfs'
	@cp target/release/order-service '$(SERVICE_IMAGE_CONTEXT)/rootfs/order-service'
	@ldd target/release/order-service | grep -o '/[^ ]*' | sort -u | \
		xargs -I{} cp --parents -L {} '$(SERVICE_IMAGE_CONTEXT)/rootfs/'
	@cp nats/cluster/service.Dockerfile '$(SERVICE_IMAGE_CONTEXT)/Dockerfile'
	docker build --quiet --tag '$(SERVICE_IMAGE)' '$(SERVICE_IMAGE_CONTEXT)'

## cluster-up: three JetStream nodes (nats/cluster/) and the service in containers on a private
## network; the service answers on http://127.0.0.1:8081 (CLUSTER_HTTP_PORT) with the development
## secret (`make token`). Waits until it is ready, then prints its streams. cluster-down stops it all and
## removes its volumes.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo 'docker compose' || echo docker-compose)
CLUSTER := $(COMPOSE) -f nats/cluster/compose.yaml -p order-service-cluster
# For the compose commands that start nothing: the file's required variables must still be set.
CLUSTER_UNUSED := AUTH_JWT_SECRET=unused NATS_SERVICE_PASSWORD=unused NATS_SUBSCRIBER_PASSWORD=unused NATS_ROUTE_PASSWORD=unused $(CLUSTER)
CLUSTER_READY_TIMEOUT ?= 60
CLUSTER_HTTP_PORT ?= 8081
export CLUSTER_HTTP_PORT
.PHONY: service-image cluster-up cluster-down
# The routes' TLS files (nats/cluster/node.conf): a CA and one route certificate for n1, n2, n3.
CLUSTER_TLS := $(DATA)/cluster-tls
$(CLUSTER_TLS)/route-cert.pem:
	@mkdir -p $(CLUSTER_TLS) && cd $(CLUSTER_TLS) && umask 077 && \
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca-key.pem \
		-out ca.pem -days 3650 -subj "/CN=order-service cluster CA" 2>/dev/null && \
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout route-key.pem \
		-out route.csr -subj "/CN=route" -addext "subjectAltName=DNS:n1,DNS:n2,DNS:n3" 2>/dev/null && \
	openssl x509 -req -in route.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
		-out route-cert.pem -days 3650 -copy_extensions copy 2>/dev/null && rm route.csr

cluster-up: $(DEV_SECRET) $(DEV_NATS) $(CLUSTER_TLS)/route-cert.pem nats-image service-image
	@grep -q '^NATS_ROUTE_PASSWORD=' $(DEV_NATS) || \
		echo "NATS_ROUTE_PASSWORD=dev-$$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" >> $(DEV_NATS)
	@set -a && . ./$(DEV_NATS) && set +a; AUTH_JWT_SECRET="$$(cat $(DEV_SECRET))" $(CLUSTER) up -d
	@# /ready shows its checks to an admin token only.
	@admin="$$(AUTH_JWT_SECRET="$$(cat $(DEV_SECRET))" ./target/release/order-service token --role admin)"; \
	ready() { curl -fsS -H "Authorization: Bearer $$admin" http://127.0.0.1:$(CLUSTER_HTTP_PORT)/ready 2>/dev/null | grep -q '"reconciled":true' && \
		curl -fsS -H "Authorization: Bearer $$admin" http://127.0.0.1:$(CLUSTER_HTTP_PORT)/ready | grep -q '"alive":true'; }; \
	for i in $$(seq $(CLUSTER_READY_TIMEOUT)); do ready && break; sleep 1; done; ready || \
		{ echo "the service is not ready after $(CLUSTER_READY_TIMEOUT)s:" >&2; \
		  $(CLUSTER_UNUSED) logs --tail 30 order >&2; exit 1; }
	@echo "order-service on the cluster: http://127.0.0.1:$(CLUSTER_HTTP_PORT) (NATS_URL inside: nats://n1:4222,nats://n2:4222,nats://n3:4222)"
	@$(CLUSTER_UNUSED) exec -T -e RUST_LOG=error order /order-service streams list

cluster-down:
	@$(CLUSTER_UNUSED) down --volumes

## compose-up: the development environment of docker-compose.yml (the contract's `docker-compose up`):
## one NATS node, the service (`order`, http://127.0.0.1:8081 or COMPOSE_HTTP_PORT, the
## development secret of `make token`) and `events`, a subscriber printing each new order; waits
## until the service is ready. `docker-compose logs -f order` follows the service.
## compose-down stops it all and removes its volumes.
DEV_COMPOSE := $(COMPOSE) -f docker-compose.yml
DEV_COMPOSE_ENV := $(DATA)/compose/order.env
COMPOSE_READY_TIMEOUT ?= 60
COMPOSE_HTTP_PORT ?= 8081
export COMPOSE_HTTP_PORT
.PHONY: compose-up compose-down compose-check print-compose
compose-up: $(DEV_COMPOSE_ENV) nats-image service-image
	@$(DEV_COMPOSE) up -d
	@ready() { curl -fsS http://127.0.0.1:$(COMPOSE_HTTP_PORT)/ready 2>/dev/null | grep -q '"status":"ready"'; }; \
	for i in $$(seq $(COMPOSE_READY_TIMEOUT)); do ready && break; sleep 1; done; ready || \
		{ echo "the service is not ready after $(COMPOSE_READY_TIMEOUT)s:" >&2; \
		  $(DEV_COMPOSE) logs --tail 30 order >&2; exit 1; }
	@echo "order-service: http://127.0.0.1:$(COMPOSE_HTTP_PORT) ($(COMPOSE) logs -f order; $(COMPOSE) logs -f events)"

compose-down: $(DEV_COMPOSE_ENV)
	@$(DEV_COMPOSE) down --volumes

## compose-check: compose-up, an order through to the `events` subscriber's log, compose-down
## (tests/compose-check.sh; `make test` runs it last).
compose-check:
	@bash tests/compose-check.sh

# The compose command this Makefile uses, for the check script.
print-compose:
	@echo '$(DEV_COMPOSE)'

# Each compose service's secrets, from the development ones, as its env_file: the nodes get both
# passwords, the service its own and the token secret, the subscriber its own.
$(DEV_COMPOSE_ENV): $(DEV_SECRET) $(DEV_NATS)
	@mkdir -p $(DATA)/compose
	@set -a && . ./$(DEV_NATS) && set +a; umask 077; \
	cp $(DEV_NATS) $(DATA)/compose/nats.env; \
	echo "NATS_PASSWORD=$$NATS_SUBSCRIBER_PASSWORD" > $(DATA)/compose/events.env; \
	printf 'NATS_PASSWORD=%s\nAUTH_JWT_SECRET=%s\n' "$$NATS_SERVICE_PASSWORD" "$$(cat $(DEV_SECRET))" > $@

## chaos: the long randomized fault campaign of tests/it/cluster/chaos/ (the cluster of the tests
## in Docker, the service as a process, three consumer groups as six processes of the example
## standby_subscriber): CHAOS_DURATION of load (30m) with a fault every CHAOS_FAULT_INTERVAL (8s:
## about 225 faults), then the history check; prints the seed first and a table at the end, and
## fails on a lost, duplicated, altered, reordered or dead event, a success missing from SQLite,
## or an event a group lost, applied twice or out of order, emitted twice or dead-lettered.
## CHAOS_SEED=<n> replays a schedule. `make test` runs the short campaign (90 s, every kind of
## fault once) without the consumer groups (CHAOS_SUBSCRIBERS=0) while their known defects are
## open (docs/cluster.md).
CHAOS_DURATION ?= 30m
CHAOS_SUBSCRIBERS ?= 1
CHAOS_FAULT_INTERVAL ?= 8s
CHAOS_SEED ?=
.PHONY: chaos
chaos: nats-server
	@$(MAKE) --no-print-directory nats-image
	@$(CARGO) build --locked --example standby_subscriber --features consumer
	@CHAOS_DURATION='$(CHAOS_DURATION)' CHAOS_SUBSCRIBERS='$(CHAOS_SUBSCRIBERS)' CHAOS_FAULT_INTERVAL='$(CHAOS_FAULT_INTERVAL)' \
		CHAOS_SEED='$(CHAOS_SEED)' \
		$(CARGO) nextest run --locked --profile chaos --test it cluster::chaos:: --no-capture
