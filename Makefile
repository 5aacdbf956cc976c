# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv and install what they need; running them twice is safe.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BASE := $(VENV)/.installed-base
STAMP := $(VENV)/.installed
FASHION := /usr/share/datasets/fashion-mnist

.PHONY: demo test install data browser clean

# constraints.txt pins the exact versions (torch 2.14.1, torchvision 0.29.1, ...) inside
# pyproject's ranges, so every machine installs the same set. The demo needs the package alone;
# the suite adds the test extras (export, serve, docs, pytest)
$(BASE): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e .
	touch $(BASE)

$(STAMP): $(BASE)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Debian ships Fashion-MNIST whole; where apt is not available the demo falls
# back to torchvision's download (see resnetlab.data.readers.builtin).
data:
	@if [ ! -f $(FASHION)/t10k-labels-idx1-ubyte.gz ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) || \
		echo "note: could not install dataset-fashion-mnist; the demo will try torchvision's download"; \
	fi

# Debian's chromium: the report test opens report.html in a real headless browser.
browser:
	@if ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then \
		(apt-get install -y -q chromium >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) || \
		echo "note: could not install chromium; the browser test will be skipped"; \
	fi

demo: $(BASE) data
	$(PY) -m resnetlab train fashion-mnist-fast

test: install data browser
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs
