#!/usr/bin/env bash
# Builds the .deb with cargo-deb and checks it as an operator would meet it: its contents
# (completions and gzipped man pages of every command among them), conffiles and maintainer
# scripts; the units against systemd-analyze (verify, and a security
# exposure of at most $MAX_EXPOSURE); `dpkg -i` (twice: install, then reinstall as an
# upgrade) creating users and directories, working binaries, no unit enabled or started;
# `dpkg --purge` leaving nothing behind. Then the same round for scripts/install.sh.
#
# Needs root, cargo-deb, dpkg and systemd-analyze; without them it prints SKIP, except under
# CI=true, where that is a failure. Run as yourself, it builds the .deb as you and re-runs
# itself through sudo with it (PILOT_DEB). Changes the host (installs the package, then purges
# it): run it on a test machine. Does not need systemd to be running.
set -eEuo pipefail
trap 'echo "package-test: FAIL: line $LINENO: $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."
# shellcheck source=lib/root.sh
source scripts/lib/root.sh
back_to_sudo_user "$0" "$@"
started=$SECONDS
if ((EUID != 0)) && [[ -z ${PILOT_DEB:-} ]] && command -v cargo-deb >/dev/null; then
    echo "-- cargo deb (as $(id -un))"
    PILOT_DEB=$(cargo deb --locked)
    export PILOT_DEB
    ROOT_KEEP_ENV="PILOT_DEB MAX_EXPOSURE" become_root "$0" "$@"
fi

MAX_EXPOSURE=${MAX_EXPOSURE:-2.0}
units=(pilotd.service pilot-rendezvous.service)
# Every file the package must install (conffiles among them) and take away again.
files=(
    /usr/bin/pilotd
    /usr/bin/pilotctl
    /usr/lib/systemd/system/pilotd.service
    /usr/lib/systemd/system/pilot-rendezvous.service
    /usr/lib/sysusers.d/pilot.conf
    /usr/lib/tmpfiles.d/pilot.conf
    /usr/share/polkit-1/rules.d/pilot.rules
    /etc/pilot/pilotd.toml
    /etc/pilot/rendezvous.toml
    /usr/share/bash-completion/completions/pilotd
    /usr/share/bash-completion/completions/pilotctl
    /usr/share/zsh/vendor-completions/_pilotd
    /usr/share/zsh/vendor-completions/_pilotctl
    /usr/share/fish/vendor_completions.d/pilotd.fish
    /usr/share/fish/vendor_completions.d/pilotctl.fish
    /usr/share/man/man1/pilotd.1.gz
    /usr/share/man/man1/pilotctl.1.gz
)
conffiles=(/etc/pilot/pilotd.toml /etc/pilot/rendezvous.toml)
state_dirs=(/var/lib/pilot /var/lib/pilot-rendezvous /etc/pilot /run/pilot)

fail() {
    echo "package-test: FAIL: $*" >&2
    exit 1
}
skip() {
    if [[ ${CI:-} == true ]]; then
        fail "CI=true but the package test cannot run: $*"
    fi
    echo "SKIP package test: $*"
    exit 0
}
step() { echo "-- $*"; }

# The TUN device's ACL entry for the service user (pilot.tmpfiles): present or absent.
tun_acl() {
    getfacl -p /dev/net/tun 2>/dev/null | grep -q '^user:pilot:rw-$'
}

