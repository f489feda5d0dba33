# The two commands of the README: `make example` and `make test`.
PYTHON := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup setup-test example test bench clean

setup:
	scripts/setup.sh

setup-test:
	scripts/setup.sh --test

# Set up, then run the 1CZY example job (TRAF2 with the peptide PQQATDD) into output/1czy.
example: setup
	.venv/bin/peptide-opt run \
		--receptor examples/1czy/1czy_complex.pdb \
		--peptide examples/1czy/peptide.fasta \
		--site-chain B \
		--output-dir output/1czy

# Set up with the test tools, then run the whole test suite.
test: setup-test
	$(PYTHON) -m pytest $(PYTEST_ARGS)

# Benchmarks are one command each; see docs/benchmarks.md.
bench: setup-test
	$(PYTHON) -m bench.pipeline 1czy

clean:
	rm -rf output .pytest_cache
