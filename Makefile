# dotproxy: DNS-over-TLS forwarder, one C file, static musl + BearSSL 0.6.
#
# Targets (the less common ones are described in their sections below)
#   make               build ./dotproxy (fetches and builds BearSSL 0.6 on first use)
#   make run           build, then run ./dotproxy $(ARGS) (port 53 needs root)
#   make test, check   build, run the C unit tests (tests/unit) and pytest (tests/)
#   make unit, pytest  build and run the C unit tests only, or pytest only
#   make bearssl       fetch BearSSL 0.6 into bearssl/ only
#   make deps          install/check what building needs (.ci/deps.sh build)
#   make clean         remove build outputs; keeps the fetched bearssl/ and musl (build/musl-*)
#   make distclean     clean, and remove bearssl/ and build/ too
#   bench chaos cross test-cross test-initramfs test-image fuzz fuzz-build test-asan test-valgrind
#
# Variables (command line or environment)
#   CC, CFLAGS, CPPFLAGS, LDFLAGS  target compiler and flags (default: musl-gcc, static, -Os)
#   AR                             archiver for libbearssl.a (default: ar)
#   HOSTCC, HOSTAR, HOST_CFLAGS    host compiler for brssl, which only runs at build time
#   TARGET                         name of the per-compiler BearSSL build dir (default: from CC)
#   ANCHORS                        PEM file of the trust anchors built in (default: anchors.pem)
#   BEARSSL_FROM                   tarball | debian | dir: force one way of fetching BearSSL
#                                  (default: BEARSSL_SRC if given, else tarball, else debian)
#   BEARSSL_SRC                    an unpacked BearSSL 0.6 tree to copy into bearssl/
#   BEARSSL_TARBALL, BEARSSL_URL   a downloaded bearssl-0.6.tar.gz, or where to download it
#   SOURCE_DATE_EPOCH              build time stamp (default: last commit of dotproxy.c and
#                                  anchors.pem, or their newest mtime outside git)
#   VERSION                        version string compiled in
#   V=1                            show the full BearSSL compile commands
#
# Here: building and the tests. In .ci/, shell scripts: fetch.sh (BearSSL and musl, with their
# pinned SHA-256), deps.sh (packages), cross.sh (musl cross toolchains), fuzz.sh (make fuzz).
# Needs GNU make.

VERSION ?= 0.1.0

ifeq ($(origin CC),default)
CC := musl-gcc
endif
HOSTCC      ?= gcc
HOSTAR      ?= ar
HOST_CFLAGS ?= -O1
# No unwind tables (nothing here unwinds: C, no exceptions): about 10 KB less.
NO_UNWIND   := -fno-asynchronous-unwind-tables -fno-unwind-tables
CFLAGS      ?= -Os -std=c99 -Wall -Wextra -Werror -ffunction-sections -fdata-sections $(NO_UNWIND)
# No RELRO: musl's static start-up never applies PT_GNU_RELRO (the segment stays rw-p in
# /proc/PID/maps), so its page alignment was 2 KB of padding and no protection.
LDFLAGS     ?= -static -Wl,--gc-sections -Wl,-z,noseparate-code -Wl,-z,norelro \
               -Wl,--build-id=none -s
PYTHON      ?= /usr/bin/python3
ANCHORS     ?= anchors.pem

# BearSSL: fetched into bearssl/ (never committed) by .ci/fetch.sh, built once per compiler.
BEARSSL_CFLAGS   ?= -Os -ffunction-sections -fdata-sections $(NO_UNWIND)
BEARSSL_CPPFLAGS ?=
export BEARSSL_FROM BEARSSL_SRC BEARSSL_TARBALL BEARSSL_URL MUSL_SRC MUSL_TARBALL

space := $(subst ,, )
TARGET        ?= $(subst $(space),_,$(strip $(notdir $(CC))))
BEARSSL_BUILD ?= bearssl/build/$(TARGET)
BEARSSL_LIB   := $(BEARSSL_BUILD)/libbearssl.a
HOST_BUILD    ?= bearssl/build/host
HOST_LIB      := $(HOST_BUILD)/libbearssl.a
BRSSL         := $(HOST_BUILD)/brssl

