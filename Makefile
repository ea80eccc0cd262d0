# keel - disaster-recovery toolkit for VM disk images.
#
#   make              build keel and libkeel.a
#   make check        install missing deps, build, run unit + shell + interop tests
#   make SANITIZE=1 check   the same under AddressSanitizer + UBSan
#   make demo         the main job end to end on a sample disk
#   make bench        side-by-side benchmarks (never part of check)
#   make fuzz         libFuzzer targets (clang)
#   make install PREFIX=/usr/local DESTDIR=

PREFIX ?= /usr/local
DESTDIR ?=
CC ?= cc
SANITIZE ?= 0

PKGS := zlib libzstd libcrypto libssl uuid libdeflate
# libarchive, libxml2 and libcurl: headers at build time only; lib/lazy.c
# loads them when a command first needs them (linked, they and what they
# pull in took 27 of the 33 ms every command took to start)
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) libarchive libxml-2.0 libcurl 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
# lib/lazy.c opens the soname that -lNAME would link here, so the library
# it loads is the ABI the headers above describe (libxml2 2.14 moved from
# libxml2.so.2 to libxml2.so.16); a guess only when there is no dev library
soname = $(or $(shell readelf -d $$($(CC) -print-file-name=lib$(1).so) 2>/dev/null | \
	sed -n 's/.*soname: \[\(.*\)\]/\1/p'),$(2))
LAZY_DEFS := -DKL_ARCHIVE_SONAME='"$(call soname,archive,libarchive.so.13)"' \
	-DKL_XML_SONAME='"$(call soname,xml2,libxml2.so.2)"' \
	-DKL_CURL_SONAME='"$(call soname,curl,libcurl.so.4)"'
CHECK_CFLAGS := $(shell pkg-config --cflags check 2>/dev/null)
CHECK_LIBS := $(shell pkg-config --libs check 2>/dev/null)

WARN := -Wall -Wextra -Wshadow -Wno-unused-parameter -Wformat=2 -Wno-format-nonliteral
BASE_CFLAGS := -std=gnu11 -g -O2 -pthread -D_FILE_OFFSET_BITS=64 $(WARN) -I. $(PKG_CFLAGS)
LDLIBS := $(PKG_LIBS) -lm -pthread

ifeq ($(SANITIZE),1)
BUILD := build-san
export KEEL_TEST_QUICK := 1
BASE_CFLAGS += -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
else
BUILD := build
endif
CFLAGS ?=
ALL_CFLAGS := $(BASE_CFLAGS) $(CFLAGS)

