# dotproxy: DNS-over-TLS forwarder, one C file, static musl + BearSSL 0.6.
#
# Targets
#   make               build ./dotproxy (fetches and builds BearSSL 0.6 on first use)
#   make test          build, run the C unit tests (tests/unit) and pytest (tests/)
#   make run           build, then run ./dotproxy $(ARGS) (port 53 needs root)
#   make unit          build and run the C unit tests only
#   make pytest        build ./dotproxy and run the pytest suite only
#   make check         same as make test
#   make bearssl       fetch BearSSL 0.6 into bearssl/ only
#   make deps          install/check what building needs (tests/deps.sh build)
#   make clean         remove build outputs; keeps the fetched bearssl/ sources
#   make distclean     clean, and remove bearssl/ too
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
#   BEARSSL_TARBALL                an already downloaded bearssl-0.6.tar.gz (checksum verified)
#   SOURCE_DATE_EPOCH              build time stamp (default: last commit of dotproxy.c and
#                                  anchors.pem, or their newest mtime outside git)
#   VERSION                        version string compiled in
#   V=1                            show the full BearSSL compile commands
#
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
LDFLAGS     ?= -static -Wl,--gc-sections -Wl,-z,noseparate-code -Wl,--build-id=none -s
PYTHON      ?= /usr/bin/python3
ANCHORS     ?= anchors.pem

# BearSSL: fetched into bearssl/ (never committed), built once per compiler.
BEARSSL_VERSION  := 0.6
BEARSSL_URL      ?= https://bearssl.org/bearssl-$(BEARSSL_VERSION).tar.gz
BEARSSL_SHA256   := 6705bba1714961b41a728dfc5debbe348d2966c117649392f8c8139efc83ff14
# Debian's repacked upstream tarball (0.6 minus the prebuilt T0Comp.exe); apt checks it against
# the signed Sources index, and we pin it too so every way of fetching gives the same code.
BEARSSL_DEBIAN_ORIG   := bearssl_0.6+dfsg.1.orig.tar.xz
BEARSSL_DEBIAN_SHA256 := 102a625bd8f6155260867a50c508df8d8c3f796985dd744df1a68e5cd1a79004
BEARSSL_FROM     ?=
BEARSSL_SRC      ?=
BEARSSL_TARBALL  ?=
BEARSSL_CFLAGS   ?= -Os -ffunction-sections -fdata-sections $(NO_UNWIND)
BEARSSL_CPPFLAGS ?=

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
define epoch_sh
if git ls-files --error-unmatch $(EPOCH_FILES) >/dev/null 2>&1 &&
   git diff --quiet HEAD -- $(EPOCH_FILES) 2>/dev/null; then
	git log -1 --format=%ct -- $(EPOCH_FILES);
else
	for f in $(EPOCH_FILES); do [ -e "$$f" ] && stat -c %Y "$$f"; done | sort -n | tail -n 1;
fi
endef
ifneq ($(SOURCE_DATE_EPOCH),)
BUILD_EPOCH := $(SOURCE_DATE_EPOCH)
else
BUILD_EPOCH = $(eval BUILD_EPOCH := $(or $(shell $(epoch_sh)),0))$(BUILD_EPOCH)
endif

DEFS     = -DDOTPROXY_VERSION='"$(VERSION)"' -DDOTPROXY_BUILD_EPOCH=$(BUILD_EPOCH)
INCLUDES := -Ibearssl/inc

# Shell-quote one make value: 'it'\''s'.
sq = '$(subst ','\'',$(1))'

ifeq ($(V),1)
Q   :=
say := @:
else
Q   := @
say := @echo
endif

.PHONY: all run bearssl deps test check unit pytest bench chaos clean distclean FORCE
.DELETE_ON_ERROR:

all: dotproxy

