# uffdwp - plain GNU make. `make` builds everything, `make check` runs the
# tests, `make run` runs the main job. SAN=asan|tsan builds into build-$(SAN).
VERSION  := 0.1.0
SOVER    := 0
CC       ?= cc
SAN      ?=
BUILD    ?= build$(if $(SAN),-$(SAN))
PREFIX   ?= /usr/local
LIBDIR   ?= $(PREFIX)/lib
INCDIR   ?= $(PREFIX)/include
MANDIR   ?= $(PREFIX)/share/man
BINDIR   ?= $(PREFIX)/bin

WARN     := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
            -Wno-unused-parameter $(if $(WERROR),-Werror)
SANFLAGS_asan := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
SANFLAGS_tsan := -fsanitize=thread
SANFLAGS := $(SANFLAGS_$(SAN))
CFLAGS   ?= -O2 -g
ALL_CFLAGS := -std=gnu11 -D_GNU_SOURCE -pthread -Iinclude -Isrc $(WARN) $(SANFLAGS) $(CFLAGS)
# The codecs and the checksum of snapshot files (uffdwp-snapshot(5)).
DEP_LIBS     := -lzstd -llz4 -lxxhash
DEP_PACKAGES := libzstd-dev liblz4-dev libxxhash-dev libsqlite3-dev
# The command's own: `uffdwp bench files` snapshots an SQLite database.
TOOL_LIBS    := -lsqlite3
LDLIBS   := $(DEP_LIBS) -pthread -lm

