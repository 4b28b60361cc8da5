# Inference-PIO — one entry point for building, testing and installing.
#
#   make                 build/bin/pio, build/plugins/*.so, build/lib/*.a
#   make CUDA=0          force a CPU-only build (default: on when nvcc is found)
#   make test            the CPU test suite (CMocka)
#   make test SANITIZE=1 the same suite built with ASan + UBSan (into build-asan/)
#   make install PREFIX=/usr/local DESTDIR=   /   make uninstall
#
# Layout conventions the rules rely on (add files, not rules):
#   sdk/src/*.c                  -> libpio_sdk.a      (linked statically into plugins)
#   kernels/*.c kernels/cpu/*.c  -> libpio_kernels.a  (shared compute, PIC)
#   host/*.c (but main.c)        -> libpio_host.a, + host/main.c -> bin/pio
#   plugins/NAME/**.c (but tests/, benchmarks/) -> plugins/NAME.so
#   tests/test_*.c               -> tests/test_*  (CMocka; links host, sdk and kernels)
#   tests/plugins/*.c            -> test_plugins/*.so (fixture plugins for the loader tests)

PREFIX   ?= /usr/local
DESTDIR  ?=
SANITIZE ?= 0
SHARED   ?= ../shared

CC       ?= cc
PKG_CONFIG ?= pkg-config

CUDA_HOME ?= $(firstword $(wildcard /usr/local/cuda) /usr/local/cuda)
NVCC      ?= $(shell command -v nvcc 2>/dev/null || { test -x $(CUDA_HOME)/bin/nvcc && echo $(CUDA_HOME)/bin/nvcc; })
ifeq ($(origin CUDA),undefined)
  CUDA := $(if $(NVCC),1,0)
endif

ifeq ($(SANITIZE),1)
  BUILD ?= build-asan
  SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
  OPT := -O1 -g
else
  BUILD ?= build
  SAN_FLAGS :=
  OPT := -O2 -g
endif

WARN     := -Wall -Wextra -Werror
CPPFLAGS += -D_GNU_SOURCE -Isdk/include -I.
CFLAGS   += -std=c11 $(OPT) $(WARN) -fPIC -fopenmp $(SAN_FLAGS)
LDFLAGS  += $(SAN_FLAGS) -fopenmp
EXTRA_LIBS := -ljansson -lpcre2-8 -lutf8proc -lm -lpthread -ldl

ifeq ($(CUDA),1)
  CUDA_VERSION_NUM := $(shell $(NVCC) --version | sed -n 's/.*release \([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | awk '{print $$1*1000+$$2*10}')
  CPPFLAGS += -DPIO_HAVE_CUDA=1 -DPIO_BUILD_CUDA_RUNTIME_VERSION=$(CUDA_VERSION_NUM) \
              -DPIO_BUILD_CUDA_ARCHITECTURES='"sm_90a,compute_90"'
  # CUDA link flags (the rules are in the CUDA section at the end). They must be set here,
  # before the plugin rules are expanded. cuBLASLt is linked only where used; the CUDA runtime
  # statically (no libcudart.so needed at run time).
  CUDA_LDLIBS := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 \
                 -Wl,--push-state,--as-needed -lcublasLt -lnccl -Wl,--pop-state \
                 -lcudart_static -lrt -ldl -lpthread
  EXTRA_LIBS += $(CUDA_LDLIBS)
  # GPU_RPATH=1 (set by make gpu-bundle): binaries find the bundled libraries in ../lib. The
  # flag goes through a response file: $ORIGIN must survive both plain recipes and the
  # $(eval)'d plugin rules, which expand LDFLAGS once more.
  ifeq ($(GPU_RPATH),1)
    $(shell mkdir -p $(BUILD))
    $(file >$(BUILD)/gpu-rpath.rsp,-Wl,-rpath,$$ORIGIN/../lib)
    LDFLAGS += @$(BUILD)/gpu-rpath.rsp
  endif
endif

PLUGIN_CFLAGS  := -fvisibility=hidden
PLUGIN_LDFLAGS := -shared -Wl,--version-script=sdk/plugin.map -Wl,-z,defs

LIB := $(BUILD)/lib
OBJ := $(BUILD)/obj

SDK_SRCS     := $(sort $(wildcard sdk/src/*.c))
KERNEL_SRCS  := $(sort $(wildcard kernels/*.c kernels/cpu/*.c))
HOST_SRCS    := $(filter-out host/main.c,$(sort $(wildcard host/*.c)))
TEST_SRCS    := $(sort $(wildcard tests/test_*.c))
FIXTURE_PLUGIN_SRCS := $(sort $(wildcard tests/plugins/*.c))
PLUGIN_NAMES := $(sort $(notdir $(patsubst %/,%,$(dir $(wildcard plugins/*/plugin.c)))))

