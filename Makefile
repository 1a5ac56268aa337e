# ragsnv: every target builds what it needs from nothing (a venv in $(VENV)).
# GPU users: make install TORCH='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128' EXTRAS=gpu,dev
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
EXTRAS ?= cpu,dev
BIN    := $(VENV)/bin
DEMO   ?= demo
SEED   ?= 1

.PHONY: install test demo lint bench compare compare-admixed compare-real compare-real-run compare-unphased clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/pytest -q --durations=10 tests

lint: install
	$(BIN)/ruff check ragprep stores ragtrain tests

demo: install
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(BIN)/ragprep simulate --out $(DEMO)/panel.vcf.gz --samples 400 --holdout 40 --length 5e5 --seed $(SEED)
	$(BIN)/ragprep encode $(DEMO)/panel.vcf.gz --out $(DEMO)/store.zarr --window 128 --stride 112 --seed $(SEED)
	$(BIN)/ragprep inspect $(DEMO)/store.zarr
	$(BIN)/ragtrain fit --store $(DEMO)/store.zarr --out $(DEMO)/run --targets $(DEMO)/panel.target.vcf.gz \
		--max-steps 150 --eval-every 75 --seed $(SEED)
	$(BIN)/ragtrain impute $(DEMO)/panel.target.vcf.gz --store $(DEMO)/store.zarr --model $(DEMO)/run/best.pt \
		--out $(DEMO)/imputed.vcf.gz
	$(BIN)/ragtrain evaluate $(DEMO)/imputed.vcf.gz --truth $(DEMO)/panel.truth.vcf.gz --store $(DEMO)/store.zarr \
		--out $(DEMO)/report

# Memory, speed, store size and accuracy cost, measured (docs/benchmarks.md). On a CUDA machine:
#   make bench BENCH_CONFIG=research
BENCH_CONFIG ?= cpu
BENCH_OUT    ?= bench
bench: install
	$(BIN)/ragtrain bench --config $(BENCH_CONFIG) --out $(BENCH_OUT) --seed $(SEED)

# ragsnv and Beagle 5.4 on the same simulated split (OutOfAfrica panel, held-out array-typed targets);
# `make compare SEED=2` for another split, `make compare-admixed` for admixed targets. Both tools train as
# README recommends: defaults plus --targets.
COMPARE     ?= compare
# 800 steps: the network runs only over the sites the copying model is unsure of, so twice the steps of the
# earlier 400 train in less time than those did (docs/benchmarks.md)
COMPARE_STEPS ?= 800
COMPARE_EVAL  ?= 400
MODEL       ?= OutOfAfrica_3G09
HOLDOUT_POP ?=
compare: install
	rm -rf $(COMPARE) && mkdir -p $(COMPARE)
	$(BIN)/ragprep simulate --out $(COMPARE)/panel.vcf.gz --samples 1000 --holdout 100 --length 1e6 --seed $(SEED) \
		--model $(MODEL) $(if $(HOLDOUT_POP),--holdout-population $(HOLDOUT_POP))
	/usr/bin/time -f "ragsnv encode wall %e s" $(BIN)/ragprep encode $(COMPARE)/panel.vcf.gz \
		--out $(COMPARE)/store.zarr --seed $(SEED)
	/usr/bin/time -f "ragsnv fit wall %e s" $(BIN)/ragtrain fit --store $(COMPARE)/store.zarr --out $(COMPARE)/run \
		--targets $(COMPARE)/panel.target.vcf.gz --max-steps $(COMPARE_STEPS) --eval-every $(COMPARE_EVAL) --seed $(SEED)
	/usr/bin/time -f "ragsnv impute wall %e s" $(BIN)/ragtrain impute $(COMPARE)/panel.target.vcf.gz \
		--store $(COMPARE)/store.zarr --model $(COMPARE)/run/best.pt --out $(COMPARE)/ragsnv.vcf.gz
	command -v beagle >/dev/null || apt-get install -y -q beagle >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null 2>&1 && apt-get install -y -q beagle >/dev/null 2>&1) || true
	if command -v beagle >/dev/null; then \
		/usr/bin/time -f "beagle wall %e s" beagle ref=$(COMPARE)/panel.vcf.gz gt=$(COMPARE)/panel.target.vcf.gz \
			out=$(COMPARE)/beagle gp=true seed=$(SEED) nthreads=2 >/dev/null && \
		$(BIN)/ragtrain evaluate $(COMPARE)/ragsnv.vcf.gz $(COMPARE)/beagle.vcf.gz --truth $(COMPARE)/panel.truth.vcf.gz \
			--store $(COMPARE)/store.zarr --out $(COMPARE)/report; \
	else \
		echo "beagle could not be installed (Debian package 'beagle'): scoring ragsnv alone"; \
		$(BIN)/ragtrain evaluate $(COMPARE)/ragsnv.vcf.gz --truth $(COMPARE)/panel.truth.vcf.gz \
			--store $(COMPARE)/store.zarr --out $(COMPARE)/report; \
	fi

