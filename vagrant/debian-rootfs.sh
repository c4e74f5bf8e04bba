# Sourced by the two Debian image builders (build-debian-box.sh, agent-systemd-check.sh).

# write_apt_sources ROOT SUITE: the image's apt sources, the Debian archive's own (not the
# mirror debootstrap used: the image must update from anywhere), with -updates and -security.
write_apt_sources() {
    cat > "$1/etc/apt/sources.list" <<SOURCES
deb http://deb.debian.org/debian $2 main
deb http://deb.debian.org/debian $2-updates main
deb http://deb.debian.org/debian-security $2-security main
SOURCES
}
