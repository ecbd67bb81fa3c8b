# shellcheck shell=bash
# Build as yourself, raise only what needs root. Sourced by .ci/run, scripts/test.sh,
# scripts/demo.sh and scripts/package-test.sh.
#
# A newcomer installs Rust with rustup into ~/.cargo/bin and has sudo; sudo resets PATH
# (Debian's secure_path), so root never sees that cargo, and a target/ built as root would
# stay root's. So the scripts run as the user and call sudo for the steps that need root
# (apt-get, namespaces, TUNs, dpkg). Run as root (CI, a root shell) they do everything
# directly. Started through sudo by habit (`sudo bash .ci/run`), they hand themselves back
# to the user who called sudo when root has no cargo of its own.

# as_root CMD...: CMD as root, directly when we are root, else through sudo.
as_root() {
    if ((EUID == 0)); then
        "$@"
    else
        command -v sudo >/dev/null || {
            echo "needs root for: $*; install sudo or run this as root" >&2
            return 1
        }
        sudo "$@"
    fi
}

# need_packages PKG...: installs the Debian packages that are not installed yet.
need_packages() {
    local p missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    echo "installing: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# sudo_user_has_cargo: we are root through sudo, root has no cargo, and the user who called
# sudo has a rustup one in ~/.cargo/bin.
sudo_user_has_cargo() {
    ((EUID == 0)) && [[ -n ${SUDO_USER:-} && $SUDO_USER != root ]] || return 1
    ! command -v cargo >/dev/null || return 1
    [[ -x $(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo/bin/cargo ]]
}

# as_sudo_user CMD...: CMD as the user who called sudo, with that user's ~/.cargo/bin on PATH.
as_sudo_user() {
    local home
    home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
    runuser -u "$SUDO_USER" -- env HOME="$home" PATH="$home/.cargo/bin:$PATH" "$@"
}

# back_to_sudo_user SCRIPT ARGS...: when we are root through sudo and root has no cargo, runs
# SCRIPT again as the user who called sudo (see as_sudo_user); does not return then.
# Otherwise returns and the caller goes on as it is.
back_to_sudo_user() {
    # Raised on purpose by become_root: the user's part is done.
    [[ -z ${PILOT_RAISED:-} ]] || return 0
    sudo_user_has_cargo || return 0
    echo "$1: root has no cargo (sudo resets PATH); running as $SUDO_USER, with sudo for what needs root"
    as_sudo_user bash "$@"
    exit
}

# become_root SCRIPT ARGS...: runs SCRIPT again as root through sudo, keeping the variables
# named in ROOT_KEEP_ENV (space-separated), unless we are root already; does not return then.
become_root() {
    ((EUID == 0)) && return 0
    local keep=CI,PILOT_RAISED
    local var
    for var in ${ROOT_KEEP_ENV:-}; do
        keep+=",$var"
    done
    PILOT_RAISED=1 exec sudo --preserve-env="$keep" bash "$@"
}
