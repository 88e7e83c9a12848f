# Two commands for a fresh machine: `make demo` and `make test`. Both install what they need into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[test,examples]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m examples.digits

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m benchmarks.bench_engine
	$(PY) -m benchmarks.bench_auto
	$(PY) -m benchmarks.bench_auto_models
	$(PY) -m benchmarks.bench_overhead
	$(PY) -m benchmarks.bench_memory

clean:
	rm -rf $(VENV) runs lightning_logs