# Targets from the admixed population of AmericanAdmixture_4B18 (African, European and Asian ancestry); the
# panel holds all four populations, the other admixed samples among them.
compare-admixed:
	$(MAKE) --no-print-directory compare MODEL=AmericanAdmixture_4B18 HOLDOUT_POP=ADMIX COMPARE=compare-admixed

# ragsnv and Beagle 5.4 on a real split: 1000 Genomes phase 3 EUR, chr20:1-4 Mb (Debian `shapeit4-example`).
# The 300 reference + 202 phased samples of unphased.vcf.gz are merged; 50 are held out, typed at the OMNI
# scaffold sites. Same stages and flags as `compare`. `make compare-real MAP=1 COMPARE_REAL=compare-real-map`:
# both tools given the region's genetic map (shapeit4's chr20.b37.gmap.gz; Beagle's copy in PLINK format).
COMPARE_REAL ?= compare-real
MAP          ?=
REAL_DATA    ?= /usr/share/doc/shapeit4/examples/test
compare-real: install
	test -f $(REAL_DATA)/reference.vcf.gz || apt-get install -y -q shapeit4-example >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null 2>&1 && apt-get install -y -q shapeit4-example >/dev/null 2>&1) || true
	@if test -f $(REAL_DATA)/reference.vcf.gz; then $(MAKE) --no-print-directory compare-real-run; else \
		echo "skipping compare-real: $(REAL_DATA)/reference.vcf.gz is missing and the Debian package" \
			"'shapeit4-example' could not be installed (apt-get install shapeit4-example, or set REAL_DATA)"; fi