# ---------------------------------------------------------------------------- deps
# Runs once per make invocation (sub-makes are told it already ran).
deps:
ifneq ($(DEPS_CHECKED),1)
	@BEARSSL_FROM=$(call sq,$(BEARSSL_FROM)) BEARSSL_SRC=$(call sq,$(BEARSSL_SRC)) \
		sh tests/deps.sh build
endif

# ---------------------------------------------------------------------------- dotproxy
# Stamp files: rewritten only when their content changes, so that changing a flag, the
# compiler or ANCHORS rebuilds what depends on them (the same trick as git's GIT-CFLAGS).
.dotproxy.flags: FORCE
	@v=$(call sq,$(CC) $(CPPFLAGS) $(DEFS) $(CFLAGS) $(LDFLAGS) $(BEARSSL_LIB)); \
	[ "$$(cat $@ 2>/dev/null)" = "$$v" ] || printf '%s\n' "$$v" > $@

.anchors.stamp: FORCE
	@v=$(call sq,$(ANCHORS)); [ "$$(cat $@ 2>/dev/null)" = "$$v" ] || printf '%s\n' "$$v" > $@

dotproxy: dotproxy.c anchors.inc $(BEARSSL_LIB) .dotproxy.flags | deps
	$(CC) $(CPPFLAGS) $(DEFS) $(INCLUDES) $(CFLAGS) -o $@ dotproxy.c $(BEARSSL_LIB) $(LDFLAGS)
	@echo "dotproxy: $$(wc -c < $@) bytes stripped"

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

# ---------------------------------------------------------------------------- tests
tests/unit: tests/unit.c dotproxy.c anchors.inc $(BEARSSL_LIB) .dotproxy.flags $(wildcard tests/*.h) | deps
	$(CC) $(CPPFLAGS) $(DEFS) -DDOTPROXY_NO_MAIN= -Itests -I. $(INCLUDES) $(CFLAGS) \
		-o $@ tests/unit.c $(BEARSSL_LIB) $(filter-out -s,$(LDFLAGS))

unit: tests/unit
	./tests/unit

pytest: dotproxy
	@sh tests/deps.sh test
	@if ls tests | grep -Eq '^(test_.*|.*_test)\.py$$'; then \
		echo "$(PYTHON) -m pytest -q tests"; \
		DOTPROXY=$(CURDIR)/dotproxy $(PYTHON) -m pytest -q tests; \
	else echo "pytest: no tests/test_*.py yet, nothing to run"; fi

test:
	@BEARSSL_FROM=$(call sq,$(BEARSSL_FROM)) BEARSSL_SRC=$(call sq,$(BEARSSL_SRC)) \
		sh tests/deps.sh test
	@$(MAKE) --no-print-directory DEPS_CHECKED=1 dotproxy tests/unit
	./tests/unit
	@$(MAKE) --no-print-directory DEPS_CHECKED=1 pytest

check: test

# Benchmark (not a test, not run by make test): dotproxy vs its peers and the ceiling, one
# run on loopback; writes bench/RESULTS.md. See bench/README.md (BENCH_* variables there).
bench: dotproxy
	sh bench/run.sh

# Chaos run (not run by make test): dotproxy, unbound and Knot Resolver behind a fault-injecting
# TLS relay in front of the local DoT upstream, the same load and faults for each; writes the
# "Chaos run" section of bench/RESULTS.md and fails if dotproxy gives a wrong answer or leaves a
# query unanswered. make chaos CHAOS_SECONDS=600 is the long run; the other CHAOS_* variables
# (on the command line or in the environment) are described in bench/README.md.
CHAOS_SECONDS ?= 60
CHAOS_QPS     ?= 2000
chaos: dotproxy
	CHAOS_SECONDS=$(call sq,$(CHAOS_SECONDS)) CHAOS_QPS=$(call sq,$(CHAOS_QPS)) sh tests/chaos/run.sh

# ---------------------------------------------------------------------------- BearSSL
bearssl: bearssl/.source
	@echo "bearssl: bearssl/ is ready (from $$(cat bearssl/.source))"

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
	@mkdir -p $(@D); v=$(call sq,$(CC) $(BEARSSL_CPPFLAGS) $(BEARSSL_CFLAGS)); \
	[ "$$(cat $@ 2>/dev/null)" = "$$v" ] || printf '%s\n' "$$v" > $@

$(HOST_BUILD)/.flags: FORCE
	@mkdir -p $(@D); v=$(call sq,$(HOSTCC) $(HOST_CFLAGS)); \
	[ "$$(cat $@ 2>/dev/null)" = "$$v" ] || printf '%s\n' "$$v" > $@

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

# Fetch BearSSL 0.6 into bearssl/ (see fetch_bearssl_sh below), recording how in .source.
bearssl/.source: | deps
	@BEARSSL_FROM=$(call sq,$(BEARSSL_FROM)) BEARSSL_SRC=$(call sq,$(BEARSSL_SRC)) \
	BEARSSL_TARBALL=$(call sq,$(BEARSSL_TARBALL)) BEARSSL_URL=$(call sq,$(BEARSSL_URL)) \
	BEARSSL_SHA256=$(BEARSSL_SHA256) BEARSSL_DEBIAN_ORIG=$(BEARSSL_DEBIAN_ORIG) \
	BEARSSL_DEBIAN_SHA256=$(BEARSSL_DEBIAN_SHA256) BEARSSL_VERSION=$(BEARSSL_VERSION) \
	sh -ec "$$FETCH_BEARSSL_SH"
	@echo "bearssl: fetched from $$(cat $@)"

# Shared by the BearSSL and musl fetches (a POSIX shell fragment put in front of each script):
# apt_private_setup makes $work/apt, a deb-src list derived from the machine's own apt sources
# (one-line .list and deb822 .sources) with private lists and cache; apt_private runs apt-get
# with it through -o Dir::Etc::... options. The system's apt configuration and package lists
# are never touched, and no mirror is named here.
define apt_private_sh
apt_private_setup() {
	apt="$work/apt"
	mkdir -p "$apt/sources.list.d" "$apt/lists/partial" "$apt/cache/archives/partial" || return 1
	: > "$apt/sources.list" || return 1
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -f "$f" ] || continue
		sed -n -E 's/^[[:space:]]*deb[[:space:]]+/deb-src /p' "$f" > "$apt/sources.list.d/$(basename "$f" | tr / _).list"
	done
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		sed -E 's/^Types:.*/Types: deb-src/' "$f" > "$apt/sources.list.d/$(basename "$f")"
	done
}
apt_private() {
	set -- -o "Dir::Etc::SourceList=$work/apt/sources.list" -o "Dir::Etc::SourceParts=$work/apt/sources.list.d" \
		-o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache" -o "APT::Sandbox::User=root" "$@"
	if [ "$(id -u)" != 0 ]; then
		set -- -o "Debug::NoLocking=1" "$@"
	fi
	apt-get "$@"
}
endef
define nl


endef

# A plain POSIX shell script, passed verbatim (no make expansion) through the environment.
define fetch_bearssl_sh
dest=bearssl
work="$PWD/bearssl.tmp.$$"
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
if [ -d "$dest" ]; then
	echo "bearssl: $dest/ exists but has no .source (an interrupted fetch?): remove it first" >&2
	exit 1
fi

# Each fetch_* leaves an unpacked tree in $work/tree and the description in $work/source,
# or returns non-zero having said why.
fetch_dir() {
	if [ ! -f "$BEARSSL_SRC/inc/bearssl.h" ] || [ ! -d "$BEARSSL_SRC/src" ]; then
		echo "bearssl: BEARSSL_SRC=$BEARSSL_SRC is not a BearSSL source tree" >&2
		return 1
	fi
	mkdir "$work/tree" || return 1
	(cd "$BEARSSL_SRC" && tar cf - --exclude=./build --exclude=./.git .) | (cd "$work/tree" && tar xf -) || return 1
	echo "dir $(cd "$BEARSSL_SRC" && pwd)" > "$work/source"
}

