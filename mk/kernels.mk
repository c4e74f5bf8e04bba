# Kernel matrix and Vagrant targets (included by the top Makefile). See vagrant/README.md.
#
#   sudo make test-kernels                 Debian 5.10 + 6.1 + 6.12 kernels under virtme-ng (TCG):
#                                          tests/bpf and the daemon check in each
#   sudo make test-kernels KERNELS=trixie  one kernel
#   make vagrant-validate                  static check of vagrant/Vagrantfile (libvirt + virtualbox)
#   sudo make vagrant-test [BOX=debian12]  vagrant up / sudo make test / destroy, one machine at a time
#   sudo make vagrant-box                  build the local Debian 12 libvirt box (offline stand-in)
#   sudo make test-service                 make install / reboot / kill / uninstall under a real
#                                          systemd (Debian 12 guest, QEMU TCG), ~5 min (+2 min
#                                          to build the image the first time)

KERNELS ?= bullseye bookworm trixie
VM_DIR ?= $(CURDIR)/vm
BOX ?=
PROVIDER ?= libvirt

.PHONY: test-kernels vagrant-validate vagrant-test vagrant-box test-service

# CI (.ci/run) calls this after `make test`: it validates the Vagrantfile first (seconds), then
# boots each kernel once. Fails if any kernel fails, boots the wrong kernel or runs no test.
test-kernels: setup vagrant-validate
	@VM_DIR=$(VM_DIR) bash scripts/test-kernels.sh $(KERNELS)

vagrant-validate:
	@bash scripts/vagrant-validate.sh

vagrant-test: vagrant-validate
	@VM_DIR=$(VM_DIR) PROVIDER=$(PROVIDER) bash vagrant/run-matrix.sh $(BOX)

vagrant-box:
	@VM_DIR=$(VM_DIR) bash vagrant/build-debian-box.sh

# The host agent under a real systemd (issue 15): vagrant/agent-systemd-check.sh. Results in
# $(VM_DIR)/results/agent-systemd/results.txt; fails if any check fails.
test-service:
	@VM_DIR=$(VM_DIR) bash vagrant/agent-systemd-check.sh