compare-real-run:
	rm -rf $(COMPARE_REAL) && mkdir -p $(COMPARE_REAL)
	/usr/bin/time -f "ragprep split wall %e s" $(BIN)/ragprep split $(REAL_DATA)/reference.vcf.gz \
		$(REAL_DATA)/unphased.vcf.gz --out $(COMPARE_REAL)/panel.vcf.gz --holdout 50 \
		--sites $(REAL_DATA)/scaffold.vcf.gz --seed $(SEED)
	$(if $(MAP),zcat $(REAL_DATA)/chr20.b37.gmap.gz | awk 'NR > 1 {print $$2 "\t.\t" $$3 "\t" $$1}' \
		> $(COMPARE_REAL)/chr20.plink.map)
	/usr/bin/time -f "ragsnv encode wall %e s" $(BIN)/ragprep encode $(COMPARE_REAL)/panel.vcf.gz \
		--out $(COMPARE_REAL)/store.zarr --seed $(SEED) $(if $(MAP),--genetic-map $(REAL_DATA)/chr20.b37.gmap.gz)
	/usr/bin/time -f "ragsnv fit wall %e s" $(BIN)/ragtrain fit --store $(COMPARE_REAL)/store.zarr \
		--out $(COMPARE_REAL)/run --targets $(COMPARE_REAL)/panel.target.vcf.gz --max-steps $(COMPARE_STEPS) --eval-every $(COMPARE_EVAL) \
		--seed $(SEED)
	/usr/bin/time -f "ragsnv impute wall %e s" $(BIN)/ragtrain impute $(COMPARE_REAL)/panel.target.vcf.gz \
		--store $(COMPARE_REAL)/store.zarr --model $(COMPARE_REAL)/run/best.pt --out $(COMPARE_REAL)/ragsnv.vcf.gz
	command -v beagle >/dev/null || apt-get install -y -q beagle >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null 2>&1 && apt-get install -y -q beagle >/dev/null 2>&1) || true
	if command -v beagle >/dev/null; then \
		/usr/bin/time -f "beagle wall %e s" beagle ref=$(COMPARE_REAL)/panel.vcf.gz \
			gt=$(COMPARE_REAL)/panel.target.vcf.gz out=$(COMPARE_REAL)/beagle gp=true seed=$(SEED) nthreads=2 \
			$(if $(MAP),map=$(COMPARE_REAL)/chr20.plink.map) >/dev/null && \
		$(BIN)/ragtrain evaluate $(COMPARE_REAL)/ragsnv.vcf.gz $(COMPARE_REAL)/beagle.vcf.gz \
			--truth $(COMPARE_REAL)/panel.truth.vcf.gz --store $(COMPARE_REAL)/store.zarr --out $(COMPARE_REAL)/report; \
	else \
		echo "beagle could not be installed (Debian package 'beagle'): scoring ragsnv alone"; \
		$(BIN)/ragtrain evaluate $(COMPARE_REAL)/ragsnv.vcf.gz --truth $(COMPARE_REAL)/panel.truth.vcf.gz \
			--store $(COMPARE_REAL)/store.zarr --out $(COMPARE_REAL)/report; \
	fi

# The array user's path on a split made above: its targets unphased (`ragprep unphase`: phase removed, each
# heterozygote's alleles shuffled), then phased and imputed by ragsnv (the split's trained model) and by Beagle;
# switch error and r2 side by side with both tools' phased-input files. `make compare-unphased UNPHASED_OF=compare`
# for the simulated split.
UNPHASED_OF ?= $(COMPARE_REAL)
compare-unphased: install
	@test -f $(UNPHASED_OF)/run/best.pt || { echo "no $(UNPHASED_OF)/run/best.pt: run 'make compare-real' first" \
		"(or 'make compare' and UNPHASED_OF=compare)"; exit 2; }
	$(BIN)/ragprep unphase $(UNPHASED_OF)/panel.target.vcf.gz --out $(UNPHASED_OF)/target.unphased.vcf.gz --seed $(SEED)
	/usr/bin/time -f "ragsnv impute (unphased targets) wall %e s" $(BIN)/ragtrain impute \
		$(UNPHASED_OF)/target.unphased.vcf.gz --store $(UNPHASED_OF)/store.zarr --model $(UNPHASED_OF)/run/best.pt \
		--out $(UNPHASED_OF)/ragsnv.unphased.vcf.gz --seed $(SEED)
	/usr/bin/time -f "beagle (unphased targets) wall %e s" beagle ref=$(UNPHASED_OF)/panel.vcf.gz \
		gt=$(UNPHASED_OF)/target.unphased.vcf.gz out=$(UNPHASED_OF)/beagle.unphased gp=true seed=$(SEED) nthreads=2 \
		>/dev/null
	$(BIN)/ragtrain evaluate $(UNPHASED_OF)/ragsnv.unphased.vcf.gz $(UNPHASED_OF)/beagle.unphased.vcf.gz \
		$(UNPHASED_OF)/ragsnv.vcf.gz $(UNPHASED_OF)/beagle.vcf.gz --truth $(UNPHASED_OF)/panel.truth.vcf.gz \
		--store $(UNPHASED_OF)/store.zarr --out $(UNPHASED_OF)/report-unphased

clean:
	rm -rf $(VENV) $(DEMO) $(COMPARE) compare-admixed $(COMPARE_REAL) $(BENCH_OUT) *.egg-info
