#!/usr/bin/env bash
# Installs Pilot from this source tree as the .deb would, for hosts without the package:
# pilotd and pilotctl, the systemd units, their users and directories, the polkit rule, the
# default configs in /etc/pilot (never overwriting ones that exist), shell completions (bash,
# zsh, fish) and man pages under PREFIX/share. Enables and starts nothing. Safe to run again:
# it brings the installation up to date with this tree.
#
#   sudo scripts/install.sh               build (if needed) and install under /usr
#   sudo PREFIX=/usr/local scripts/install.sh
#   sudo scripts/install.sh --uninstall   remove it all but /etc/pilot and the state
#   sudo scripts/install.sh --purge       remove /etc/pilot and /var/lib/pilot* too
#
# Binaries come from target/release (built with `cargo build --release --locked` when missing
# or older than the sources). Under sudo, build as yourself first so target/ stays yours.
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=${PREFIX:-/usr}
case "$PREFIX" in
/usr) libdir=/usr/lib polkitdir=/usr/share/polkit-1/rules.d ;;
/usr/local) libdir=/usr/local/lib polkitdir=/etc/polkit-1/rules.d ;;
*)
    # systemd searches for units, sysusers.d and tmpfiles.d only under /etc, /usr and /usr/local.
    libdir=/etc polkitdir=/etc/polkit-1/rules.d
    ;;
esac
if [[ $libdir == /etc ]]; then
    unitdir=/etc/systemd/system sysusersdir=/etc/sysusers.d tmpfilesdir=/etc/tmpfiles.d
else
    unitdir=$libdir/systemd/system sysusersdir=$libdir/sysusers.d tmpfilesdir=$libdir/tmpfiles.d
fi
bindir=$PREFIX/bin
docdir=$PREFIX/share/doc/pilot
mandir=$PREFIX/share/man/man1
bashcompdir=$PREFIX/share/bash-completion/completions
fishcompdir=$PREFIX/share/fish/vendor_completions.d
# Debian's zsh searches vendor-completions under /usr, site-functions elsewhere.
if [[ $PREFIX == /usr ]]; then
    zshcompdir=/usr/share/zsh/vendor-completions
else
    zshcompdir=$PREFIX/share/zsh/site-functions
fi
confdir=/etc/pilot
units=(pilotd.service pilot-rendezvous.service)
users=(pilot pilot-rendezvous)

die() {
    echo "install.sh: $*" >&2
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }
# shellcheck source=lib/root.sh
source scripts/lib/root.sh
systemd_running() { [[ -d /run/systemd/system ]]; }

mode=install
case "${1:-}" in
"") ;;
--uninstall) mode=uninstall ;;
--purge) mode=purge ;;
-h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
*) die "unknown argument '$1' (expected --uninstall, --purge or nothing)" ;;
esac

[[ $(id -u) == 0 ]] || die "run as root (sudo $0 $*)"
if dpkg-query -W -f='${Status}' pilot 2>/dev/null | grep -q "install ok installed"; then
    die "the pilot package is installed; use apt/dpkg for it (or remove it first)"
fi

# Copies $1 to $2 with mode $3, only when the content differs (so a second run changes nothing).
put() {
    if ! cmp -s "$1" "$2"; then
        install -D -m "$3" "$1" "$2"
        echo "installed $2"
    fi
}

# The unit with this installation's paths instead of the package's /usr ones.
unit_for_prefix() {
    sed -e "s|/usr/bin/pilotd|$bindir/pilotd|g" \
        -e "s|/usr/share/doc/pilot/|$docdir/|g" \
        -e "s|/usr/share/polkit-1/rules.d/pilot.rules|$polkitdir/pilot.rules|g" "$1"
}

