# Makefile — build, run and test ringmq. The README's two commands are
# `make run` and `make test`; both install missing Debian packages first.
#
#   make            build everything into build/
#   make run        build and start ringmqd with its defaults
#   make test       unit tests, fuzz-corpus replay, integration tests
#   make demo       the order, inventory and notification services (examples/)
#                   against a real broker; see tests/integration/demo.sh
#   make san        the same tests under ASan+UBSan (build-san/)
#   make torture    the long fault runs: 20 broker SIGKILLs under load, then
#                   20 rounds of torn and junk tails
#   make bench      benchmarks; writes docs/benchmarks.md figures to stdout
#   make fuzz       short libFuzzer runs of every parser (clang)
#   make clean

CC ?= cc
BUILD ?= build
FUZZ_SECONDS ?= 30

WARN := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
	-Wpointer-arith -Wformat=2 -Wvla -Wundef -Wnull-dereference
BASE_CFLAGS := -std=gnu11 -O2 -g -D_GNU_SOURCE -I. -fno-omit-frame-pointer -pthread $(WARN)
ALL_CFLAGS = $(BASE_CFLAGS) $(EXTRA_CFLAGS) $(CFLAGS)
LIBS := -luring -llz4 -lxxhash -pthread -lm
TEST_LIBS := -lcmocka

COMMON_SRC := common/say.c common/ioq.c
STORAGE_SRC := storage/batch.c storage/segment.c storage/log.c storage/log_open.c \
	storage/log_read.c
