# Delivery benchmark (included by the top Makefile). See bench/delivery.py.
#
#   sudo make bench-delivery        file, RELP (rsyslogd) and Redis: 20,000-exec storm, 800 execs at 200/s,
#                                   backlog drain; writes bench/DELIVERY.md (~5 min)

DELIVERY_ARGS ?=

.PHONY: bench-delivery

bench-delivery: setup
	@$(PY) bench/delivery.py --out bench/DELIVERY.md $(DELIVERY_ARGS)