MODULES := lib format snapshot convert replicate vmm
LIB_SRCS := $(sort $(foreach m,$(MODULES),$(wildcard $(m)/*.c $(m)/*/*.c)))
CLI_SRCS := $(sort $(wildcard cli/*.c))
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/%.o)
CLI_OBJS := $(CLI_SRCS:%.c=$(BUILD)/%.o)
UNIT_SRCS := $(sort $(wildcard tests/unit/*/*.c tests/unit/*/*/*.c))
UNIT_BINS := $(UNIT_SRCS:%.c=$(BUILD)/%)
TESTLIB_SRCS := $(sort $(wildcard tests/common/*.c))
TESTLIB_OBJS := $(TESTLIB_SRCS:%.c=$(BUILD)/%.o)
FUZZ_SRCS := $(sort $(wildcard tests/fuzz/fuzz_*.c))

KEEL := $(BUILD)/keel
LIBKEEL := $(BUILD)/libkeel.a

.PHONY: all check unit shell interop demo bench fuzz fuzz-run install clean deps cppcheck appliance

all: $(KEEL) $(LIBKEEL)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/lib/lazy.o: ALL_CFLAGS += $(LAZY_DEFS)

$(LIBKEEL): $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(KEEL): $(CLI_OBJS) $(LIBKEEL)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $(CLI_OBJS) $(LIBKEEL) $(LDLIBS)
	@ln -sf $(BUILD)/keel keel 2>/dev/null || true

$(BUILD)/tests/common/%.o: tests/common/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(CHECK_CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/tests/unit/%: tests/unit/%.c $(LIBKEEL) $(TESTLIB_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(CHECK_CFLAGS) $(LDFLAGS) -MMD -MP -o $@ $< $(TESTLIB_OBJS) $(LIBKEEL) $(CHECK_LIBS) $(LDLIBS)

deps:
	@scripts/deps.sh

# `make check`: dependencies, build, then every suite; the last line is
# "N passed, N failed" over all suites, for CI.
check: deps
	@$(MAKE) --no-print-directory all unit-bins
	@KEEL=$(abspath $(KEEL)) BUILD=$(BUILD) tests/run-all.sh $(UNIT_BINS)

unit-bins: $(UNIT_BINS)

unit: all unit-bins
	@KEEL=$(abspath $(KEEL)) BUILD=$(BUILD) tests/run-all.sh --only unit $(UNIT_BINS)

shell: all
	@KEEL=$(abspath $(KEEL)) BUILD=$(BUILD) tests/run-all.sh --only shell

interop: all
	@KEEL=$(abspath $(KEEL)) BUILD=$(BUILD) tests/run-all.sh --only interop

demo: deps
	@$(MAKE) --no-print-directory all appliance
	@KEEL=$(abspath $(KEEL)) KEEL_APPLIANCE_DIR=$(abspath $(APPLIANCE)) scripts/demo.sh

bench: deps
	@$(MAKE) --no-print-directory all
	@KEEL=$(abspath $(KEEL)) tests/bench/run.sh

# libFuzzer: the library rebuilt with clang + ASan/UBSan + fuzzer hooks.
FUZZ_BUILD := build-fuzz
FUZZ_CFLAGS := -std=gnu11 -g -O1 -pthread -D_FILE_OFFSET_BITS=64 -I. $(PKG_CFLAGS) \
	-fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer -DKEEL_FUZZ
FUZZ_LIB_OBJS := $(LIB_SRCS:%.c=$(FUZZ_BUILD)/%.o)
FUZZ_BINS := $(FUZZ_SRCS:tests/fuzz/%.c=$(FUZZ_BUILD)/%)

$(FUZZ_BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -MMD -MP -c $< -o $@

$(FUZZ_BUILD)/lib/lazy.o: FUZZ_CFLAGS += $(LAZY_DEFS)

$(FUZZ_BUILD)/libkeel.a: $(FUZZ_LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_BUILD)/libkeel.a
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer,address,undefined -o $@ $< $(FUZZ_BUILD)/libkeel.a $(LDLIBS)

fuzz: $(FUZZ_BINS)

# Run each fuzz target for FUZZ_SECONDS on a corpus the tests generate.
FUZZ_SECONDS ?= 30
fuzz-run: fuzz all
	@KEEL=$(abspath $(KEEL)) FUZZ_SECONDS=$(FUZZ_SECONDS) tests/fuzz/run.sh $(FUZZ_BINS)

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include/keel
	install -m 0755 $(KEEL) $(DESTDIR)$(PREFIX)/bin/keel
	install -m 0755 scripts/keel-nightly $(DESTDIR)$(PREFIX)/bin/keel-nightly
	install -m 0644 $(LIBKEEL) $(DESTDIR)$(PREFIX)/lib/libkeel.a
	for h in lib/kl.h format/format.h; do \
		install -d $(DESTDIR)$(PREFIX)/include/keel/$$(dirname $$h); \
		install -m 0644 $$h $(DESTDIR)$(PREFIX)/include/keel/$$h; done

cppcheck:
	cppcheck --quiet --enable=warning,performance,portability --error-exitcode=1 \
		--suppress=missingIncludeSystem --inline-suppr -I. $(MODULES) cli

clean:
	rm -rf build build-san build-fuzz keel

# ------------------------------------------------------------------ vmm: appliance + test guests
# The verifier appliance for `keel verify-boot` (scripts/build-appliance.sh:
# Debian's kernel and busybox-static via apt-get download, an initramfs packed
# by the libarchive helper scripts/mkcpio.c) and the tiny freestanding guests
# the VMM tests boot (tests/vmm/guests/). `make check` builds both; when the
# appliance cannot be built (no package mirror) its boot tests print SKIP.
MKCPIO := $(BUILD)/mkcpio
APPLIANCE := $(BUILD)/appliance
GUEST_DIR := $(BUILD)/tests/vmm/guests
GUEST_SRC := tests/vmm/guests
GUEST_NAMES := boot pci blk mptable spin triple
GUESTS := $(GUEST_NAMES:%=$(GUEST_DIR)/%.bin) $(GUEST_DIR)/pvh.elf
GUEST_CFLAGS := -std=gnu11 -O2 -Wall -Wextra -ffreestanding -fno-pic -fno-pie \
	-fno-stack-protector -mno-red-zone -mgeneral-regs-only -fno-asynchronous-unwind-tables \
	-fcf-protection=none -fno-builtin
GUEST_LDFLAGS := -nostdlib -static -no-pie -Wl,--build-id=none -Wl,-z,noexecstack \
	-Wl,-z,max-page-size=4096 -Wl,--no-warn-rwx-segments

$(MKCPIO): scripts/mkcpio.c
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -O2 $(WARN) -o $@ $< $(shell pkg-config --cflags --libs libarchive)

$(APPLIANCE)/initrd.cpio: scripts/build-appliance.sh vmm/appliance/init $(MKCPIO)
	scripts/build-appliance.sh $(APPLIANCE) $(MKCPIO)

appliance: $(MKCPIO)
	@$(MAKE) --no-print-directory $(APPLIANCE)/initrd.cpio || \
		echo "make: warning: the verify-boot appliance could not be built; its tests will SKIP" >&2

$(GUEST_DIR)/%.o: $(GUEST_SRC)/%.c $(GUEST_SRC)/guest.h
	@mkdir -p $(dir $@)
	$(CC) $(GUEST_CFLAGS) -c $< -o $@

$(GUEST_DIR)/%.o: $(GUEST_SRC)/%.S
	@mkdir -p $(dir $@)
	$(CC) $(GUEST_CFLAGS) -c $< -o $@

$(GUEST_DIR)/%.bin: $(GUEST_DIR)/head.o $(GUEST_DIR)/lib.o $(GUEST_DIR)/%.o $(GUEST_SRC)/bzimage.ld
	$(CC) $(GUEST_LDFLAGS) -T $(GUEST_SRC)/bzimage.ld -o $(@:.bin=.elf) $(filter %.o,$^)
	objcopy -O binary $(@:.bin=.elf) $@

$(GUEST_DIR)/pvh.elf: $(GUEST_DIR)/head_pvh.o $(GUEST_DIR)/lib.o $(GUEST_DIR)/pvh.o $(GUEST_SRC)/pvh.ld
	$(CC) $(GUEST_LDFLAGS) -T $(GUEST_SRC)/pvh.ld -o $@ $(filter %.o,$^)

vmm-guests: $(GUESTS)
.SECONDARY: $(GUEST_NAMES:%=$(GUEST_DIR)/%.o) $(GUEST_DIR)/head.o $(GUEST_DIR)/head_pvh.o $(GUEST_DIR)/lib.o

# the KVM tests boot the guests; check also wants the appliance for the boot tests
$(BUILD)/tests/unit/vmm/test_kvm: | $(GUESTS)
check: vmm-guests appliance
.PHONY: vmm-guests
# ------------------------------------------------------------------ end vmm

-include $(LIB_OBJS:.o=.d) $(CLI_OBJS:.o=.d) $(TESTLIB_OBJS:.o=.d) $(UNIT_BINS:=.d) $(FUZZ_LIB_OBJS:.o=.d)