fetch_tarball() {
	tgz="$work/bearssl-$BEARSSL_VERSION.tar.gz"
	if [ -n "$BEARSSL_TARBALL" ]; then
		cp "$BEARSSL_TARBALL" "$tgz" || return 1
		from="$BEARSSL_TARBALL"
	else
		echo "bearssl: downloading $BEARSSL_URL"
		if command -v curl >/dev/null 2>&1; then
			curl -fsSL --proto =https --connect-timeout 10 --max-time 120 -o "$tgz" "$BEARSSL_URL" || return 1
		elif command -v wget >/dev/null 2>&1; then
			wget -q --timeout=10 --tries=2 -O "$tgz" "$BEARSSL_URL" || return 1
		else
			echo "bearssl: neither curl nor wget is installed" >&2
			return 1
		fi
		from="$BEARSSL_URL"
	fi
	got=$(sha256sum "$tgz" | cut -d ' ' -f 1)
	if [ "$got" != "$BEARSSL_SHA256" ]; then
		echo "bearssl: CHECKSUM MISMATCH for $from" >&2
		echo "bearssl:   expected sha256 $BEARSSL_SHA256" >&2
		echo "bearssl:   got      sha256 $got" >&2
		exit 1    # never fall back silently after a bad download
	fi
	mkdir "$work/x" || return 1
	tar xzf "$tgz" -C "$work/x" || return 1
	mv "$work/x/bearssl-$BEARSSL_VERSION" "$work/tree" || return 1
	echo "tarball $from sha256=$got" > "$work/source"
}

