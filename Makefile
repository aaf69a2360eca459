# vmsubst: one entry point. `make demo` and `make test` do every setup step
# themselves (packages, npm, guest kernel, builds) and are quick the second time.
SHELL := /bin/bash
.DEFAULT_GOAL := build
KVER = $(shell cat .cache/kver 2>/dev/null)
KDIR = /usr/src/linux-headers-$(KVER)

TS_SOURCES := $(shell find common/src agent/src host-signal/src test -name '*.ts' 2>/dev/null)

.PHONY: setup build kmod addon ts guest lint test test-flavours test-unit test-integration test-qemu test-libvirt \
	test-fleet test-packaging deb rpm collection packages debian-guest demo bench clean help

help:
	@echo "make demo    set up, boot a guest and perform a live substitution, narrated"
	@echo "make test    set up and run every suite (unit, integration, QEMU guest)"
	@echo "make bench   set up, run the benchmarks, rewrite docs/benchmarks.md (BENCH_ARGS=\"--only NAME\")"
	@echo "make build   build the module, the addon and the TypeScript"
	@echo "make deb     build vmsubst-agent and vmsubst-dkms .deb packages into build/packaging/deb"
	@echo "make rpm     the same two packages as .rpm into build/packaging/rpm"
	@echo "make collection  the Ansible collection vmsubst.fleet into build/packaging/ansible"

setup:
	@scripts/setup.sh

# Everything below needs setup first; the public targets run it, then recurse
# so that KVER is read after setup has resolved it.
build: setup
	@$(MAKE) --no-print-directory kmod addon ts

kmod:
	@$(MAKE) --no-print-directory -C kmod KDIR=$(KDIR)
	@$(MAKE) --no-print-directory -C kmod tests

