# Benchmark targets (included by the top Makefile). See bench/run.py and bench/RESULTS.md.
#
#   sudo make bench                 every contender, 3 interleaved repetitions (duration: bench/RESULTS.md)
#   sudo make bench BENCH_ARGS='--reps 1 --levels moderate,storm --storm-n 2000'   a quick look
#   sudo make bench-smoke           baseline + procsentry bpf, 200 execs, 1 repetition: bench/out/smoke/

BENCH_ARGS ?=

.PHONY: bench bench-smoke

bench: setup
	@bash bench/setup.sh
	@$(PY) bench/run.py $(BENCH_ARGS)

bench-smoke: setup
	@$(PY) bench/run.py --smoke --out bench/out/smoke/RESULTS.md --json bench/out/smoke/results.json --workdir bench/out/smoke $(BENCH_ARGS)
