# fwp — build, test and demo entry points. `make help` lists them.
#
# Tests run in a release build with -enable-testing: the numeric core is far too slow in a
# debug build for training tests, and @testable imports still work.

SWIFT        ?= swift
TEST_FLAGS   := -c release -Xswiftc -enable-testing
PREFIX       ?= /usr/local
DESTDIR      ?=

.PHONY: help bootstrap build test demo stop install fixtures format clean

help:
	@echo "make demo       install what is missing, build, start fwpd, train the lm-bytes-small preset"
	@echo "                through it with live progress, then sample from the model"
	@echo "make stop       stop the fwpd that make demo started (it checkpoints running jobs)"
	@echo "make install    binaries, systemd unit, config and presets under PREFIX=$(PREFIX) (root)"
	@echo "make test       install what is missing, build, run the whole test suite"
	@echo "make fixtures   regenerate the float64 reference fixtures (needs python3 + numpy)"
	@echo "make format     format every Swift file with swift format (.swift-format); make test checks it"
	@echo "make build      release build of everything"

bootstrap:
	@scripts/bootstrap

build: bootstrap
	$(SWIFT) build -c release

test:
	scripts/bootstrap test
	scripts/format-check
	$(SWIFT) build $(TEST_FLAGS) --build-tests
	# buffers the core leaves uninitialised start as NaN in tests (see UninitializedMemory)
	FWP_POISON_UNINITIALIZED=1 $(SWIFT) test $(TEST_FLAGS) --skip-build
	# the core's tests again on the portable paths: every product on OpenBLAS, Swift element-wise loops
	FWP_POISON_UNINITIALIZED=1 FWP_SMALL_GEMM=0 FWP_DENSE_GEMM=0 FWP_VECTOR_KERNELS=0 $(SWIFT) test $(TEST_FLAGS) --skip-build --filter FWPCoreTests
	# on CPUs with AVX-512, the AVX2 versions of the kernels that have both (the first run used the AVX-512 ones),
	# and the dense layers' products back on OpenBLAS
	FWP_POISON_UNINITIALIZED=1 FWP_AVX512=0 $(SWIFT) test $(TEST_FLAGS) --skip-build --filter 'SmallGemmTests|DenseGemmTests|NativeVectorKernelTests|ChunkwiseKernelTests|EquivalenceTests'
	# on CPUs with AMX, the layers' products on its tiles (FWP_AMX=1; elsewhere the AVX-512 kernel again)
	FWP_POISON_UNINITIALIZED=1 FWP_AMX=1 $(SWIFT) test $(TEST_FLAGS) --skip-build --filter 'DenseGemmTests|NativeVectorKernelTests|EquivalenceTests|LayerGradientTests|TrainingTests'
	scripts/python-test
	scripts/browser-test

demo: build
	scripts/demo

stop:
	@if [ -f var/fwpd/fwpd.pid ]; then kill -TERM $$(cat var/fwpd/fwpd.pid) && echo "asked fwpd to stop"; else echo "no fwpd pid file in var/fwpd"; fi

install: build
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/fwpd/tasks $(DESTDIR)$(PREFIX)/share/fwpd/web $(DESTDIR)$(PREFIX)/share/doc/fwpd \
		$(DESTDIR)/etc/fwpd $(DESTDIR)/etc/systemd/system
	install -m 0755 .build/release/fwpd .build/release/fwpctl .build/release/fwp-task $(DESTDIR)$(PREFIX)/bin/
	install -m 0644 tasks/*.json $(DESTDIR)$(PREFIX)/share/fwpd/tasks/
	install -m 0644 web/* $(DESTDIR)$(PREFIX)/share/fwpd/web/
	install -m 0644 docs/*.md $(DESTDIR)$(PREFIX)/share/doc/fwpd/
	sed 's|/usr/local|$(PREFIX)|g' systemd/fwpd.service > $(DESTDIR)/etc/systemd/system/fwpd.service
	[ -e $(DESTDIR)/etc/fwpd/fwpd.toml ] || install -m 0644 etc/fwpd.toml $(DESTDIR)/etc/fwpd/fwpd.toml
	@if [ -z "$(DESTDIR)" ] && ! id fwpd >/dev/null 2>&1; then \
		useradd --system --no-create-home --home-dir /var/lib/fwpd --shell /usr/sbin/nologin fwpd && echo "created user fwpd"; fi
	@echo "installed; start with: systemctl daemon-reload && systemctl enable --now fwpd"

fixtures:
	python3 Tests/Reference/reference.py Tests/FWPCoreTests/Fixtures

format:
	$(SWIFT) format format --in-place --recursive --parallel Sources Tests Benchmarks Package.swift

clean:
	rm -rf .build
