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

.PHONY: all run bearssl deps test check unit pytest clean distclean FORCE
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
	apt="$work/apt"
	mkdir -p "$apt/sources.list.d" "$apt/lists/partial" "$apt/cache/archives/partial" "$work/deb" || return 1
	: > "$apt/sources.list" || return 1
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -f "$f" ] || continue
		sed -n -E 's/^[[:space:]]*deb[[:space:]]+/deb-src /p' "$f" > "$apt/sources.list.d/$(basename "$f" | tr / _).list"
	done
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		sed -E 's/^Types:.*/Types: deb-src/' "$f" > "$apt/sources.list.d/$(basename "$f")"
	done
	set -- -o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=$apt/sources.list.d" \
		-o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o "APT::Sandbox::User=root"
	if [ "$(id -u)" != 0 ]; then
		set -- "$@" -o "Debug::NoLocking=1"
	fi
	echo "bearssl: apt-get source bearssl (temporary deb-src list, system apt state untouched)"
	apt-get "$@" -qq update || echo "bearssl: apt-get update reported errors, trying anyway" >&2
	(cd "$work/deb" && apt-get "$@" -q source bearssl) || return 1
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
bearssl/.source: export FETCH_BEARSSL_SH = $(value fetch_bearssl_sh)

# ---------------------------------------------------------------------------- clean
clean:
	rm -f dotproxy anchors.inc anchors.inc.tmp .anchors.stamp .dotproxy.flags tests/unit
	rm -rf bearssl/build/*/ tests/__pycache__ .pytest_cache tests/.pytest_cache

distclean: clean
	rm -rf bearssl bearssl.tmp.*
