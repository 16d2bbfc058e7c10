# order-service: `make run` runs the service on a local SQLite file under ./data/, `make test`
# runs every test. Both work on a fresh machine: what they need is installed here.

CARGO      ?= cargo
DATA       := data
DEV_SECRET := $(DATA)/dev-jwt-secret
ROLE       ?= admin

.PHONY: run test lint fmt schemas token build

## run: the service on http://localhost:8081 with ./data/order-service.db
run: $(DEV_SECRET)
	AUTH_JWT_SECRET="$$(cat $(DEV_SECRET))" DATABASE_PATH="$${DATABASE_PATH:-$(DATA)/order-service.db}" \
		$(CARGO) run --release --locked -- serve

## test: unit and integration tests (nextest when installed, cargo test otherwise)
test:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --locked --no-fail-fast; \
	else \
		$(CARGO) test --locked --no-fail-fast; \
	fi

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## schemas: regenerate nats/schemas/<topic>.json from the event types
schemas:
	$(CARGO) run --locked -q -- schema --out nats/schemas

## token: print a token for the development secret, e.g. `make token ROLE=customer`
token: $(DEV_SECRET)
	@AUTH_JWT_SECRET="$$(cat $(DEV_SECRET))" $(CARGO) run --release --locked -q -- token --role $(ROLE)

build:
	$(CARGO) build --release --locked

# A development secret, generated once and kept: tokens stay valid across restarts.
$(DEV_SECRET):
	@mkdir -p $(DATA)
	@umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > $@
	@echo "generated a development JWT secret in $@"