PROTO_SRC := proto/proto.c proto/proto_group.c
BROKER_SRC := $(wildcard broker/*.c)
# The broker's pure parsers, linked into unit tests and fuzz targets too.
PARSER_SRC := broker/config.c broker/http_parse.c

CLIENT_SRC := $(wildcard client/*.c) proto/proto.c proto/proto_group.c storage/batch.c

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
pic = $(patsubst %.c,$(BUILD)/pic/%.o,$(1))
CORE_OBJ := $(call obj,$(COMMON_SRC) $(STORAGE_SRC) $(PROTO_SRC))
PARSER_OBJ := $(call obj,$(PARSER_SRC))

LIBS_OUT := $(BUILD)/lib/libringmq.a $(BUILD)/lib/libringmq.so $(BUILD)/lib/pkgconfig/ringmq.pc
CLIENT_TOOLS := $(patsubst tools/%.c,$(BUILD)/bin/%,$(filter tools/mqadm.c tools/mqcat.c tools/mqload.c tools/mqbench.c,$(wildcard tools/*.c)))
TOOLS := $(BUILD)/bin/mqdump $(BUILD)/bin/ringmqd $(CLIENT_TOOLS)
UNIT_TESTS := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(wildcard tests/unit/*/*.c))
FUZZ_TARGETS := $(basename $(notdir $(wildcard tests/fuzz/fuzz_*.c)))
REPLAYS := $(patsubst %,$(BUILD)/fuzz-replay/%,$(FUZZ_TARGETS))
BENCHES := $(patsubst tests/bench/%.c,$(BUILD)/bench/%,$(wildcard tests/bench/*.c))
# The example services, built as a user would: <ringmq.h> and libringmq.a.
EXAMPLES := $(BUILD)/examples/order-service $(BUILD)/examples/inventory-service \
	$(BUILD)/examples/notification-service

# The builds behind run/test/san/bench/demo use every CPU.
NPROC := $(shell nproc 2>/dev/null || echo 2)

.PHONY: all deps run test test-run san san-run bench fuzz clean demo torture

all: $(LIBS_OUT) $(TOOLS) $(UNIT_TESTS) $(REPLAYS) $(BENCHES) $(EXAMPLES)

deps:
	@tools/deps.sh

# V=1 shows the full commands.
ifeq ($(V),1)
Q :=
else
Q := @
endif

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC    $<")
	$(Q)$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/pic/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC    $< (pic)")
	$(Q)$(CC) $(ALL_CFLAGS) -fPIC -fvisibility=hidden -DRINGMQ_BUILDING_LIB -MMD -MP -c $< -o $@

# libringmq: the client, the protocol codec and the batch format, nothing
# of the broker or the log.
$(BUILD)/lib/libringmq.a: $(call obj,$(CLIENT_SRC))
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  AR    $@")
	$(Q)rm -f $@ && ar rcs $@ $^

# The file is named by its soname, which is what programs linked against
# it look for at run time; libringmq.so is the name the linker looks for.
$(BUILD)/lib/libringmq.so.0: $(call pic,$(CLIENT_SRC))
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD    $@")
	$(Q)$(CC) $(ALL_CFLAGS) -shared -Wl,-soname,libringmq.so.0 $^ -o $@ -llz4 -lxxhash -pthread

$(BUILD)/lib/libringmq.so: $(BUILD)/lib/libringmq.so.0
	$(Q)ln -sf libringmq.so.0 $@

$(BUILD)/lib/pkgconfig/ringmq.pc: client/ringmq.pc.in
	@mkdir -p $(dir $@)
	$(Q)sed -e 's|@PREFIX@|$(abspath $(BUILD))|' -e 's|@INCLUDE@|$(abspath client)|' $< > $@

$(CLIENT_TOOLS): $(BUILD)/bin/%: $(BUILD)/obj/tools/%.o $(BUILD)/lib/libringmq.a
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD    $@")
	$(Q)$(CC) $(ALL_CFLAGS) $^ -o $@ $(LIBS)

$(call obj,$(EXAMPLES:$(BUILD)/examples/%=examples/%.c)): ALL_CFLAGS += -Iclient

$(EXAMPLES): $(BUILD)/examples/%: $(BUILD)/obj/examples/%.o $(BUILD)/lib/libringmq.a
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD    $@")
	$(Q)$(CC) $(ALL_CFLAGS) $^ -o $@ $(LIBS)

$(BUILD)/bin/mqdump: $(call obj,tools/mqdump.c) $(CORE_OBJ)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD    $@")
	$(Q)$(CC) $(ALL_CFLAGS) $^ -o $@ $(LIBS)

$(BUILD)/bin/ringmqd: $(call obj,$(BROKER_SRC)) $(CORE_OBJ)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD    $@")
	$(Q)$(CC) $(ALL_CFLAGS) $^ -o $@ $(LIBS)

$(BUILD)/tests/%: $(BUILD)/obj/tests/unit/%.o $(call obj,tests/unit/testutil.c tests/unit/logcheck.c tests/unit/tbroker.c) $(CORE_OBJ) $(PARSER_OBJ) $(call obj,$(wildcard client/*.c))
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD    $@")
	$(Q)$(CC) $(ALL_CFLAGS) $^ -o $@ $(LIBS) $(TEST_LIBS)

# Fuzz targets replayed over their corpus by a plain driver (any compiler).
$(BUILD)/fuzz-replay/%: $(BUILD)/obj/tests/fuzz/%.o $(call obj,tests/fuzz/replay.c) $(CORE_OBJ) $(PARSER_OBJ)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD    $@")
	$(Q)$(CC) $(ALL_CFLAGS) $^ -o $@ $(LIBS)

$(BUILD)/bench/%: $(BUILD)/obj/tests/bench/%.o $(CORE_OBJ)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD    $@")
	$(Q)$(CC) $(ALL_CFLAGS) $^ -o $@ $(LIBS)

run: deps
	@$(MAKE) --no-print-directory -j$(NPROC) all
	$(BUILD)/bin/ringmqd

# Every test twice: the -O2 build, then the same tests built with ASan+UBSan
# (make san). RINGMQ_NO_SAN=1 skips the second pass for a quick local run.
test: deps
	@$(MAKE) --no-print-directory -j$(NPROC) all
	@rc=0; $(MAKE) --no-print-directory test-run || rc=1; \
	if [ -z "$(RINGMQ_NO_SAN)" ]; then \
		echo "== the same tests under ASan+UBSan (make san)"; \
		$(MAKE) --no-print-directory san-run || rc=1; \
	fi; exit $$rc

test-run:
	@tests/run_tests.sh $(BUILD) $(FUZZ_TARGETS)

# make test runs the crash loop with 5 kills; this one with 20.
torture: deps
	@$(MAKE) --no-print-directory -j$(NPROC) all
	RINGMQ_TORTURE=1 $(BUILD)/tests/broker/test_crash
	RINGMQ_TORTURE=1 $(BUILD)/tests/broker/test_torn

demo: deps
	@$(MAKE) --no-print-directory -j$(NPROC) all
	@tests/integration/demo.sh $(BUILD)

san: deps
	@$(MAKE) --no-print-directory san-run

san-run:
	@$(MAKE) --no-print-directory -j$(NPROC) BUILD=build-san \
		EXTRA_CFLAGS="-O1 -fsanitize=address,undefined -fno-sanitize-recover=all" all
	@# fuzz_short.sh builds its own ASan+UBSan libFuzzer binaries: once is enough.
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
		RINGMQ_SKIP_SCRIPTS=fuzz_short.sh tests/run_tests.sh build-san $(FUZZ_TARGETS)

bench: deps
	@$(MAKE) --no-print-directory -j$(NPROC) all
	tests/bench/run_bench.sh $(BUILD)

# libFuzzer builds: clang, ASan+UBSan, each target for FUZZ_SECONDS over its
# checked-in corpus; new inputs land in build-fuzz/corpus, not in the tree.
FUZZ_CFLAGS := -std=gnu11 -O1 -g -D_GNU_SOURCE -I. -fsanitize=fuzzer,address,undefined \
	-fno-sanitize-recover=all
fuzz:
	@tools/deps.sh --fuzz
	@mkdir -p build-fuzz
	@set -e; for t in $(FUZZ_TARGETS); do \
		clang $(FUZZ_CFLAGS) tests/fuzz/$$t.c $(COMMON_SRC) $(STORAGE_SRC) $(PROTO_SRC) \
			$(PARSER_SRC) \
			-o build-fuzz/$$t $(LIBS); \
		mkdir -p build-fuzz/corpus/$$t; \
		echo "fuzz: $$t for $(FUZZ_SECONDS)s"; \
		build-fuzz/$$t -max_total_time=$(FUZZ_SECONDS) -max_len=65536 \
			build-fuzz/corpus/$$t tests/fuzz/corpus/$$t; \
	done

clean:
	rm -rf build build-san build-fuzz

-include $(shell find $(BUILD)/obj $(BUILD)/pic -name '*.d' 2>/dev/null)
