#!/usr/bin/env bash
# The README's two set-up commands, pasted as written by a newcomer: an unprivileged user who
# installed Rust with rustup (cargo in ~/.cargo/bin, nowhere on root's PATH) and has sudo with
# Debian's secure_path, in a fresh copy of this tree. Runs the demo command, the test command
# (with PILOT_TEST_SCOPE=smoke: the same steps, only the service and CLI test binaries), and the
# test command as people type it out of habit, through sudo. Any of them failing the way a
# newcomer would meet it (`cargo: command not found` under sudo, a root-owned target/, a test
# that cannot raise itself) fails this test.
#
# Needs root (it creates a user and a sudoers entry, both removed at the end), sudo, runuser,
# unshare and this machine's Rust toolchain; without them it prints SKIP, except under CI=true.
# The user's ~/.rustup is this machine's, and its ~/.cargo/bin holds links to this machine's
# rustup proxies (cargo, rustc, cargo-deb, ...), both bind-mounted read-only in a private mount
# namespace; its ~/.cargo (registry, `cargo install`) and its build are its own.
set -eEuo pipefail
trap 'echo "newcomer-test: FAIL: line $LINENO: $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."
repo=$PWD

fail() {
    echo "newcomer-test: FAIL: $*" >&2
    exit 1
}
skip() {
    [[ ${CI:-} != true ]] || fail "CI=true but the newcomer test cannot run: $*"
    echo "SKIP newcomer test: $*"
    exit 0
}
step() { echo "-- $*"; }

missing=()
((EUID == 0)) || missing+=(root)
for tool in sudo visudo runuser unshare useradd userdel git cargo; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
((${#missing[@]} == 0)) || skip "needs ${missing[*]}"
grep -Eqs '^Defaults\s+secure_path=' /etc/sudoers ||
    skip "/etc/sudoers has no secure_path (Debian's sudo sets one): nothing to reproduce"

# The README's commands: the first line of the sh block after each heading.
readme_command() {
    awk -v head="$1" '
        index($0, head) == 1 { found = 1; next }
        found && /^```sh/ { getline; print; exit }' README.md
}
demo_cmd=$(readme_command "**Main job")
test_cmd=$(readme_command "**Tests**")
[[ -n $demo_cmd && -n $test_cmd ]] || fail "README.md has no demo or test command block"
echo "demo command: $demo_cmd"
echo "test command: $test_cmd"

# This machine's toolchain, to lend the user as if rustup had installed it for them.
tool_bin=$(dirname "$(command -v cargo)")
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
[[ -d $rustup_home ]] || skip "no rustup home at $rustup_home"

user="pilotnc$$"
home=""
sudoers=/etc/sudoers.d/$user
cleanup() {
    rm -f "$sudoers"
    if getent passwd "$user" >/dev/null; then
        userdel "$user" 2>/dev/null || true
    fi
    [[ -z $home ]] || rm -rf "$home"
}
trap cleanup EXIT

step "user $user with sudo (Debian's secure_path), a fresh copy of the tree"
home=$(mktemp -d /tmp/pilot-newcomer.XXXXXX)
chmod 755 "$home"
useradd --home-dir "$home" --no-create-home --shell /bin/bash "$user"
chown "$user:$user" "$home"
echo "$user ALL=(ALL) NOPASSWD: ALL" >"$sudoers.tmp"
chmod 440 "$sudoers.tmp"
visudo -cqf "$sudoers.tmp" || fail "sudoers entry refused"
mv "$sudoers.tmp" "$sudoers"
mkdir -p "$home/.cargo/bin" "$home/.rustup" "$home/.toolchain" "$home/pilot"
for tool in "$tool_bin"/*; do
    ln -s "../../.toolchain/${tool##*/}" "$home/.cargo/bin/${tool##*/}"
done
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$home/pilot"
chown -R -h "$user:$user" "$home"

# as_newcomer CMD: CMD in the copy, as the user, with the PATH rustup's profile gives it (and
# sudo's secure_path once it raises anything), in a mount namespace with the toolchain lent.
as_newcomer() {
    unshare --mount --propagation private bash -c '
        set -e
        mount --bind -o ro "$1" "$3/.toolchain"
        mount --bind -o ro "$2" "$3/.rustup"
        shift 3
        exec "$@"' _ "$tool_bin" "$rustup_home" "$home" \
        runuser -u "$user" -- env -i HOME="$home" USER="$user" LOGNAME="$user" SHELL=/bin/bash \
        TERM=dumb LANG=C.UTF-8 PATH="$home/.cargo/bin:/usr/local/bin:/usr/bin:/bin" \
        CI="${CI:-}" PILOT_TEST_SCOPE=smoke \
        bash -c "cd ~/pilot && $1" </dev/null
}

started=$SECONDS
step "sudo's PATH has no cargo: the regression this guards against is real here"
if as_newcomer 'sudo sh -c "command -v cargo"' >/dev/null 2>&1; then
    fail "cargo is on root's secure_path here; the test would prove nothing"
fi

step "the demo command, as written"
as_newcomer "$demo_cmd" || fail "the README's demo command failed for a newcomer"

step "the test command, as written (PILOT_TEST_SCOPE=smoke)"
as_newcomer "$test_cmd" || fail "the README's test command failed for a newcomer"

step "the test command through sudo, as typed out of habit"
as_newcomer "sudo CI=\$CI PILOT_TEST_SCOPE=smoke $test_cmd" ||
    fail "'sudo $test_cmd' failed for a newcomer"

step "nothing in the tree became root's"
if [[ -n $(find "$home/pilot" "$home/.cargo" ! -user "$user" -print -quit) ]]; then
    fail "files not the newcomer's in its tree: $(find "$home/pilot" "$home/.cargo" ! -user "$user" | head -5)"
fi
echo "newcomer test passed in $((SECONDS - started)) s"