SDK_LIB     := $(LIB)/libpio_sdk.a
KERNELS_LIB := $(LIB)/libpio_kernels.a
HOST_LIB    := $(LIB)/libpio_host.a
# The SDK and the kernels call each other (the text-generation runtime samples with the
# kernels' sampler; kernels report errors through the SDK): one link group resolves both ways.
STATIC_LIBS := -Wl,--start-group $(KERNELS_LIB) $(SDK_LIB) -Wl,--end-group
PIO         := $(BUILD)/bin/pio
PLUGINS     := $(PLUGIN_NAMES:%=$(BUILD)/plugins/%.so)
TESTS       := $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)
FIXTURE_PLUGINS := $(FIXTURE_PLUGIN_SRCS:tests/plugins/%.c=$(BUILD)/test_plugins/%.so) \
                   $(BUILD)/test_plugins/not_an_elf.so $(BUILD)/test_plugins/good_a_copy.so

objs = $(patsubst %.c,$(OBJ)/%.o,$(1))

# Everything is rebuilt when the compiler or its flags change (CUDA=0 after CUDA=1, a new
# PREFIX, ...): objects depend on a stamp file holding the flags they were built with.
FLAGS_STAMP := $(BUILD)/flags.stamp
BUILD_FLAGS := $(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS)
ifneq ($(BUILD_FLAGS),$(file <$(FLAGS_STAMP)))
$(shell mkdir -p $(BUILD))
$(file >$(FLAGS_STAMP),$(BUILD_FLAGS))
endif
# PREFIX reaches only the host's default plugin folder (session.c), so it has its own stamp.
PREFIX_STAMP := $(BUILD)/prefix.stamp
ifneq ($(PREFIX),$(file <$(PREFIX_STAMP)))
$(file >$(PREFIX_STAMP),$(PREFIX))
endif

.PHONY: all test test-build install uninstall clean deps run
DEMO_QUESTION ?= What is 12 plus 30?
all: $(PIO) $(PLUGINS) $(SDK_LIB) $(KERNELS_LIB) $(BUILD)/pio-sdk.pc

$(OBJ)/%.o: %.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

# Plugin objects are compiled with hidden visibility.
$(OBJ)/plugins/%.o: plugins/%.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(PLUGIN_CFLAGS) -MMD -MP -c $< -o $@

$(SDK_LIB): $(call objs,$(SDK_SRCS))
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(KERNELS_LIB): $(call objs,$(KERNEL_SRCS))
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $(filter %.o,$^)

$(HOST_LIB): $(call objs,$(HOST_SRCS))
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $(filter %.o,$^)

HOST_DEFS := -DPIO_DEFAULT_PLUGIN_DIR='"$(PREFIX)/lib/pio/plugins"'
$(OBJ)/host/session.o: CPPFLAGS += $(HOST_DEFS)
$(OBJ)/host/session.o: $(PREFIX_STAMP)