# One addon per side: the guest agent's (agent/native) and the host CLI's
# (host-signal/native: compare, seek, vsock connect), which compiles the glue
# they share (errors, argument checks, streams) from agent/native/glue.
HOST_ADDON := host-signal/build/Release/vmsubst_host.node
SHARED_GLUE := agent/native/native.h agent/native/vsock.c $(addprefix agent/native/glue/,glue.h args.cc errors.cc stream.cc)
addon: agent/build/Release/vmsubst_native.node $(HOST_ADDON)
agent/build/Release/vmsubst_native.node: agent/binding.gyp $(wildcard agent/native/* agent/native/glue/*) kmod/include/uapi/linux/vmsubst.h
	cd agent && npm_config_nodedir=/usr ../node_modules/.bin/node-gyp rebuild --loglevel=warn >/dev/null
$(HOST_ADDON): host-signal/binding.gyp $(wildcard host-signal/native/* host-signal/native/glue/*) $(SHARED_GLUE)
	cd host-signal && npm_config_nodedir=/usr ../node_modules/.bin/node-gyp rebuild --loglevel=warn >/dev/null

# The vmsubst command runs from an esbuild bundle: node loads it in a fraction of the
# time the ~400 modules of the compiled tree take (docs/benchmarks.md, "Diff"). One CommonJS
# file (vmsubst-cli.cjs), run by a small launcher (vmsubst.mjs, cli/launch.ts) with V8's code
# cache of the command (cli/code-cache.ts): ES modules have none in node 20. The caches are made
# by running each command once (scripts/train-code-cache.mjs) and carry the bundle's build id,
# its first line, so that a rebuilt bundle never runs with an old cache. The commands' modules
# still load only when the command runs (the dynamic imports of cli/commands/index.ts become
# lazy initializers), so `vmsubst diff` evaluates neither the schemas nor ajv. All of it sits
# beside the compiled CLI so that relative paths (the host addon, package.json) hold.
CLI_BUNDLE := build/host-signal/src/cli/vmsubst.mjs
# The agent's validators, precompiled the same way (validators/ beside main.js; packaged with it).
AGENT_VALIDATORS := build/agent/src/validators/.stamp
ts: build/.tsc-stamp $(CLI_BUNDLE) $(AGENT_VALIDATORS)
# The list of sources as a file that changes when one is added, moved or removed
# (a move keeps the file's old mtime, which alone would not trigger a build).
TS_LIST := build/.ts-sources
$(shell mkdir -p build; echo '$(sort $(TS_SOURCES))' | cmp -s - $(TS_LIST) || echo '$(sort $(TS_SOURCES))' > $(TS_LIST))
build/.tsc-stamp: $(TS_SOURCES) $(TS_LIST) tsconfig.json tsconfig.base.json common/tsconfig.json package-lock.json
	@# compiled tests whose source moved or went away would still run: drop them
	@find build/test -name '*.test.js' 2>/dev/null | while read -r f; do s=$${f#build/}; [ -f "$${s%.js}.ts" ] || rm -f "$$f" "$$f.map"; done
	node_modules/.bin/tsc -b tsconfig.json
	@touch $@
# The JSON-schema validators the CLI uses are precompiled (ajv standalone code), one file per
# schema in validators/ beside it, loaded when first used: compiling them at run time cost every
# apply a few hundred milliseconds.
CLI_VALIDATORS := build/host-signal/src/cli/validators
$(CLI_BUNDLE): build/.tsc-stamp scripts/precompile-validators.mjs scripts/train-code-cache.mjs
	rm -f $(dir $@)vmsubst-*.mjs $(dir $@)vmsubst-cli.cjs
	rm -rf $(CLI_VALIDATORS) && node scripts/precompile-validators.mjs $(CLI_VALIDATORS) build/host-signal/src
	id=$$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n') && \
	node_modules/.bin/esbuild build/host-signal/src/cli.js --bundle --platform=node --format=cjs --target=node20 \
	  --outfile=$(dir $@)vmsubst-cli.cjs --log-level=warning --define:import.meta.url=__vmsubstModuleUrl --minify-whitespace \
	  --banner:js="// vmsubst build $$id"$$'\n"use strict";\n''var __vmsubstModuleUrl = require("node:url").pathToFileURL(__filename).href;'
	node_modules/.bin/esbuild build/host-signal/src/cli/launch.js --bundle --platform=node --format=esm --target=node20 \
	  --outfile=$@ --log-level=warning \
	  --banner:js='#!/usr/bin/env -S -u NODE_EXTRA_CA_CERTS VMSUBST_NODE_EXTRA_CA_CERTS=$${NODE_EXTRA_CA_CERTS} node'
	@chmod +x $@
	node scripts/train-code-cache.mjs $(dir $@)
$(AGENT_VALIDATORS): build/.tsc-stamp scripts/precompile-validators.mjs
	rm -rf $(dir $@) && node scripts/precompile-validators.mjs $(dir $@) build/agent/src/config.js build/agent/src/session.js
	@touch $@

guest: build/guest/initramfs.cpio build/disks/base.img build/disks/stress-a.img build/disks/xfs-base.img build/disks/libvx-v1.img
build/guest/initramfs.cpio: build/.tsc-stamp $(AGENT_VALIDATORS) agent/build/Release/vmsubst_native.node $(HOST_ADDON) kmod/vmsubst.ko kmod/tests/abi_test test/guest/init test/guest/build-initramfs.sh .cache/kver
	@mkdir -p build/guest
	test/guest/build-initramfs.sh $(KVER) $@
build/disks/base.img: test/fixtures/build-disks.sh test/fixtures/vprog.c
	test/fixtures/build-disks.sh build/disks
build/disks/xfs-base.img: test/fixtures/build-fs-disks.sh build/disks/base.img
	test/fixtures/build-fs-disks.sh build/disks
build/disks/libvx-v1.img: test/fixtures/build-libvx-disks.sh test/fixtures/libvx.c test/fixtures/vxprog.c
	test/fixtures/build-libvx-disks.sh build/disks
build/disks/stress-a.img: test/fixtures/build-stress-disks.sh test/fixtures/stress.c test/fixtures/vprog.c kmod/include/uapi/linux/vmsubst.h
	test/fixtures/build-stress-disks.sh build/disks

# The Debian guest image of the packaging suite (debootstrap: mostly download and
# unpack) is built in the background while the other suites run.
test: setup
	@$(MAKE) --no-print-directory kmod addon ts guest
	@mkdir -p build && rm -f build/debian-guest.rc && \
	  ( $(MAKE) --no-print-directory debian-guest > build/debian-guest.log 2>&1; echo $$? > build/debian-guest.rc ) &
	@rc=0; $(MAKE) -k --no-print-directory lint test-flavours test-unit test-integration test-qemu test-libvirt test-fleet || rc=1; \
	  while [ ! -f build/debian-guest.rc ]; do sleep 5; done; \
	  if [ "$$(cat build/debian-guest.rc)" != 0 ]; then echo "the Debian guest image failed to build (build/debian-guest.log):"; tail -n 40 build/debian-guest.log; exit 1; fi; \
	  $(MAKE) --no-print-directory test-packaging || rc=1; exit $$rc

# Style: eslint (typescript-eslint, and the rule that host and guest share code only
# through @vmsubst/common), prettier for the TypeScript, the kernel's clang-format for kmod/,
# pycodestyle and pyflakes for the Ansible collection's Python.
lint:
	node_modules/.bin/eslint --max-warnings 0 common/src agent/src host-signal/src test
	node_modules/.bin/prettier --check --log-level warn 'common/src/**/*.ts' 'agent/src/**/*.ts' 'host-signal/src/**/*.ts' 'test/**/*.ts'
	@$(MAKE) --no-print-directory -C kmod format-check
	clang-format --dry-run --Werror agent/native/*.[ch] host-signal/native/*.[ch]
	@# the Ansible collection's Python (ansible/): compiles, pep8 (Ansible's conventions), pyflakes
	python3 -c 'import sys; [compile(open(f).read(), f, "exec") for f in sys.argv[1:]]' ansible/plugins/*/*.py
	pycodestyle --max-line-length 120 --ignore E402,W503 ansible
	pyflakes3 ansible

test-flavours:
	@$(MAKE) --no-print-directory -C kmod check-flavours

test-unit:
	scripts/uvu.sh build/test/unit '\.test\.js$$'
test-integration:
	scripts/uvu.sh build/test/integration '\.test\.js$$'
test-qemu:
	scripts/uvu.sh build/test/qemu '\.test\.js$$'
# A libvirtd of its own (test/helpers/libvirt.ts) and TCG domains of the test guest.
test-libvirt:
	scripts/uvu.sh build/test/libvirt '\.test\.js$$'
# ansible-playbook over three local "hypervisor hosts" with firmware-only QEMU VMs.
test-fleet: collection
	scripts/uvu.sh build/test/fleet '\.test\.js$$'

# Packages (packaging/): built from the compiled tree, so `make build` first.
deb: setup
	@$(MAKE) --no-print-directory addon ts
	@rm -rf build/packaging/deb && packaging/build-deb.sh build/packaging/deb
rpm: setup
	@$(MAKE) --no-print-directory addon ts
	@rm -rf build/packaging/rpm && packaging/build-rpm.sh build/packaging/rpm
# The Ansible collection vmsubst.fleet (ansible/), as the tarball users install.
collection:
	@rm -rf build/packaging/ansible && mkdir -p build/packaging/ansible
	ansible-galaxy collection build ansible --output-path build/packaging/ansible >/dev/null
packages: deb rpm collection

# The Debian 12 guest the packaging suite installs into (debootstrap, cached in
# .cache/debian-guest). When it cannot be built here (exit 3: no debootstrap, no
# mirror) the reason is kept there and the suite reports itself skipped; any
# other failure fails the build.
debian-guest:
	@rc=0; test/guest/build-debian-image.sh $(KVER) .cache/debian-guest || rc=$$?; [ $$rc = 0 ] || [ $$rc = 3 ]

test-packaging: packages
	@$(MAKE) --no-print-directory debian-guest
	scripts/uvu.sh build/test/packaging '\.test\.js$$'

demo: setup
	@$(MAKE) --no-print-directory kmod addon ts guest
	@node build/test/demo/demo.js

# The headline benchmark boots the packaging suite's Debian image with this tree's .debs.
bench: setup
	@$(MAKE) --no-print-directory kmod addon ts guest deb debian-guest
	@node build/test/bench/bench.js $(BENCH_ARGS)

clean:
	rm -rf build agent/build host-signal/build common/dist common/tsconfig.tsbuildinfo
	-$(MAKE) -C kmod clean
