# Host agent install (included by the top Makefile). See README "Running it as a host agent".
#
#   sudo make install                 /opt/procsentry venv, systemd unit, /etc/procsentry/procsentry.toml,
#                                     logrotate snippet; enables and starts the service under systemd
#   sudo make uninstall [PURGE=1]     removes them; data directories stay unless PURGE=1
#   sudo make install DESTDIR=/tmp/root   stage under a root (no systemctl)

DESTDIR ?=
PURGE ?= 0

.PHONY: install uninstall

install:
	@DESTDIR="$(DESTDIR)" bash scripts/install.sh install

uninstall:
	@DESTDIR="$(DESTDIR)" PURGE="$(PURGE)" bash scripts/install.sh uninstall
