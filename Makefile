# The two commands: `make serve` (set up, then serve the embedded default) and
# `make test` (set up everything from nothing, then run the whole suite). For contributors,
# `make check`: the fast tier (every unit test; no servers, browser, Janus, GStreamer or soak).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check
# torch==2.13.0 resolves to the local CPU wheel here; a bare `torch` pulls GBs of CUDA.
TORCH_SPEC ?= torch==2.13.0
# The Triton the suite is known to pass with (its interpreter and the ahead-of-time compile
# check use Triton's internals; 3.6, the GPU machines' version, passes too).
TRITON_SPEC ?= triton==3.9.0
HOST ?= 127.0.0.1
PORT ?= 8080
ARGS ?=

.PHONY: serve test check setup setup-test client browser janus gst-webrtc gstreamer promtool bench clean

# LONGLIVE_VIA_MAKE: the server's advice then says PORT= where the CLI's says --port
serve: setup client
	LONGLIVE_VIA_MAKE=1 $(VENV)/bin/longlive serve --host $(HOST) --port $(PORT) $(ARGS)

test: setup-test client browser janus gst-webrtc gstreamer promtool
	LONGLIVE_REQUIRE_BROWSER=1 LONGLIVE_REQUIRE_JANUS=1 LONGLIVE_REQUIRE_WEBRTCBIN=1 LONGLIVE_REQUIRE_GSTREAMER=1 \
	  LONGLIVE_REQUIRE_PROMTOOL=1 \
	  $(PY) -m pytest $(ARGS)

# the fast tier: tests marked `integration`, `browser` or `slow` (whole-model replays through the
# Triton interpreter, full bench runs) are left out, and tests/conftest.py fails
# any test of this tier that starts a server (so a test that should be marked is)
check: setup-test client
	LONGLIVE_FAST_TIER=1 $(PY) -m pytest -m "not integration and not browser and not slow" $(ARGS)

bench: setup
	$(VENV)/bin/longlive bench $(ARGS)

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml
	$(PY) -c 'import torch' 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -e '.[test]' "$(TRITON_SPEC)"
	touch $@

# @msgpack/msgpack for the browser, from the npm registry, copied to client/vendor/
client: client/vendor/msgpack/index.mjs
client/vendor/msgpack/index.mjs: client/package.json
	cd client && npm install --no-audit --no-fund --silent
	rm -rf client/vendor/msgpack && mkdir -p client/vendor
	cp -r client/node_modules/@msgpack/msgpack/dist.esm client/vendor/msgpack
	touch $@

# Debian's chromium for the browser tests (playwright's own download does not work here)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# Janus (Debian) and Meetecho's simple-whip-server in front of it, for the WHIP test and
# docs/DEPLOY.md. `apt-get install simple-whip-server` fails here (it wants Debian's nodejs,
# which conflicts with the installed Node), so: download the .deb, unpack it into
# $(WHIP_SERVER), npm-install its dependencies and patch its `listen` to take a host
# (127.0.0.1 by default: the original binds every interface). Quick when already done.
WHIP_SERVER := .cache/simple-whip-server
WHIP_DEPS := async@3 express@4 cors@2 colors@1.4.0 debug@4 websocket@1 body-parser@1
janus: $(WHIP_SERVER)/.ready
	@command -v janus >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	  -o DPkg::Lock::Timeout=300 janus >/dev/null; }

$(WHIP_SERVER)/.ready: tests/janus/simple-whip-server.config.js
	rm -rf $(WHIP_SERVER) && mkdir -p $(WHIP_SERVER)
	cd $(WHIP_SERVER) && { apt-get download -qq simple-whip-server 2>/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get update -qq && apt-get download -qq simple-whip-server; }; }
	dpkg-deb -x $(WHIP_SERVER)/simple-whip-server_*.deb $(WHIP_SERVER)/deb
	cp -r $(WHIP_SERVER)/deb/usr/share/simple-whip-server/src $(WHIP_SERVER)/app
	rm -f $(WHIP_SERVER)/app/config.js && cp tests/janus/simple-whip-server.config.js $(WHIP_SERVER)/app/config.js
	sed -i 's/http\.listen(config\.port, function/http.listen(config.port, config.host || "127.0.0.1", function/' \
	  $(WHIP_SERVER)/app/server.js
	sed -i "s/'WHIP REST API listening on \*:'/'WHIP REST API listening on ' + (config.host || '127.0.0.1') + ':'/" \
	  $(WHIP_SERVER)/app/server.js
	grep -q 'http.listen(config.port, config.host' $(WHIP_SERVER)/app/server.js
	cd $(WHIP_SERVER)/app && npm init -y >/dev/null && npm install --no-audit --no-fund --silent $(WHIP_DEPS)
	touch $@

# GStreamer's webrtcbin for the system Python (Debian's python3-gi), the WHEP player the WHEP
# test plays the stream with
GST_WEBRTC_PACKAGES := python3-gi gir1.2-gst-plugins-bad-1.0 gstreamer1.0-plugins-bad gstreamer1.0-nice \
  gstreamer1.0-plugins-good gstreamer1.0-libav
gst-webrtc:
	@/usr/bin/python3 -c "import gi; gi.require_version('GstWebRTC', '1.0'); from gi.repository import Gst; \
	  Gst.init(None); assert Gst.ElementFactory.find('webrtcbin') and Gst.ElementFactory.find('nicesrc')" \
	  2>/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq -o DPkg::Lock::Timeout=300 \
	  $(GST_WEBRTC_PACKAGES) >/dev/null; }

# GStreamer (Debian) and PyGObject in the virtualenv, for `serve --gst-sink` (docs/GSTREAMER.md)
# and its tests; plugins-ugly is x264enc, the H.264 encoder of the file example. The -dev packages
# are what pip needs to build PyGObject; newer PyGObject needs a newer GLib than Debian 12's.
GST_PACKAGES := gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly \
  gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 libgirepository1.0-dev libcairo2-dev pkg-config
gstreamer: setup
	@{ command -v gst-inspect-1.0 >/dev/null 2>&1 && gst-inspect-1.0 x264enc >/dev/null 2>&1 && \
	  ls /usr/lib/*/girepository-1.0/GstApp-1.0.typelib >/dev/null 2>&1 && \
	  { $(PY) -c 'import gi' 2>/dev/null || pkg-config --exists gobject-introspection-1.0 cairo; }; } || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq -o DPkg::Lock::Timeout=300 \
	  $(GST_PACKAGES) >/dev/null; }
	@$(PY) -c 'import gi' 2>/dev/null || $(PIP) install "PyGObject<3.51"

# Prometheus's promtool (Debian's prometheus package; Debian 12 has no smaller one) for the
# `promtool check metrics` test of GET /metrics. Only the tool is wanted: the package's postinst
# enables a Prometheus server on :9090 and starts it where it can (under systemd, or sysvinit
# without a policy-rc.d that forbids it), so stop and disable it; --no-install-recommends keeps
# out prometheus-node-exporter (another service, :9100).
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	  -o DPkg::Lock::Timeout=300 --no-install-recommends prometheus >/dev/null && \
	  { { $$SUDO systemctl disable --now prometheus.service || $$SUDO update-rc.d prometheus disable; \
	  $$SUDO /etc/init.d/prometheus stop; } >/dev/null 2>&1; true; }; }

clean:
	rm -rf $(VENV) client/node_modules client/vendor .pytest_cache $(WHIP_SERVER)
