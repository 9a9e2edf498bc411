# Hestia — common tasks. `just --list` shows them.

venv := ".venv"
python := venv / "bin/python"

# Create the virtual environment and install Hestia with its test tools.
install:
    python3 -m venv {{venv}}
    {{venv}}/bin/pip install -q -e '.[dev]'

# Run the gateway (built-in demo unless a config file is given: just run hestia.yml).
run config="": install
    {{venv}}/bin/hestia serve {{ if config == "" { "" } else { "-c " + config } }}

# Run the whole test suite.
test *args: install
    {{venv}}/bin/pytest {{args}}

# Measure throughput, latency, cold-start latency and memory (see docs/performance.md).
bench *args: install
    {{python}} benchmarks/run.py {{args}}

# Lint and check formatting-level issues.
lint: install
    {{venv}}/bin/ruff check src tests benchmarks