# Completions and man pages, generated from the command lines into packaging/ (see
# src/cli/packaging_files.rs); man pages gzipped as the package has them (-n: the same bytes
# every time, so a second run changes nothing).
install_docs() {
    local bin page tmp
    for bin in pilotd pilotctl; do
        put "packaging/completions/$bin.bash" "$bashcompdir/$bin" 644
        put "packaging/completions/_$bin" "$zshcompdir/_$bin" 644
        put "packaging/completions/$bin.fish" "$fishcompdir/$bin.fish" 644
    done
    tmp=$(mktemp)
    for page in packaging/man/*.1; do
        gzip -9 -n -c "$page" >"$tmp"
        put "$tmp" "$mandir/$(basename "$page").gz" 644
    done
    rm -f "$tmp"
}

# Every completion and man page installed (those of commands removed since, too).
installed_docs() {
    local bin
    for bin in pilotd pilotctl; do
        printf '%s\n' "$bashcompdir/$bin" "$zshcompdir/_$bin" "$fishcompdir/$bin.fish"
    done
    find "$mandir" -maxdepth 1 \( -name 'pilotd.1.gz' -o -name 'pilotd-*.1.gz' \
        -o -name 'pilotctl.1.gz' -o -name 'pilotctl-*.1.gz' \) 2>/dev/null || true
}

build_if_needed() {
    local stale=0 bin
    for bin in pilotd pilotctl; do
        [[ -x target/release/$bin ]] || stale=1
        if ((!stale)) && [[ -n $(find src Cargo.toml Cargo.lock -newer "target/release/$bin" -print -quit) ]]; then
            stale=1
        fi
    done
    ((stale)) || return 0
    echo "building release binaries"
    if have cargo; then
        cargo build --release --locked
    elif sudo_user_has_cargo; then
        # sudo resets PATH, so root sees no rustup cargo: build as the user who called sudo,
        # which also keeps target/ theirs.
        as_sudo_user cargo build --release --locked
    else
        die "target/release/pilotd is missing or stale and cargo is not on root's PATH: run \`cargo build --release --locked\` as yourself, then this again"
    fi
}

create_users() {
    if have systemd-sysusers; then
        systemd-sysusers pilot.conf
        return
    fi
    local user
    for user in "${users[@]}"; do
        getent passwd "$user" >/dev/null && continue
        if have adduser; then
            adduser --system --group --quiet --no-create-home --home / --shell /usr/sbin/nologin "$user"
        else
            useradd --system --user-group --no-create-home --home-dir / --shell /usr/sbin/nologin "$user"
        fi
        echo "created user $user"
    done
}

install_all() {
    for f in packaging/pilotd.toml packaging/rendezvous.toml; do
        [[ -f $f ]] || die "$f is missing from this tree"
    done
    build_if_needed
    put target/release/pilotd "$bindir/pilotd" 755
    put target/release/pilotctl "$bindir/pilotctl" 755
    put README.md "$docdir/README.md" 644
    install_docs
    local unit tmp
    tmp=$(mktemp)
    for unit in "${units[@]}"; do
        unit_for_prefix "systemd/$unit" >"$tmp"
        put "$tmp" "$unitdir/$unit" 644
    done
    rm -f "$tmp"
    put systemd/pilot.sysusers "$sysusersdir/pilot.conf" 644
    put systemd/pilot.tmpfiles "$tmpfilesdir/pilot.conf" 644
    put packaging/polkit/pilot.rules "$polkitdir/pilot.rules" 644
    # The operator's configuration is theirs: only a missing file is put in place.
    for f in pilotd.toml rendezvous.toml; do
        if [[ ! -e $confdir/$f ]]; then
            install -D -m 644 "packaging/$f" "$confdir/$f"
            echo "installed $confdir/$f"
        fi
    done
    create_users
    if have systemd-tmpfiles; then
        systemd-tmpfiles --create --exclude-prefix=/dev pilot.conf
        # The ACL entry for a 0600 /dev/net/tun (pilot.tmpfiles); pilotd explains if it fails.
        systemd-tmpfiles --create --prefix=/dev/net/tun pilot.conf ||
            echo "could not grant user pilot access to /dev/net/tun (see README: Install as a service)" >&2
    else
        install -d -m 700 -o pilot -g pilot /var/lib/pilot
        install -d -m 700 -o pilot-rendezvous -g pilot-rendezvous /var/lib/pilot-rendezvous
    fi
    if systemd_running; then
        systemctl daemon-reload
        # Running daemons move to the new binary; nothing else starts.
        systemctl try-restart "${units[@]}"
    fi
    echo "Pilot is installed; nothing is enabled. Edit $confdir/pilotd.toml, then: systemctl enable --now pilotd"
}

uninstall_all() {
    if systemd_running; then
        systemctl disable --now "${units[@]}" >/dev/null 2>&1 || true
    fi
    local f docs
    mapfile -t docs < <(installed_docs)
    for f in "$bindir/pilotd" "$bindir/pilotctl" "$docdir/README.md" \
        "$unitdir/pilotd.service" "$unitdir/pilot-rendezvous.service" \
        "$sysusersdir/pilot.conf" "$tmpfilesdir/pilot.conf" "$polkitdir/pilot.rules" \
        "${docs[@]}"; do
        if [[ -e $f ]]; then
            rm -f "$f"
            echo "removed $f"
        fi
    done
    rmdir "$docdir" 2>/dev/null || true
    # The ACL entry for user pilot on /dev/net/tun, and the ACL's mask if it was the only
    # named entry (as the package's postrm does).
    if [[ -e /dev/net/tun ]] && have setfacl && getent passwd pilot >/dev/null &&
        setfacl -x u:pilot /dev/net/tun 2>/dev/null; then
        if ! getfacl -cp /dev/net/tun 2>/dev/null | grep -Eq '^(user|group):[^:]+:'; then
            setfacl -b /dev/net/tun || true
        fi
    fi
    if systemd_running; then
        systemctl daemon-reload
    fi
    if [[ $mode == purge ]]; then
        rm -rf "$confdir" /var/lib/pilot /var/lib/pilot-rendezvous /run/pilot
        echo "removed $confdir, /var/lib/pilot and /var/lib/pilot-rendezvous"
    else
        echo "kept $confdir and the state in /var/lib/pilot* (--purge removes them)"
    fi
    # Like the package: the system users stay, so a reinstall gets the same ids.
}

case $mode in
install) install_all ;;
*) uninstall_all ;;
esac