missing=()
[[ $(id -u) == 0 ]] || missing+=(root)
[[ -n ${PILOT_DEB:-} ]] || command -v cargo-deb >/dev/null || missing+=(cargo-deb)
for tool in dpkg dpkg-deb systemd-analyze systemctl getfacl setpriv ip; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
((${#missing[@]} == 0)) || skip "needs ${missing[*]}"
if dpkg-query -W -f='${Status}' pilot 2>/dev/null | grep -q "install ok installed"; then
    fail "the pilot package is already installed here; remove it (dpkg --purge pilot) first"
fi
for f in "${files[@]}"; do
    [[ ! -e $f ]] || fail "$f exists before the test (an earlier install?); remove it first"
done
[[ -e /dev/net/tun ]] || skip "needs /dev/net/tun"
! tun_acl || fail "user pilot already has an ACL entry on /dev/net/tun (an earlier install?); remove it: setfacl -x u:pilot /dev/net/tun"
tun_mode_before=$(stat -c %A /dev/net/tun)

work=$(mktemp -d)
installed=""
cleanup() {
    if [[ -n $installed ]]; then
        dpkg --purge pilot >/dev/null 2>&1 || true
        scripts/install.sh --purge >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

if [[ -n ${PILOT_DEB:-} ]]; then
    deb=$PILOT_DEB
else
    step "cargo deb"
    deb=$(cargo deb --locked)
fi
[[ -f $deb ]] || fail "cargo deb printed no package path ($deb)"
echo "$deb ($(du -h "$deb" | cut -f1), built in $((SECONDS - started)) s)"

step "contents"
dpkg-deb -c "$deb" | awk '{print $NF}' | sed 's|^\./|/|' >"$work/contents"
for f in "${files[@]}" /usr/share/doc/pilot/README.md; do
    grep -qx "$f" "$work/contents" || fail "$f is not in the package"
done
dpkg-deb -I "$deb" >"$work/info"
for script in postinst prerm postrm conffiles; do
    grep -Eq "^ +[0-9]+ bytes, +[0-9]+ lines +\*? +$script( |$)" "$work/info" ||
        fail "no $script in the package's control archive"
done
dpkg-deb -e "$deb" "$work/control"
for f in "${conffiles[@]}"; do
    grep -qx "$f" "$work/control/conffiles" || fail "$f is not a conffile"
done
# Installing must never enable or start a unit: no joining a network by default.
if grep -v '^[[:space:]]*#' "$work/control/postinst" |
    grep -E 'systemctl +(--[a-z-]+ +)*(enable|start|restart|reenable)|deb-systemd-(helper +enable|invoke +start)'; then
    fail "postinst enables or starts a unit"
fi
grep -q 'Depends:.*libc6' "$work/control/control" || fail "no libc6 dependency in control"

step "dpkg -i"
installed=deb
dpkg -i "$deb" >/dev/null
dpkg -i "$deb" >/dev/null # a reinstall takes the upgrade paths of the scripts
for f in "${files[@]}"; do
    [[ -e $f ]] || fail "$f missing after dpkg -i"
done

# The node as its unit runs it (user pilot, CAP_NET_ADMIN only) in a namespace of its own:
# whatever the mode of this machine's /dev/net/tun (0600 here, 0666 where udev set it), the
# installed package must let it create its interface and answer on its control socket.
check_node_as_service_user() {
    local bin=$1 ns="pkgt$$" dir pid ok=0
    step "pilotd up as user pilot with CAP_NET_ADMIN only ($(stat -c %A /dev/net/tun) /dev/net/tun)"
    tun_acl || fail "no ACL entry for user pilot on /dev/net/tun: $(getfacl -p /dev/net/tun 2>&1)"
    dir=$(mktemp -d)
    chown pilot:pilot "$dir"
    chmod 755 "$dir"
    ip netns add "$ns"
    ip netns exec "$ns" setpriv --reuid=pilot --regid=pilot --clear-groups \
        --inh-caps=-all,+net_admin --ambient-caps=+net_admin --bounding-set=-all,+net_admin \
        --no-new-privs "$bin/pilotd" up --listen-port 0 --state-dir "$dir/state" \
        --control "$dir/sock" </dev/null >"$dir/log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        if "$bin/pilotctl" --control "$dir/sock" info >/dev/null 2>&1; then
            ok=1
            break
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" || true
    ip netns del "$ns"
    if ((!ok)); then
        cat "$dir/log" >&2
        rm -rf "$dir"
        fail "pilotd did not come up as user pilot"
    fi
    rm -rf "$dir"
}

check_installed() {
    local user dir bin=$1
    for user in pilot pilot-rendezvous; do
        getent passwd "$user" >/dev/null || fail "user $user was not created"
    done
    for dir in /var/lib/pilot:pilot /var/lib/pilot-rendezvous:pilot-rendezvous; do
        [[ $(stat -c '%U %a' "${dir%%:*}") == "${dir##*:} 700" ]] ||
            fail "${dir%%:*} is $(stat -c '%U %a' "${dir%%:*}"), expected ${dir##*:} 700"
    done
    "$bin/pilotd" --version | grep -q '^pilotd ' || fail "pilotd --version"
    local id
    id=$(mktemp -d)
    "$bin/pilotd" identity --state-dir "$id" --json | grep -q '"address":"fd70::' ||
        fail "pilotd identity printed no address"
    rm -rf "$id"
    "$bin/pilotctl" --help | grep -q handshake || fail "pilotctl --help"
    check_node_as_service_user "$bin"
    # A man page per command and subcommand, gzipped; completions for the three shells.
    local page
    for page in packaging/man/*.1; do
        [[ -f /usr/share/man/man1/$(basename "$page").gz ]] || fail "no man page $(basename "$page").gz"
    done
    zcat /usr/share/man/man1/pilotctl-init.1.gz | grep -q '^\.TH pilotctl-init 1' ||
        fail "pilotctl-init.1.gz is not a man page"
    bash -c 'source /usr/share/bash-completion/completions/pilotctl && complete -p pilotctl' >/dev/null ||
        fail "the bash completion of pilotctl does not load"

    local unit
    for unit in "${units[@]}"; do
        local path=/usr/lib/systemd/system/$unit
        [[ -f $path ]] || fail "$unit not installed"
        systemd-analyze verify "$path" || fail "systemd-analyze verify $path"
        local exposure
        exposure=$(systemd-analyze security --offline=yes "$path" 2>/dev/null |
            sed -n 's/^→ Overall exposure level for .*: \([0-9.]*\) .*/\1/p')
        [[ -n $exposure ]] || fail "systemd-analyze security gave no exposure for $unit"
        echo "$unit: exposure $exposure"
        awk -v e="$exposure" -v max="$MAX_EXPOSURE" 'BEGIN { exit !(e <= max) }' ||
            fail "$unit: exposure $exposure is above $MAX_EXPOSURE"
        # Not enabled (no symlink anywhere under /etc/systemd) and not running.
        if [[ -n $(find /etc/systemd -name "$unit" 2>/dev/null) ]]; then
            fail "$unit got enabled: $(find /etc/systemd -name "$unit")"
        fi
        if [[ -d /run/systemd/system ]] && systemctl is-active --quiet "$unit"; then
            fail "$unit was started"
        fi
    done
    local p
    for p in /proc/[0-9]*; do
        if [[ $(readlink "$p/exe" 2>/dev/null) == "$bin/pilotd" ]]; then
            fail "a pilotd from the package is running (pid ${p#/proc/})"
        fi
    done
}
check_installed /usr/bin

step "dpkg --purge"
dpkg --purge pilot >/dev/null
installed=""
check_gone() {
    local f
    for f in "${files[@]}" "${state_dirs[@]}" /usr/share/doc/pilot; do
        [[ ! -e $f ]] || fail "$f left behind"
    done
    local pages
    pages=$(find /usr/share/man/man1 \( -name 'pilotd*' -o -name 'pilotctl*' \) 2>/dev/null || true)
    [[ -z $pages ]] || fail "man pages left behind: $pages"
    if [[ -n $(find /etc/systemd -name 'pilot*' 2>/dev/null) ]]; then
        fail "left behind: $(find /etc/systemd -name 'pilot*')"
    fi
    ! tun_acl || fail "the ACL entry for user pilot on /dev/net/tun was left behind"
    [[ $(stat -c %A /dev/net/tun) == "$tun_mode_before" ]] ||
        fail "/dev/net/tun is $(stat -c %A /dev/net/tun) after removal, $tun_mode_before before"
}
check_gone
status=$(dpkg-query -W -f='${Status}' pilot 2>/dev/null || true)
[[ -z $status || $status == *not-installed* ]] || fail "dpkg still has pilot: $status"

step "scripts/install.sh (twice), then --purge"
installed=script
scripts/install.sh >/dev/null
again=$(scripts/install.sh)
if grep '^installed' <<<"$again"; then
    fail "a second install.sh changed files"
fi
for f in "${files[@]}"; do
    [[ -e $f ]] || fail "$f missing after install.sh"
done
check_installed /usr/bin
scripts/install.sh --purge >/dev/null
installed=""
check_gone

echo "package test passed in $((SECONDS - started)) s"