# Debian's source package, fetched with a private deb-src list and private apt state, so
# the system's apt configuration and package lists are never touched.
fetch_debian() {
	if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-source >/dev/null 2>&1; then
		echo "bearssl: the Debian way needs apt-get and dpkg-source (package dpkg-dev)" >&2
		return 1
	fi
	apt_private_setup && mkdir -p "$work/deb" || return 1
	echo "bearssl: apt-get source bearssl (temporary deb-src list, system apt state untouched)"
	apt_private -qq update || echo "bearssl: apt-get update reported errors, trying anyway" >&2
	(cd "$work/deb" && apt_private -q source bearssl) || return 1
	got=$(sha256sum "$work/deb/$BEARSSL_DEBIAN_ORIG" 2>/dev/null | cut -d ' ' -f 1)
	if [ "$got" != "$BEARSSL_DEBIAN_SHA256" ]; then
		echo "bearssl: Debian's $BEARSSL_DEBIAN_ORIG is not the expected one" >&2
		echo "bearssl:   expected sha256 $BEARSSL_DEBIAN_SHA256" >&2
		echo "bearssl:   got      sha256 ${got:-(no such file)}" >&2
		ls "$work/deb" >&2
		exit 1
	fi
	for d in "$work/deb/bearssl-$BEARSSL_VERSION"*; do
		[ -d "$d" ] && mv "$d" "$work/tree"
	done
	[ -d "$work/tree" ] || return 1
	dsc=$(cd "$work/deb" && ls ./*.dsc)
	echo "debian ${dsc#./} ($BEARSSL_DEBIAN_ORIG sha256=$got)" > "$work/source"
}

fail_all() {
	cat >&2 <<EOF
bearssl: could not get BearSSL $BEARSSL_VERSION. Three ways:
  1. network: make bearssl BEARSSL_FROM=tarball
       (downloads $BEARSSL_URL, sha256 $BEARSSL_SHA256;
        or download it elsewhere and pass BEARSSL_TARBALL=/path/to/bearssl-$BEARSSL_VERSION.tar.gz)
  2. Debian:  make bearssl BEARSSL_FROM=debian
       (apt-get source bearssl through a temporary deb-src list; needs dpkg-dev and a Debian mirror)
  3. a local tree: make bearssl BEARSSL_SRC=/path/to/bearssl-$BEARSSL_VERSION
EOF
	exit 1
}

mode=$BEARSSL_FROM
if [ -z "$mode" ] && [ -n "$BEARSSL_SRC" ]; then mode=dir; fi
case $mode in
dir)
	[ -n "$BEARSSL_SRC" ] || { echo "bearssl: BEARSSL_FROM=dir needs BEARSSL_SRC=/path" >&2; exit 1; }
	fetch_dir || fail_all ;;
tarball)
	fetch_tarball || fail_all ;;
debian)
	fetch_debian || fail_all ;;
'')
	fetch_tarball || { echo "bearssl: tarball unavailable, trying Debian's source package" >&2; fetch_debian; } || fail_all ;;
*)
	echo "bearssl: BEARSSL_FROM must be tarball, debian or dir (got '$mode')" >&2; exit 1 ;;
esac

tree="$work/tree"
if [ ! -f "$tree/inc/bearssl.h" ] || [ ! -f "$tree/src/inner.h" ] || [ ! -f "$tree/tools/ta.c" ]; then
	echo "bearssl: the fetched tree does not look like BearSSL $BEARSSL_VERSION" >&2
	exit 1
fi
mkdir -p "$tree/build"
mv "$work/source" "$tree/.source"
mv "$tree" "$dest"
endef
bearssl/.source: export FETCH_BEARSSL_SH = $(value apt_private_sh)$(nl)$(value fetch_bearssl_sh)

# ---------------------------------------------------------------------------- clean
clean:
	rm -f dotproxy anchors.inc anchors.inc.tmp .anchors.stamp .dotproxy.flags tests/unit
	rm -rf bearssl/build/*/ tests/__pycache__ .pytest_cache tests/.pytest_cache

distclean: clean
	rm -rf bearssl bearssl.tmp.*

# ---------------------------------------------------------------------------- cross, initramfs
# make cross            static musl binaries for other CPUs: dotproxy-aarch64, dotproxy-armhf,
#                       dotproxy-mips (big-endian), dotproxy-mipsel. Debian's cross compilers
#                       (gcc-<triplet>) with musl built per target from its release tarball
#                       (Debian's orig tarball of musl, fetched like BearSSL's, or MUSL_TARBALL /
#                       MUSL_SRC), into build/musl-<arch>/; BearSSL per target as usual.
# make test-cross       make cross, then run each binary under qemu-user against the test DoT
#                       upstream (tests/test_cross.py)
# make test-initramfs   boot an initramfs (busybox + ./dotproxy) with Debian's kernel under
#                       qemu-system-x86_64 and resolve through it (tests/test_initramfs.py)
# Variables: CROSS_ARCHES (default: all four), MUSL_TARBALL=musl-1.2.3.tar.gz, MUSL_SRC=dir.
CROSS_ARCHES ?= aarch64 armhf mips mipsel
CROSS_aarch64 := aarch64-linux-gnu
CROSS_armhf   := arm-linux-gnueabihf
CROSS_mips    := mips-linux-gnu
CROSS_mipsel  := mipsel-linux-gnu
CROSS_BINS    := $(addprefix dotproxy-,$(CROSS_ARCHES))
MUSL_VERSION  := 1.2.3
# musl-1.2.3.tar.gz from musl.libc.org; Debian's musl_1.2.3.orig.tar.gz is the same file.
MUSL_SHA256   := 7d5b0b6062521e4627e099e4c9dc8248d32a30285e959b7eecaa780cf8cfd4a4
MUSL_TARBALL  ?=
MUSL_SRC      ?=

.PHONY: cross test-cross test-initramfs clean-cross distclean-cross

cross: $(CROSS_BINS)
	@for f in $(CROSS_BINS); do printf '%-18s %7s bytes  %s\n' "$$f" "$$(wc -c < $$f)" \
		"$$(file -b $$f 2>/dev/null | cut -d, -f1-2)"; done

test-cross:
	@sh tests/deps.sh test
	@sh tests/deps.sh cross
	@$(MAKE) --no-print-directory DEPS_CHECKED=1 dotproxy cross
	DOTPROXY=$(CURDIR)/dotproxy DOTPROXY_CROSS=1 $(PYTHON) -m pytest -q tests/test_cross.py

test-initramfs:
	@sh tests/deps.sh test
	@sh tests/deps.sh initramfs
	@$(MAKE) --no-print-directory DEPS_CHECKED=1 dotproxy
	DOTPROXY=$(CURDIR)/dotproxy DOTPROXY_INITRAMFS=1 $(PYTHON) -m pytest -q tests/test_initramfs.py

# musl for one target, installed into build/musl-<arch>/ with its musl-gcc wrapper (a gcc specs
# file pointing the cross gcc at musl's headers, crt files and libc.a).
build/musl-src/.source:
	@MUSL_TARBALL=$(call sq,$(MUSL_TARBALL)) MUSL_SRC=$(call sq,$(MUSL_SRC)) \
	MUSL_VERSION=$(MUSL_VERSION) MUSL_SHA256=$(MUSL_SHA256) sh -ec "$$FETCH_MUSL_SH"

build/musl-%/.installed: build/musl-src/.source
	@sh tests/deps.sh cross
	@rm -rf build/musl-$*.obj build/musl-$*
	@mkdir -p build/musl-$*.obj
	@echo "  MUSL    build/musl-$* ($(CROSS_$*)-gcc)"
	$(Q)cd build/musl-$*.obj && ../musl-src/configure --target=$(CROSS_$*) \
		CC=$(CROSS_$*)-gcc CROSS_COMPILE=$(CROSS_$*)- CFLAGS='-Os $(NO_UNWIND)' \
		--prefix=$(CURDIR)/build/musl-$* --disable-shared --enable-wrapper=gcc >configure.log
	$(Q)$(MAKE) -C build/musl-$*.obj -s install >build/musl-$*.log 2>&1 || \
		{ tail -n 30 build/musl-$*.log >&2; exit 1; }
	@rm -rf build/musl-$*.obj build/musl-$*.log
	@touch $@

.SECONDARY: $(foreach a,$(CROSS_ARCHES),build/musl-$(a)/.installed)

# Same compile as ./dotproxy, with the target's musl-gcc and its own BearSSL build dir.
$(CROSS_BINS): dotproxy-%: dotproxy.c anchors.inc build/musl-%/.installed FORCE
	@$(MAKE) --no-print-directory DEPS_CHECKED=1 CC=$(CURDIR)/build/musl-$*/bin/musl-gcc \
		AR=$(CROSS_$*)-ar TARGET=cross-$* bearssl/build/cross-$*/libbearssl.a
	@v=$(call sq,$(CROSS_$*) $(CPPFLAGS) $(DEFS) $(CFLAGS) $(LDFLAGS)); \
	if [ "$$(cat build/$@.flags 2>/dev/null)" != "$$v" ] || [ ! -f $@ ] || \
	   [ -n "$$(find dotproxy.c anchors.inc bearssl/build/cross-$*/libbearssl.a -newer $@)" ]; then \
		echo "  CC      $@"; \
		build/musl-$*/bin/musl-gcc $(CPPFLAGS) $(DEFS) $(INCLUDES) $(CFLAGS) -o $@ dotproxy.c \
			bearssl/build/cross-$*/libbearssl.a $(LDFLAGS) && printf '%s\n' "$$v" > build/$@.flags; \
	fi

clean: clean-cross
clean-cross:
	rm -f $(addprefix dotproxy-,aarch64 armhf mips mipsel) build/dotproxy-*.flags
	rm -rf build/initramfs build/musl-*.obj

distclean: distclean-cross
distclean-cross:
	rm -rf build

# Fetch musl's source into build/musl-src: MUSL_SRC (a tree), MUSL_TARBALL (the release tarball),
# or Debian's source package (its orig tarball is the release tarball), always checked against
# MUSL_SHA256. The Debian way works like BearSSL's: a private deb-src list derived from the
# machine's apt sources and private apt state; the system's apt configuration is not touched.
define fetch_musl_sh
dest=build/musl-src
mkdir -p build
work="$PWD/build/musl-src.tmp.$$"
rm -rf "$work" "$dest"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
tgz="$work/musl-$MUSL_VERSION.tar.gz"
if [ -n "$MUSL_SRC" ]; then
	[ -f "$MUSL_SRC/configure" ] && [ -d "$MUSL_SRC/arch/mips" ] || { echo "musl: MUSL_SRC=$MUSL_SRC is not a musl tree" >&2; exit 1; }
	mkdir "$work/tree"
	(cd "$MUSL_SRC" && tar cf - --exclude=./.git .) | (cd "$work/tree" && tar xf -)
	echo "dir $(cd "$MUSL_SRC" && pwd)" > "$work/tree/.source"
	mv "$work/tree" "$dest"
	exit 0
elif [ -n "$MUSL_TARBALL" ]; then
	cp "$MUSL_TARBALL" "$tgz"
	from=$MUSL_TARBALL
else
	command -v apt-get >/dev/null 2>&1 && command -v dpkg-source >/dev/null 2>&1 ||
		{ echo "musl: needs apt-get and dpkg-source (dpkg-dev), or MUSL_TARBALL=/path/to/musl-$MUSL_VERSION.tar.gz" >&2; exit 1; }
	apt_private_setup && mkdir -p "$work/deb" || exit 1
	echo "musl: apt-get source --download-only musl (temporary deb-src list, system apt state untouched)"
	apt_private -qq update || echo "musl: apt-get update reported errors, trying anyway" >&2
	(cd "$work/deb" && apt_private -q -qq source --download-only musl) || exit 1
	mv "$work/deb/musl_$MUSL_VERSION.orig.tar.gz" "$tgz" || exit 1
	from="Debian musl_$MUSL_VERSION.orig.tar.gz"
fi
got=$(sha256sum "$tgz" | cut -d ' ' -f 1)
if [ "$got" != "$MUSL_SHA256" ]; then
	echo "musl: CHECKSUM MISMATCH for $from" >&2
	echo "musl:   expected sha256 $MUSL_SHA256" >&2
	echo "musl:   got      sha256 $got" >&2
	exit 1
fi
mkdir "$work/x"
tar xzf "$tgz" -C "$work/x"
mv "$work/x/musl-$MUSL_VERSION" "$work/tree"
echo "tarball $from sha256=$got" > "$work/tree/.source"
mv "$work/tree" "$dest"
echo "musl: $dest from $from"
endef
build/musl-src/.source: export FETCH_MUSL_SH = $(value apt_private_sh)$(nl)$(value fetch_musl_sh)

# ---------------------------------------------------------------------------- fuzz, sanitizers
# make fuzz             libFuzzer harnesses tests/fuzz/fuzz_*.c (clang, ASan + UBSan) into build/fuzz/:
#                       replays tests/fuzz/regress/<harness>-* (known crashes, fixed or not), then
#                       fuzzes each for FUZZ_SECONDS (default 60) from its seeds tests/fuzz/corpus/<h>/
#                       (new inputs go to build/fuzz/work/<h>/, crashes to build/fuzz/<h>-crash-*)
# make fuzz-build       build the harnesses only
# make test-asan        dotproxy and tests/unit built with clang -fsanitize=address,undefined against
#                       the host BearSSL (build/dotproxy-asan, build/unit-asan), then the unit tests and
#                       the pytest suite against it (DOTPROXY_SANITIZED=1: tests that need the static
#                       binary skip); any sanitizer report (build/asan/*) fails it
# make test-valgrind    build/dotproxy-host (gcc -g -O1, glibc, dynamic) under valgrind: tests/test_valgrind.py
# Variables: FUZZ_CC (clang), FUZZ_SECONDS, FUZZ_HARNESSES, SAN_CC (clang), PYTEST_ARGS.
FUZZ_CC        ?= clang
SAN_CC         ?= clang
FUZZ_SECONDS   ?= 60
FUZZ_HARNESSES ?= fuzz_query fuzz_tcp fuzz_answer fuzz_specs fuzz_cert
FUZZ_FLAGS     := -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
                  -fno-sanitize-recover=undefined
SAN_FLAGS      := -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined \
                  -fno-sanitize-recover=undefined
# ASan: no leak check at exit (see tests/fuzz/README.md: nothing is freed on purpose, all of it
# reachable from g); every report to build/asan/<pid>, which must stay empty.
SAN_ENV         = ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:log_path=$(CURDIR)/build/asan/asan \
                  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$(CURDIR)/build/asan/ubsan
PYTEST_ARGS    ?=

.PHONY: fuzz fuzz-build test-asan test-valgrind

fuzz-build: $(addprefix build/fuzz/,$(FUZZ_HARNESSES))

build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_util.h tests/dnsmsg.h dotproxy.c anchors.inc $(HOST_LIB) | deps
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_FLAGS) -std=c99 $(DEFS) -I. $(INCLUDES) -o $@ $< $(HOST_LIB)

fuzz: fuzz-build
	@set -e; for h in $(FUZZ_HARNESSES); do \
		regress=$$(ls tests/fuzz/regress/$$h-* 2>/dev/null || true); \
		if [ -n "$$regress" ]; then \
			echo "fuzz: $$h: replaying $$(echo $$regress | wc -w) regression input(s)"; \
			build/fuzz/$$h $$regress >build/fuzz/$$h.regress.log 2>&1 || \
				{ tail -n 40 build/fuzz/$$h.regress.log; exit 1; }; \
		fi; \
		mkdir -p build/fuzz/work/$$h; \
		echo "fuzz: $$h for $(FUZZ_SECONDS) s"; \
		build/fuzz/$$h -max_total_time=$(FUZZ_SECONDS) -timeout=10 -print_final_stats=1 \
			$$(case $$h in fuzz_answer) echo -max_len=16384;; fuzz_cert) echo -max_len=8192;; fuzz_tcp) echo -max_len=70000;; esac) \
			-artifact_prefix=build/fuzz/$$h-crash- \
			build/fuzz/work/$$h tests/fuzz/corpus/$$h >build/fuzz/$$h.log 2>&1 || \
			{ tail -n 60 build/fuzz/$$h.log; echo "fuzz: $$h FAILED (input: build/fuzz/$$h-crash-*)"; exit 1; }; \
		grep -E '^#[0-9]+[[:space:]]+DONE' build/fuzz/$$h.log | sed "s/^/fuzz: $$h: /"; \
		grep -E 'stat::number_of_executed_units|stat::average_exec_per_sec' build/fuzz/$$h.log | \
			sed "s/^/fuzz: $$h: /"; \
	done

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
	@sh tests/deps.sh test
	@rm -rf build/asan && mkdir -p build/asan
	$(SAN_ENV) build/unit-asan
	$(SAN_ENV) DOTPROXY=$(CURDIR)/build/dotproxy-asan DOTPROXY_SANITIZED=1 \
		$(PYTHON) -m pytest -q tests $(PYTEST_ARGS)
	@if [ -n "$$(ls build/asan)" ]; then head -n 60 build/asan/*; \
		echo "test-asan: sanitizer reports in build/asan/"; exit 1; fi
	@echo "test-asan: no sanitizer reports"

test-valgrind: build/dotproxy-host
	@sh tests/deps.sh test
	DOTPROXY=$(CURDIR)/dotproxy DOTPROXY_HOST=$(CURDIR)/build/dotproxy-host \
		$(PYTHON) -m pytest -q tests/test_valgrind.py