LIB_SRCS   := $(wildcard src/*.c)
TOOL_SRCS  := $(wildcard tools/*.c bench/*.c)
TEST_SRCS  := $(wildcard tests/*.c)
MANSECTIONS := $(sort $(subst .,,$(suffix $(wildcard man/*))))
EXAMPLES   := $(patsubst examples/%.c,$(BUILD)/examples/%,$(wildcard examples/*.c))
# Programs the tests run as other processes (uffdwp core's targets).
TARGETS    := $(patsubst tests/targets/%.c,$(BUILD)/tests/targets/%,$(wildcard tests/targets/*.c))

LIB_OBJS   := $(patsubst %.c,$(BUILD)/obj/%.o,$(LIB_SRCS))
PIC_OBJS   := $(patsubst %.c,$(BUILD)/pic/%.o,$(LIB_SRCS))
TOOL_OBJS  := $(patsubst %.c,$(BUILD)/obj/%.o,$(TOOL_SRCS))
TEST_OBJS  := $(patsubst %.c,$(BUILD)/obj/%.o,$(TEST_SRCS))

STATIC  := $(BUILD)/libuffdwp.a
SHARED  := $(BUILD)/libuffdwp.so.$(VERSION)
TOOL    := $(BUILD)/uffdwp
TESTRUN := $(BUILD)/tests/run

.DEFAULT_GOAL := all

# The libraries above, installed on first use: as root with apt-get, else
# a clear stop naming the packages.
DEPS_STAMP := $(BUILD)/.deps-ok
$(DEPS_STAMP):
	@mkdir -p $(dir $@)
	@if ! printf '#include <zstd.h>\n#include <lz4.h>\n#include <xxhash.h>\n#include <sqlite3.h>\n' | \
	    $(CC) -E -x c - >/dev/null 2>&1; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	        echo "installing $(DEP_PACKAGES)"; \
	        export DEBIAN_FRONTEND=noninteractive; \
	        apt-get install -y -q $(DEP_PACKAGES) >/dev/null 2>&1 || \
	        { apt-get update -q >/dev/null && apt-get install -y -q $(DEP_PACKAGES) >/dev/null; } || exit 1; \
	    else \
	        echo "uffdwp needs $(DEP_PACKAGES): apt-get install $(DEP_PACKAGES) (as root)" >&2; \
	        exit 1; \
	    fi; \
	fi
	@touch $@

.PHONY: all check run install clean soak
all: $(STATIC) $(SHARED) $(BUILD)/libuffdwp.so $(TOOL) $(TESTRUN) $(EXAMPLES) $(TARGETS)

$(BUILD)/obj/%.o: %.c $(wildcard include/*.h src/*.h tests/*.h bench/*.h tools/*.h) Makefile | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -fvisibility=hidden -c $< -o $@

$(BUILD)/pic/%.o: %.c $(wildcard include/*.h src/*.h) Makefile | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -fPIC -fvisibility=hidden -c $< -o $@

$(STATIC): $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(SHARED): $(PIC_OBJS) src/libuffdwp.map
	$(CC) $(ALL_CFLAGS) -shared -Wl,-soname,libuffdwp.so.$(SOVER) \
	    -Wl,--version-script=src/libuffdwp.map -o $@ $(PIC_OBJS) $(LDLIBS)

$(BUILD)/libuffdwp.so: $(SHARED)
	ln -sf libuffdwp.so.$(VERSION) $(BUILD)/libuffdwp.so.$(SOVER)
	ln -sf libuffdwp.so.$(VERSION) $@

$(TOOL): $(TOOL_OBJS) $(STATIC)
	$(CC) $(ALL_CFLAGS) -o $@ $(TOOL_OBJS) $(STATIC) $(TOOL_LIBS) $(LDLIBS)

$(TESTRUN): $(TEST_OBJS) $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $(TEST_OBJS) $(STATIC) $(LDLIBS)

$(BUILD)/examples/%: examples/%.c $(STATIC) include/uffdwp.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(STATIC) $(LDLIBS)

# Plain programs, as the processes uffdwp core meets are: no sanitizer (their
# deliberate unsynchronised writes are what a core must catch at one instant)
# and only the C library, so they never wait for $(DEPS_STAMP)'s install.
$(BUILD)/tests/targets/%: tests/targets/%.c Makefile
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -D_GNU_SOURCE -pthread $(WARN) $(CFLAGS) -o $@ $<

# TESTFLAGS passes options to the runner, e.g. TESTFLAGS='-f wp -b kernel'.
check: all
	$(TESTRUN) $(TESTFLAGS)

run: all
	$(TOOL) demo

# The signal-window stress suite, long: SOAK_CYCLES cycles per backend
# (make check runs 10,000), with the runner's timeouts scaled to match.
SOAK_CYCLES ?= 200000
soak: all
	UFFDWP_SOAK_CYCLES=$(SOAK_CYCLES) $(TESTRUN) -f stress_signal_window -t $$(( $(SOAK_CYCLES) / 5000 + 1 ))

install: $(STATIC) $(SHARED) $(BUILD)/libuffdwp.so $(TOOL)
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCDIR) $(DESTDIR)$(BINDIR) \
	    $(addprefix $(DESTDIR)$(MANDIR)/man,$(MANSECTIONS))
	install -m 644 include/uffdwp.h $(DESTDIR)$(INCDIR)/
	install -m 644 $(STATIC) $(DESTDIR)$(LIBDIR)/
	install -m 755 $(SHARED) $(DESTDIR)$(LIBDIR)/
	ln -sf libuffdwp.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libuffdwp.so.$(SOVER)
	ln -sf libuffdwp.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libuffdwp.so
	install -m 755 $(TOOL) $(DESTDIR)$(BINDIR)/
	$(foreach s,$(MANSECTIONS),install -m 644 $(wildcard man/*.$(s)) $(DESTDIR)$(MANDIR)/man$(s)/;)
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' \
	    -e 's|@INCLUDEDIR@|$(INCDIR)|' -e 's|@VERSION@|$(VERSION)|' \
	    uffdwp.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/uffdwp.pc

clean:
	rm -rf build build-asan build-tsan

# Fuzzing the snapshot decoder (src/format.c) with libFuzzer: needs clang and
# its runtime (Debian: libclang-rt-14-dev). `make fuzz` runs for FUZZ_SECONDS,
# seeded by the committed fuzz/corpus; what it finds goes to build/fuzz/corpus
# (copy small, interesting inputs to fuzz/corpus: `make check` replays them).
# `make fuzz-seeds` rewrites the generated seeds in fuzz/corpus.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_CFLAGS  := -std=gnu11 -D_GNU_SOURCE -Iinclude -Isrc -g -O1 \
                -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
.PHONY: fuzz fuzz-seeds
# format.c's encoder allocates from the library's private memory (private.c).
FUZZ_SRCS    := src/format.c src/private.c
build/fuzz/fuzz_decode: fuzz/fuzz_decode.c fuzz/harness.h $(FUZZ_SRCS) src/format.h include/uffdwp.h | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ fuzz/fuzz_decode.c $(FUZZ_SRCS) $(DEP_LIBS)

fuzz: build/fuzz/fuzz_decode
	@mkdir -p build/fuzz/corpus
	build/fuzz/fuzz_decode -max_total_time=$(FUZZ_SECONDS) -max_len=16384 \
	    -dict=fuzz/snapshot.dict build/fuzz/corpus fuzz/corpus

fuzz-seeds: fuzz/make_seeds.c $(FUZZ_SRCS) src/format.h | $(DEPS_STAMP)
	@mkdir -p build/fuzz fuzz/corpus
	$(CC) -std=gnu11 -D_GNU_SOURCE -Iinclude -Isrc -O2 -o build/fuzz/make_seeds fuzz/make_seeds.c $(FUZZ_SRCS) $(DEP_LIBS) -pthread
	build/fuzz/make_seeds fuzz/corpus