# Build time stamp, computed once and only when used: SOURCE_DATE_EPOCH if set; else the
# last commit touching dotproxy.c/anchors.pem when both are committed and unmodified (so a
# fresh clone builds the same binary); else the newest mtime of the two.
EPOCH_FILES := dotproxy.c anchors.pem
epoch_sh = if git ls-files --error-unmatch $(EPOCH_FILES) >/dev/null 2>&1 && \
	git diff --quiet HEAD -- $(EPOCH_FILES) 2>/dev/null; then git log -1 --format=%ct -- $(EPOCH_FILES); \
	else for f in $(EPOCH_FILES); do [ -e "$$f" ] && stat -c %Y "$$f"; done | sort -n | tail -n 1; fi
ifneq ($(SOURCE_DATE_EPOCH),)
BUILD_EPOCH := $(SOURCE_DATE_EPOCH)
else
BUILD_EPOCH = $(eval BUILD_EPOCH := $(or $(shell $(epoch_sh)),0))$(BUILD_EPOCH)
endif

DEFS     = -DDOTPROXY_VERSION='"$(VERSION)"' -DDOTPROXY_BUILD_EPOCH=$(BUILD_EPOCH)
INCLUDES := -Ibearssl/inc

# Shell-quote one make value: 'it'\''s'.
sq = '$(subst ','\'',$(1))'
# Stamp file $@ holding $(1), rewritten only when that changes, so that changing a flag, the
# compiler or ANCHORS rebuilds what depends on it (the same trick as git's GIT-CFLAGS).
stamp = @mkdir -p $(@D); v=$(call sq,$(1)); [ "$$(cat $@ 2>/dev/null)" = "$$v" ] || printf '%s\n' "$$v" > $@

ifeq ($(V),1)
Q   :=
say := @:
else
Q   := @
say := @echo
endif

.PHONY: all run bearssl deps test check unit pytest bench chaos clean distclean FORCE \
	cross test-cross test-initramfs test-image cross-prepare clean-cross distclean-cross \
	fuzz fuzz-build test-asan test-valgrind
.DELETE_ON_ERROR:

all: dotproxy

# ---------------------------------------------------------------------------- dotproxy
# deps runs once per make invocation (sub-makes are told it already ran).
deps:
ifneq ($(DEPS_CHECKED),1)
	@sh .ci/deps.sh build
endif

# The binary and its flags stamp: ./dotproxy and .dotproxy.flags; with CROSS_ARCH=<arch>
# (make cross), dotproxy-<arch> and build/dotproxy-<arch>.flags.
BIN       := dotproxy$(CROSS_ARCH:%=-%)
BIN_FLAGS := $(if $(CROSS_ARCH),build/$(BIN).flags,.dotproxy.flags)
$(BIN_FLAGS): FORCE
	$(call stamp,$(CC) $(CPPFLAGS) $(DEFS) $(CFLAGS) $(LDFLAGS) $(BEARSSL_LIB))
.anchors.stamp: FORCE
	$(call stamp,$(ANCHORS))

$(BIN): dotproxy.c anchors.inc $(BEARSSL_LIB) $(BIN_FLAGS) | deps
	$(CC) $(CPPFLAGS) $(DEFS) $(INCLUDES) $(CFLAGS) -o $@ dotproxy.c $(BEARSSL_LIB) $(LDFLAGS)
	@echo "$@: $$(wc -c < $@) bytes stripped"

# The README's first command: build, then serve on port 53 with the default upstreams
# (Cloudflare) or ARGS, e.g. make run ARGS='-u 9.9.9.9'.
run: dotproxy
	./dotproxy $(ARGS)

# brssl ta turns the PEM roots into C: static const br_x509_trust_anchor TAs[TAs_NUM].
# Text outside BEGIN/END lines (the '#' comments in anchors.pem) is ignored by its reader.
anchors.inc: $(ANCHORS) .anchors.stamp $(BRSSL)
	$(say) "  TA      $(ANCHORS) -> $@"
	$(Q){ echo '/* Generated by "brssl ta $(ANCHORS)" (make anchors.inc): do not edit. */'; \
	  $(BRSSL) ta -q $(call sq,$(ANCHORS)); } > $@.tmp
	$(Q)grep -q '^#define TAs_NUM  *[1-9]' $@.tmp || { echo "$(ANCHORS): no trust anchors" >&2; rm -f $@.tmp; exit 1; }
	$(Q)mv -f $@.tmp $@
	@echo "anchors.inc: $$(sed -n 's/^#define TAs_NUM  *//p' $@) trust anchors from $(ANCHORS)"