$(PIO): $(OBJ)/host/main.o $(HOST_LIB) $(SDK_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -rdynamic -o $@ $^ -lyaml $(EXTRA_LIBS)

# One shared object per plugin folder: every .c below it except tests/ and benchmarks/.
define PLUGIN_RULE
$(1)_SRCS := $$(shell find plugins/$(1) -name '*.c' -not -path '*/tests/*' -not -path '*/benchmarks/*' | sort)
$(BUILD)/plugins/$(1).so: $$(call objs,$$($(1)_SRCS)) $(SDK_LIB) $(KERNELS_LIB)
	@mkdir -p $$(dir $$@)
	$(CC) $(LDFLAGS) $(PLUGIN_LDFLAGS) -o $$@ $$(filter %.o,$$^) $(STATIC_LIBS) $(EXTRA_LIBS)
endef
$(foreach p,$(PLUGIN_NAMES),$(eval $(call PLUGIN_RULE,$(p))))

# Fixture plugins for the loader tests. unresolved_symbol must link with an undefined symbol,
# so it skips -z defs; no_entry_symbol is built without the version script on purpose.
$(BUILD)/test_plugins/%.so: tests/plugins/%.c $(wildcard tests/plugins/*.h) sdk/include/pio/plugin.h $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(PLUGIN_CFLAGS) $(LDFLAGS) -shared \
	  $(if $(filter unresolved_symbol no_entry_symbol,$*),,-Wl,--version-script=sdk/plugin.map -Wl,-z,defs) \
	  -o $@ $<
$(BUILD)/test_plugins/not_an_elf.so:
	@mkdir -p $(dir $@)
	printf 'this is a text file, not a shared object\n' > $@
$(BUILD)/test_plugins/good_a_copy.so: $(BUILD)/test_plugins/good_a.so
	cp $< $@

$(BUILD)/tests/%: tests/%.c $(HOST_LIB) $(SDK_LIB) $(KERNELS_LIB) $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -DPIO_TEST_SHARED_DIR='"$(SHARED)"' -DPIO_TEST_BUILD_DIR='"$(BUILD)"' -DPIO_TEST_SANITIZE=$(SANITIZE) \
	  -MMD -MP -o $@ $< $(HOST_LIB) $(STATIC_LIBS) $(LDFLAGS) -rdynamic -lcmocka -lyaml $(EXTRA_LIBS)

# One command from a fresh clone: install what is missing, build, ask the demo model.
deps:
	bash tools/install_deps.sh
run: deps
	$(MAKE) all
	$(PIO) run -c configs/demo.yaml -p "$(DEMO_QUESTION)"

test-build: all $(TESTS) $(FIXTURE_PLUGINS)

test: test-build
	BUILD=$(BUILD) PREFIX=$(PREFIX) CC=$(CC) SHARED=$(SHARED) sh tests/run_tests.sh $(TESTS)

$(BUILD)/pio-sdk.pc: sdk/pio-sdk.pc.in Makefile $(FLAGS_STAMP) $(PREFIX_STAMP)
	@mkdir -p $(dir $@)
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@CUDA_LIBS@|$(CUDA_LDLIBS)|g' \
	  -e 's|@VERSION@|$(shell sed -n 's/^#define PIO_SDK_VERSION_STRING "\(.*\)"/\1/p' sdk/include/pio/plugin.h)|g' $< > $@

SDK_HEADERS := $(wildcard sdk/include/pio/*.h)
# The public compute-layer headers (backend internals stay private).
KERNEL_HEADERS := kernels/ops.h kernels/tensor.h kernels/kv_cache.h kernels/sampler.h \
                  kernels/transformer_blocks.h kernels/comm.h
install: all $(KERNELS_LIB)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pio/plugins \
	  $(DESTDIR)$(PREFIX)/include/pio $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 755 $(PIO) $(DESTDIR)$(PREFIX)/bin/pio
	$(if $(PLUGINS),install -m 755 $(PLUGINS) $(DESTDIR)$(PREFIX)/lib/pio/plugins/)
	install -m 644 $(SDK_HEADERS) $(DESTDIR)$(PREFIX)/include/pio/
	install -d $(DESTDIR)$(PREFIX)/include/pio/kernels
	install -m 644 $(KERNEL_HEADERS) $(DESTDIR)$(PREFIX)/include/pio/kernels/
	install -m 644 $(SDK_LIB) $(DESTDIR)$(PREFIX)/lib/libpio_sdk.a
	install -m 644 $(KERNELS_LIB) $(DESTDIR)$(PREFIX)/lib/libpio_kernels.a
	install -m 644 sdk/plugin.map $(DESTDIR)$(PREFIX)/lib/pio/plugin.map
	install -m 644 $(BUILD)/pio-sdk.pc $(DESTDIR)$(PREFIX)/lib/pkgconfig/pio-sdk.pc

uninstall:
	rm -f $(addprefix $(DESTDIR)$(PREFIX)/include/pio/kernels/,$(notdir $(KERNEL_HEADERS)))
	rm -f $(DESTDIR)$(PREFIX)/bin/pio $(DESTDIR)$(PREFIX)/lib/libpio_sdk.a $(DESTDIR)$(PREFIX)/lib/libpio_kernels.a \
	  $(DESTDIR)$(PREFIX)/lib/pio/plugin.map $(DESTDIR)$(PREFIX)/lib/pkgconfig/pio-sdk.pc
	rm -f $(addprefix $(DESTDIR)$(PREFIX)/lib/pio/plugins/,$(notdir $(PLUGINS)))
	rm -f $(addprefix $(DESTDIR)$(PREFIX)/include/pio/,$(notdir $(SDK_HEADERS)))
	-rmdir $(DESTDIR)$(PREFIX)/lib/pio/plugins $(DESTDIR)$(PREFIX)/lib/pio \
	  $(DESTDIR)$(PREFIX)/include/pio/kernels $(DESTDIR)$(PREFIX)/include/pio 2>/dev/null

clean:
	rm -rf build build-asan

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# Tokenizer encode throughput (a benchmark, not a test); docs/BENCHMARKS.md says how it is run.
# BENCH_LIBS='-Wl,-Bstatic -ljansson -lpcre2-8 -lutf8proc -Wl,-Bdynamic -lm -lpthread -ldl'
# gives a binary that runs where those libraries are not installed.
BENCH_LIBS ?= $(EXTRA_LIBS)
.PHONY: bench-tokenizer
bench-tokenizer: $(BUILD)/bin/bench_tokenizer
$(BUILD)/bin/bench_tokenizer: benchmarks/bench_tokenizer.c $(SDK_LIB) $(KERNELS_LIB) $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -o $@ $< $(STATIC_LIBS) $(LDFLAGS) $(BENCH_LIBS)

# libFuzzer targets (clang): tests/fuzz/fuzz_NAME.c -> $(BUILD)/fuzz/fuzz_NAME, linked with the
# SDK and host sources they exercise. Not part of `make test`; run e.g.
#   build/fuzz/fuzz_safetensors -max_total_time=60 CORPUS_DIR
FUZZ_SRCS := $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZ_FLAGS := -std=c11 -D_GNU_SOURCE -Isdk/include -I. -g -O1 -fsanitize=fuzzer,address,undefined
.PHONY: fuzz
fuzz: $(FUZZ_SRCS:tests/fuzz/%.c=$(BUILD)/fuzz/%)
$(BUILD)/fuzz/%: tests/fuzz/%.c $(SDK_SRCS) $(KERNEL_SRCS) $(HOST_SRCS)
	@mkdir -p $(dir $@)
	clang $(FUZZ_FLAGS) -fopenmp $< $(SDK_SRCS) $(KERNEL_SRCS) $(HOST_SRCS) -lyaml $(EXTRA_LIBS) -o $@

# A short run of every fuzz target (CI runs this; FUZZ_SECONDS each). New inputs go to
# $(BUILD)/fuzz_corpus/NAME; the committed fixtures are read-only seeds.
FUZZ_SECONDS ?= 15
FUZZ_CORPUS := $(BUILD)/fuzz_corpus
.PHONY: fuzz-smoke
fuzz-smoke: fuzz
	mkdir -p $(FUZZ_CORPUS)/config $(FUZZ_CORPUS)/safetensors $(FUZZ_CORPUS)/tokenizer
	$(BUILD)/fuzz/fuzz_config -max_total_time=$(FUZZ_SECONDS) $(FUZZ_CORPUS)/config tests/fixtures/config
	$(BUILD)/fuzz/fuzz_safetensors -max_total_time=$(FUZZ_SECONDS) -max_len=4096 $(FUZZ_CORPUS)/safetensors
	PIO_FUZZ_TOKENIZER=$(SHARED)/models/qwen3_4b_instruct_2507/tokenizer.json \
	  $(BUILD)/fuzz/fuzz_tokenizer -max_total_time=$(FUZZ_SECONDS) -max_len=65536 \
	  $(FUZZ_CORPUS)/tokenizer tests/fixtures/tokenizer

# ==========================================================================================
# CUDA section: the CUDA backend (kernels/cuda/*.cu), the GPU tests and the GPU bundle.
# Nothing here is compiled with CUDA=0.
#
#   make test-gpu     build and run tests/gpu/test_*.c (needs a GPU; not part of make test)
#   make gpu-bundle   build into build-gpu/ (CUDA=1) and gather build-gpu/bundle/: bin/,
#                     plugins/, tests/, lib/ (the non-CUDA shared libraries) and
#                     run-gpu-tests.sh, for the GPU machine (docs/KERNELS.md, "CUDA backend")
# ==========================================================================================
GPU_BUILD ?= build-gpu
.PHONY: test-gpu gpu-bundle
ifeq ($(CUDA),1)
CUDA_SRCS    := $(sort $(wildcard kernels/cuda/*.cu))
CUDA_OBJS    := $(CUDA_SRCS:%.cu=$(OBJ)/%.o)
NVCC_GENCODE := -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_90,code=compute_90
NVCC_FLAGS   := -std=c++17 $(OPT) -lineinfo $(NVCC_GENCODE) --Werror all-warnings \
                -Xcompiler -fPIC,-Wall,-Wextra,-Werror,-fno-exceptions,-fno-rtti,-fno-threadsafe-statics
# (CUDA_LDLIBS, and the rpath of GPU_RPATH=1, are set near the top, where CUDA is detected.)

GPU_TEST_SRCS := $(sort $(wildcard tests/gpu/test_*.c))
GPU_TESTS     := $(GPU_TEST_SRCS:tests/%.c=$(BUILD)/tests/%)

# Rebuilt when nvcc or its flags change (the link flags are in the common flags stamp).
CUDA_STAMP := $(BUILD)/cuda.stamp
CUDA_BUILD_FLAGS := $(NVCC) $(CPPFLAGS) $(NVCC_FLAGS)
ifneq ($(CUDA_BUILD_FLAGS),$(file <$(CUDA_STAMP)))
$(shell mkdir -p $(BUILD))
$(file >$(CUDA_STAMP),$(CUDA_BUILD_FLAGS))
endif

$(OBJ)/kernels/cuda/%.o: kernels/cuda/%.cu $(FLAGS_STAMP) $(CUDA_STAMP)
	@mkdir -p $(dir $@)
	$(NVCC) $(CPPFLAGS) $(NVCC_FLAGS) -MMD -MP -MF $(@:.o=.d) -c $< -o $@

$(KERNELS_LIB): $(CUDA_OBJS)

test-gpu: $(GPU_TESTS)
	sh tests/run_tests.sh $(GPU_TESTS)

# What the GPU's reads reach, as references for the decode kernels (a benchmark, not a test;
# benchmarks/gpu_read_floor.cu says what it measures).
GPU_BENCHES := $(BUILD)/bin/gpu_read_floor
$(BUILD)/bin/gpu_read_floor: benchmarks/gpu_read_floor.cu kernels/cuda/cuda_internal.h $(CUDA_STAMP)
	@mkdir -p $(dir $@)
	$(NVCC) $(CPPFLAGS) $(NVCC_FLAGS) -o $@ $<

gpu-bundle:
	$(MAKE) BUILD=$(GPU_BUILD) CUDA=1 GPU_RPATH=1 all gpu-tests-build
	sh tools/gpu_bundle.sh $(GPU_BUILD) $(GPU_BUILD)/bundle

.PHONY: gpu-tests-build
gpu-tests-build: $(GPU_TESTS) $(GPU_BENCHES)
else
test-gpu gpu-bundle:
	@echo "$@ needs CUDA: nvcc was not found (or CUDA=0 was given)" >&2; exit 1
endif
.PHONY: clean-gpu
clean-gpu:
	rm -rf $(GPU_BUILD)
clean: clean-gpu
