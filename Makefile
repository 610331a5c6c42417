# fwp — build, test and demo entry points. `make help` lists them.
#
# Tests run in a release build with -enable-testing: the numeric core is far too slow in a
# debug build for training tests, and @testable imports still work.

SWIFT        ?= swift
TEST_FLAGS   := -c release -Xswiftc -enable-testing
DEMO_ARGS    ?=
PREFIX       ?= /usr/local

.PHONY: help bootstrap build test demo fixtures clean

help:
	@echo "make demo       install what is missing, build, train the lm-bytes-small preset, sample from it"
	@echo "make test       install what is missing, build, run the whole test suite"
	@echo "make fixtures   regenerate the float64 reference fixtures (needs python3 + numpy)"
	@echo "make build      release build of everything"

bootstrap:
	@scripts/bootstrap

build: bootstrap
	$(SWIFT) build -c release

test: bootstrap
	$(SWIFT) build $(TEST_FLAGS) --build-tests
	$(SWIFT) test $(TEST_FLAGS) --skip-build

demo: build
	.build/release/fwp-task run lm-bytes-small $(DEMO_ARGS)
	.build/release/fwp-task run generate --set max_tokens=200

fixtures:
	python3 Tests/Reference/reference.py Tests/FWPCoreTests/Fixtures

clean:
	rm -rf .build