# ---------------------------------------------------------------------------- BearSSL
# .ci/fetch.sh writes bearssl/.source (how it was fetched) last, once bearssl/ is complete.
bearssl: bearssl/.source
	@echo "bearssl: bearssl/ is ready (from $$(cat bearssl/.source))"
bearssl/.source: | deps
	@sh .ci/fetch.sh bearssl

# The source list is only known once bearssl/ exists. Before that, fetch it and run make
# again for the library/tool, which then sees the sources.
BEARSSL_SRCS := $(wildcard bearssl/src/*.c bearssl/src/*/*.c)
ifeq ($(BEARSSL_SRCS),)
$(BEARSSL_LIB) $(BRSSL): bearssl/.source
	@$(MAKE) --no-print-directory DEPS_CHECKED=1 $@
else
BEARSSL_OBJS := $(patsubst bearssl/src/%.c,$(BEARSSL_BUILD)/obj/%.o,$(BEARSSL_SRCS))
HOST_OBJS    := $(patsubst bearssl/src/%.c,$(HOST_BUILD)/obj/%.o,$(BEARSSL_SRCS))
BRSSL_OBJS   := $(patsubst bearssl/tools/%.c,$(HOST_BUILD)/tools/%.o,$(wildcard bearssl/tools/*.c))

$(BEARSSL_BUILD)/.flags: FORCE
	$(call stamp,$(CC) $(BEARSSL_CPPFLAGS) $(BEARSSL_CFLAGS))
$(HOST_BUILD)/.flags: FORCE
	$(call stamp,$(HOSTCC) $(HOST_CFLAGS))

# Target library: every BearSSL source, compiled for size; --gc-sections drops the rest.
$(BEARSSL_BUILD)/obj/%.o: bearssl/src/%.c $(BEARSSL_BUILD)/.flags bearssl/.source | deps
	@mkdir -p $(@D)
	$(say) "  CC      $< [$(TARGET)]"
	$(Q)$(CC) $(BEARSSL_CPPFLAGS) -Ibearssl/inc -Ibearssl/src $(BEARSSL_CFLAGS) -c -o $@ $<

$(BEARSSL_LIB): $(BEARSSL_OBJS)
	@rm -f $@
	$(say) "  AR      $@"
	$(Q)$(AR) rcs $@ $^
# Host library and brssl: only run at build time (brssl ta), so plain HOSTCC.
$(HOST_BUILD)/obj/%.o: bearssl/src/%.c $(HOST_BUILD)/.flags bearssl/.source | deps
	@mkdir -p $(@D)
	$(say) "  HOSTCC  $<"
	$(Q)$(HOSTCC) -Ibearssl/inc -Ibearssl/src $(HOST_CFLAGS) -c -o $@ $<
$(HOST_BUILD)/tools/%.o: bearssl/tools/%.c $(HOST_BUILD)/.flags bearssl/.source | deps
	@mkdir -p $(@D)
	$(say) "  HOSTCC  $<"
	$(Q)$(HOSTCC) -Ibearssl/inc -Ibearssl/tools $(HOST_CFLAGS) -c -o $@ $<
$(HOST_LIB): $(HOST_OBJS)
	@rm -f $@
	$(say) "  AR      $@"
	$(Q)$(HOSTAR) rcs $@ $^
$(BRSSL): $(BRSSL_OBJS) $(HOST_LIB)
	$(say) "  HOSTLD  $@"
	$(Q)$(HOSTCC) $(HOST_CFLAGS) -o $@ $(BRSSL_OBJS) $(HOST_LIB)
endif

# ---------------------------------------------------------------------------- tests
tests/unit: tests/unit.c dotproxy.c anchors.inc $(BEARSSL_LIB) .dotproxy.flags $(wildcard tests/*.h) | deps
	$(CC) $(CPPFLAGS) $(DEFS) -DDOTPROXY_NO_MAIN= -Itests -I. $(INCLUDES) $(CFLAGS) \
		-o $@ tests/unit.c $(BEARSSL_LIB) $(filter-out -s,$(LDFLAGS))

unit: tests/unit
	./tests/unit
pytest: dotproxy
	@sh .ci/deps.sh test
	DOTPROXY=$(CURDIR)/dotproxy $(PYTHON) -m pytest -q tests

test:
	@sh .ci/deps.sh test
	@$(MAKE) --no-print-directory DEPS_CHECKED=1 dotproxy tests/unit
	./tests/unit
	@$(MAKE) --no-print-directory DEPS_CHECKED=1 pytest
check: test

# make bench, make chaos: benchmark and chaos run, not tests (bench/README.md: their variables).
CHAOS_SECONDS ?= 60
CHAOS_QPS     ?= 2000
bench: dotproxy
	sh bench/run.sh
chaos: dotproxy
	CHAOS_SECONDS=$(call sq,$(CHAOS_SECONDS)) CHAOS_QPS=$(call sq,$(CHAOS_QPS)) sh tests/chaos/run.sh

# ---------------------------------------------------------------------------- cross, initramfs
# make cross: static musl binaries dotproxy-<arch> for CROSS_ARCHES (aarch64 armhf mips mipsel):
# .ci/cross.sh builds musl for each with Debian's cross compiler into build/musl-<arch>/ (from
# MUSL_SRC, MUSL_TARBALL or Debian's source package), then make runs itself again with that
# musl-gcc and CROSS_ARCH=<arch>, BearSSL built for it as usual. make test-cross runs each binary under
# qemu-user, make test-initramfs boots ./dotproxy in an initramfs under qemu-system-x86_64.
CROSS_ARCHES ?= aarch64 armhf mips mipsel
CROSS_BINS   := $(addprefix dotproxy-,$(CROSS_ARCHES))

cross: $(CROSS_BINS)
	@for f in $(CROSS_BINS); do printf '%-18s %7s bytes  %s\n' "$$f" "$$(wc -c < $$f)" \
		"$$(file -b $$f 2>/dev/null | cut -d, -f1-2)"; done
# Cross packages and musl's source, once, before the toolchains (side by side under make -j).
cross-prepare:
	@sh .ci/cross.sh source $(CROSS_ARCHES)

ifeq ($(CROSS_ARCH),)
$(CROSS_BINS): dotproxy-%: FORCE | cross-prepare
	@MAKE='$(MAKE)' sh .ci/cross.sh toolchain $*
	@$(MAKE) --no-print-directory DEPS_CHECKED=1 CROSS_ARCH=$* CC=$(CURDIR)/build/musl-$*/bin/musl-gcc \
		AR=$$(sh .ci/cross.sh triplet $*)-ar TARGET=cross-$* $@
endif

test-cross:
	@sh .ci/deps.sh test
	@sh .ci/deps.sh cross
	@$(MAKE) --no-print-directory DEPS_CHECKED=1 dotproxy cross
	DOTPROXY=$(CURDIR)/dotproxy DOTPROXY_CROSS=1 $(PYTHON) -m pytest -q tests/test_cross.py
test-initramfs:
	@sh .ci/deps.sh test
	@sh .ci/deps.sh initramfs
	@$(MAKE) --no-print-directory DEPS_CHECKED=1 dotproxy
	DOTPROXY=$(CURDIR)/dotproxy DOTPROXY_INITRAMFS=1 $(PYTHON) -m pytest -q tests/test_initramfs.py
# make test-image: the Dockerfile built with buildah for linux/amd64, linux/arm64 and linux/arm/v7
# (cross-compiled, never emulated), a manifest list of the three, checked offline
# (tests/test_image.py; its cache is build/image/).
test-image:
	@sh .ci/deps.sh test
	@sh .ci/deps.sh image
	DOTPROXY_IMAGE=1 $(PYTHON) -m pytest -q tests/test_image.py

# ---------------------------------------------------------------------------- fuzz, sanitizers
# make fuzz            the libFuzzer harnesses tests/fuzz/fuzz_*.c (clang, ASan + UBSan, host BearSSL)
#                      built into build/fuzz/ (make fuzz-build), then .ci/fuzz.sh: each replays its
#                      regression inputs, then fuzzes FUZZ_SECONDS from its corpus (tests/fuzz/README.md)
# make test-asan       tests/unit and pytest against clang ASan/UBSan builds (DOTPROXY_SANITIZED=1:
#                      tests that need the static binary skip); a report in build/asan/ fails it. No
#                      leak check: nothing is freed on purpose (tests/fuzz/README.md)
# make test-valgrind   build/dotproxy-host (gcc -g -O1, glibc) under valgrind (tests/test_valgrind.py)
FUZZ_CC        ?= clang
SAN_CC         ?= clang
FUZZ_SECONDS   ?= 60
FUZZ_HARNESSES ?= fuzz_query fuzz_tcp fuzz_answer fuzz_specs fuzz_cert fuzz_http
PYTEST_ARGS    ?=
FUZZ_FLAGS     := -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
                  -fno-sanitize-recover=undefined
SAN_FLAGS      := -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined \
                  -fno-sanitize-recover=undefined
SAN_ENV         = ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:log_path=$(CURDIR)/build/asan/asan \
                  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$(CURDIR)/build/asan/ubsan

fuzz-build: $(addprefix build/fuzz/,$(FUZZ_HARNESSES))
build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_util.h tests/dnsmsg.h dotproxy.c anchors.inc $(HOST_LIB) | deps
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_FLAGS) -std=c99 $(DEFS) -I. $(INCLUDES) -o $@ $< $(HOST_LIB)
fuzz: fuzz-build
	@FUZZ_SECONDS=$(call sq,$(FUZZ_SECONDS)) FUZZ_DIR=build/fuzz sh .ci/fuzz.sh $(FUZZ_HARNESSES)

build/dotproxy-asan: dotproxy.c anchors.inc $(HOST_LIB) | deps
	@mkdir -p $(@D)
	$(SAN_CC) $(SAN_FLAGS) -std=c99 -Wall $(DEFS) $(INCLUDES) -o $@ dotproxy.c $(HOST_LIB)
build/unit-asan: tests/unit.c dotproxy.c anchors.inc $(HOST_LIB) $(wildcard tests/*.h) | deps
	@mkdir -p $(@D)
	$(SAN_CC) $(SAN_FLAGS) -std=c99 $(DEFS) -DDOTPROXY_NO_MAIN= -Itests -I. $(INCLUDES) \
		-o $@ tests/unit.c $(HOST_LIB)

# The same code built the ordinary way for glibc (valgrind knows glibc best).
build/dotproxy-host: dotproxy.c anchors.inc $(HOST_LIB) | deps
	@mkdir -p $(@D)
	$(HOSTCC) -g -O1 -std=c99 $(DEFS) $(INCLUDES) -o $@ dotproxy.c $(HOST_LIB)

test-asan: build/dotproxy-asan build/unit-asan
	@sh .ci/deps.sh test
	@rm -rf build/asan && mkdir -p build/asan
	$(SAN_ENV) build/unit-asan
	$(SAN_ENV) DOTPROXY=$(CURDIR)/build/dotproxy-asan DOTPROXY_SANITIZED=1 \
		$(PYTHON) -m pytest -q tests $(PYTEST_ARGS)
	@if [ -n "$$(ls build/asan)" ]; then head -n 60 build/asan/*; \
		echo "test-asan: sanitizer reports in build/asan/"; exit 1; fi
	@echo "test-asan: no sanitizer reports"
test-valgrind: build/dotproxy-host
	@sh .ci/deps.sh test
	DOTPROXY=$(CURDIR)/dotproxy DOTPROXY_HOST=$(CURDIR)/build/dotproxy-host \
		$(PYTHON) -m pytest -q tests/test_valgrind.py

# ---------------------------------------------------------------------------- clean
clean: clean-cross
	rm -f dotproxy anchors.inc anchors.inc.tmp .anchors.stamp .dotproxy.flags tests/unit
	rm -rf bearssl/build/*/ tests/__pycache__ .pytest_cache tests/.pytest_cache
clean-cross:
	rm -f $(addprefix dotproxy-,$(shell sh .ci/cross.sh arches)) build/dotproxy-*.flags
	rm -rf build/initramfs build/musl-*.obj
distclean: clean distclean-cross
	rm -rf bearssl bearssl.tmp.*
distclean-cross:
	rm -rf build
