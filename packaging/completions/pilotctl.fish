# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_pilotctl_global_optspecs
    string join \n control= h/help V/version
end

function __fish_pilotctl_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_pilotctl_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_pilotctl_using_subcommand
    set -l cmd (__fish_pilotctl_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c pilotctl -n "__fish_pilotctl_needs_command" -l control -d 'Control socket of the daemon [default: /run/pilot/pilotd.sock for root, $XDG_RUNTIME_DIR/pilot/pilotd.sock otherwise]' -r -F
complete -c pilotctl -n "__fish_pilotctl_needs_command" -s h -l help -d 'Print help'
complete -c pilotctl -n "__fish_pilotctl_needs_command" -s V -l version -d 'Print version'
complete -c pilotctl -n "__fish_pilotctl_needs_command" -f -a "status" -d 'One-screen health check: uptime, rendezvous, NAT, peers by path, trust, drops'
complete -c pilotctl -n "__fish_pilotctl_needs_command" -f -a "info" -d 'This node: address, key, interface, port, endpoint, NAT type'
complete -c pilotctl -n "__fish_pilotctl_needs_command" -f -a "peers" -d 'Peers with their path, endpoint, traffic and last handshake'
complete -c pilotctl -n "__fish_pilotctl_needs_command" -f -a "netcheck" -d 'Public endpoint and NAT behaviour as measured against the rendezvous'
complete -c pilotctl -n "__fish_pilotctl_needs_command" -f -a "resolve" -d 'Print the fd70 address of a hostname (asking the rendezvous if needed)'
complete -c pilotctl -n "__fish_pilotctl_needs_command" -f -a "handshake" -d 'Ask a peer for trust; packets flow once it approves. If it asked first, this approves'
complete -c pilotctl -n "__fish_pilotctl_needs_command" -f -a "pending" -d 'Trust requests waiting for your approval'
complete -c pilotctl -n "__fish_pilotctl_needs_command" -f -a "approve" -d 'Approve a pending trust request'
complete -c pilotctl -n "__fish_pilotctl_needs_command" -f -a "reject" -d 'Reject a pending trust request, optionally telling the requester why'
complete -c pilotctl -n "__fish_pilotctl_needs_command" -f -a "untrust" -d 'End trust with a peer (or withdraw a request); its session closes on both sides'
complete -c pilotctl -n "__fish_pilotctl_needs_command" -f -a "init" -d 'Prepare this node: create its identity (as `pilotd identity`) and record the settings given in the config file `pilotctl daemon start` reads; says what to run next'
complete -c pilotctl -n "__fish_pilotctl_needs_command" -f -a "daemon" -d 'Start, stop or check the local pilotd (through systemd when its unit is installed)'
complete -c pilotctl -n "__fish_pilotctl_needs_command" -f -a "release-name" -d 'Give up this node\'s hostname: the rendezvous frees it at once for any node to claim'
complete -c pilotctl -n "__fish_pilotctl_needs_command" -f -a "trust" -d 'Trusted peers, and requests and approvals in flight'
complete -c pilotctl -n "__fish_pilotctl_needs_command" -f -a "connect" -d 'Open a TCP stream to a peer\'s port (1000 when none is given): stdin to it, its answer to stdout (or send one message and print the reply). Works in kernel and userspace mode'
complete -c pilotctl -n "__fish_pilotctl_needs_command" -f -a "send-message" -d 'Send a message to a peer\'s inbox; it is acknowledged once the peer has stored it'
complete -c pilotctl -n "__fish_pilotctl_needs_command" -f -a "inbox" -d 'Messages peers sent to this node, oldest first'
complete -c pilotctl -n "__fish_pilotctl_needs_command" -f -a "ping" -d 'Send ICMPv6 echo requests through the tunnel and print each reply\'s RTT and path'
complete -c pilotctl -n "__fish_pilotctl_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand status" -l control -d 'Control socket of the daemon [default: /run/pilot/pilotd.sock for root, $XDG_RUNTIME_DIR/pilot/pilotd.sock otherwise]' -r -F
complete -c pilotctl -n "__fish_pilotctl_using_subcommand status" -l json
complete -c pilotctl -n "__fish_pilotctl_using_subcommand status" -s h -l help -d 'Print help'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand info" -l control -d 'Control socket of the daemon [default: /run/pilot/pilotd.sock for root, $XDG_RUNTIME_DIR/pilot/pilotd.sock otherwise]' -r -F
complete -c pilotctl -n "__fish_pilotctl_using_subcommand info" -l json
complete -c pilotctl -n "__fish_pilotctl_using_subcommand info" -s h -l help -d 'Print help'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand peers" -l control -d 'Control socket of the daemon [default: /run/pilot/pilotd.sock for root, $XDG_RUNTIME_DIR/pilot/pilotd.sock otherwise]' -r -F
complete -c pilotctl -n "__fish_pilotctl_using_subcommand peers" -l json
complete -c pilotctl -n "__fish_pilotctl_using_subcommand peers" -s h -l help -d 'Print help'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand netcheck" -l control -d 'Control socket of the daemon [default: /run/pilot/pilotd.sock for root, $XDG_RUNTIME_DIR/pilot/pilotd.sock otherwise]' -r -F
complete -c pilotctl -n "__fish_pilotctl_using_subcommand netcheck" -l json
complete -c pilotctl -n "__fish_pilotctl_using_subcommand netcheck" -s h -l help -d 'Print help'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand resolve" -l control -d 'Control socket of the daemon [default: /run/pilot/pilotd.sock for root, $XDG_RUNTIME_DIR/pilot/pilotd.sock otherwise]' -r -F
complete -c pilotctl -n "__fish_pilotctl_using_subcommand resolve" -l json
complete -c pilotctl -n "__fish_pilotctl_using_subcommand resolve" -s h -l help -d 'Print help'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand handshake" -l control -d 'Control socket of the daemon [default: /run/pilot/pilotd.sock for root, $XDG_RUNTIME_DIR/pilot/pilotd.sock otherwise]' -r -F
complete -c pilotctl -n "__fish_pilotctl_using_subcommand handshake" -l json
complete -c pilotctl -n "__fish_pilotctl_using_subcommand handshake" -s h -l help -d 'Print help'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand pending" -l control -d 'Control socket of the daemon [default: /run/pilot/pilotd.sock for root, $XDG_RUNTIME_DIR/pilot/pilotd.sock otherwise]' -r -F
complete -c pilotctl -n "__fish_pilotctl_using_subcommand pending" -l json
complete -c pilotctl -n "__fish_pilotctl_using_subcommand pending" -s h -l help -d 'Print help'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand approve" -l control -d 'Control socket of the daemon [default: /run/pilot/pilotd.sock for root, $XDG_RUNTIME_DIR/pilot/pilotd.sock otherwise]' -r -F
complete -c pilotctl -n "__fish_pilotctl_using_subcommand approve" -l json
complete -c pilotctl -n "__fish_pilotctl_using_subcommand approve" -s h -l help -d 'Print help'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand reject" -l control -d 'Control socket of the daemon [default: /run/pilot/pilotd.sock for root, $XDG_RUNTIME_DIR/pilot/pilotd.sock otherwise]' -r -F
complete -c pilotctl -n "__fish_pilotctl_using_subcommand reject" -l json
complete -c pilotctl -n "__fish_pilotctl_using_subcommand reject" -s h -l help -d 'Print help'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand untrust" -l control -d 'Control socket of the daemon [default: /run/pilot/pilotd.sock for root, $XDG_RUNTIME_DIR/pilot/pilotd.sock otherwise]' -r -F
complete -c pilotctl -n "__fish_pilotctl_using_subcommand untrust" -l json
complete -c pilotctl -n "__fish_pilotctl_using_subcommand untrust" -s h -l help -d 'Print help'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand init" -l config -d 'The config file to write [default: /etc/pilot/pilotd.toml for root, ~/.config/pilot/pilotd.toml otherwise]' -r -F
complete -c pilotctl -n "__fish_pilotctl_using_subcommand init" -l hostname -d 'Hostname to claim at the rendezvous; peers reach this node as NAME.pilot' -r
complete -c pilotctl -n "__fish_pilotctl_using_subcommand init" -l rendezvous -d 'Rendezvous server, [KEY@]HOST:PORT (`--registry` is accepted too, the seed\'s word)' -r
complete -c pilotctl -n "__fish_pilotctl_using_subcommand init" -l endpoint -d 'This node\'s public endpoint, when known (a fixed public address or a port forward): told to peers first' -r
complete -c pilotctl -n "__fish_pilotctl_using_subcommand init" -l state-dir -d 'State directory holding the identity [default: /var/lib/pilot for root, ~/.pilot otherwise]' -r -F
complete -c pilotctl -n "__fish_pilotctl_using_subcommand init" -l listen-port -d 'The UDP port for all tunnel traffic (0 = any free port) [default: 51870]' -r
complete -c pilotctl -n "__fish_pilotctl_using_subcommand init" -l control -d 'Control socket of the daemon [default: /run/pilot/pilotd.sock for root, $XDG_RUNTIME_DIR/pilot/pilotd.sock otherwise]' -r -F
complete -c pilotctl -n "__fish_pilotctl_using_subcommand init" -l public -d 'Says that --endpoint is public (implied by it; refused alone)'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand init" -l json -d 'Print what was done as JSON'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand init" -s h -l help -d 'Print help'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand daemon; and not __fish_seen_subcommand_from start stop status help" -l control -d 'Control socket of the daemon [default: /run/pilot/pilotd.sock for root, $XDG_RUNTIME_DIR/pilot/pilotd.sock otherwise]' -r -F
complete -c pilotctl -n "__fish_pilotctl_using_subcommand daemon; and not __fish_seen_subcommand_from start stop status help" -s h -l help -d 'Print help'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand daemon; and not __fish_seen_subcommand_from start stop status help" -f -a "start" -d 'Start pilotd: through systemd when its unit is installed, else `pilotd up` in the background. Returns once the daemon answers on its control socket and has registered with its rendezvous, if it has one; fails with the daemon\'s own error if it exits'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand daemon; and not __fish_seen_subcommand_from start stop status help" -f -a "stop" -d 'Stop pilotd cleanly (SIGTERM, or `systemctl stop`); waits until it has exited'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand daemon; and not __fish_seen_subcommand_from start stop status help" -f -a "status" -d 'Whether pilotd runs, and its address. Exit status 3 when it does not'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand daemon; and not __fish_seen_subcommand_from start stop status help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand daemon; and __fish_seen_subcommand_from start" -l config -d 'Config file for `pilotd up --config` (background mode) [default: the one `pilotctl init` writes, /etc/pilot/pilotd.toml for root, ~/.config/pilot/pilotd.toml otherwise, if it exists]' -r -F
complete -c pilotctl -n "__fish_pilotctl_using_subcommand daemon; and __fish_seen_subcommand_from start" -l log -d 'Log file of the background daemon [default: pilotd.log next to the control socket]' -r -F
complete -c pilotctl -n "__fish_pilotctl_using_subcommand daemon; and __fish_seen_subcommand_from start" -l hostname -d 'Hostname to claim at the rendezvous; peers reach this node as NAME.pilot' -r
complete -c pilotctl -n "__fish_pilotctl_using_subcommand daemon; and __fish_seen_subcommand_from start" -l rendezvous -d 'Rendezvous server, [KEY@]HOST:PORT (`--registry` is accepted too, the seed\'s word)' -r
complete -c pilotctl -n "__fish_pilotctl_using_subcommand daemon; and __fish_seen_subcommand_from start" -l endpoint -d 'This node\'s public endpoint, when known (a fixed public address or a port forward): told to peers first' -r
complete -c pilotctl -n "__fish_pilotctl_using_subcommand daemon; and __fish_seen_subcommand_from start" -l state-dir -d 'State directory holding the identity [default: /var/lib/pilot for root, ~/.pilot otherwise]' -r -F
complete -c pilotctl -n "__fish_pilotctl_using_subcommand daemon; and __fish_seen_subcommand_from start" -l listen-port -d 'The UDP port for all tunnel traffic (0 = any free port) [default: 51870]' -r
complete -c pilotctl -n "__fish_pilotctl_using_subcommand daemon; and __fish_seen_subcommand_from start" -l control -d 'Control socket of the daemon [default: /run/pilot/pilotd.sock for root, $XDG_RUNTIME_DIR/pilot/pilotd.sock otherwise]' -r -F
complete -c pilotctl -n "__fish_pilotctl_using_subcommand daemon; and __fish_seen_subcommand_from start" -l no-systemd -d 'Run `pilotd up` directly even if the systemd unit is installed'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand daemon; and __fish_seen_subcommand_from start" -l public -d 'Says that --endpoint is public (implied by it; refused alone)'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand daemon; and __fish_seen_subcommand_from start" -s h -l help -d 'Print help'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand daemon; and __fish_seen_subcommand_from stop" -l control -d 'Control socket of the daemon [default: /run/pilot/pilotd.sock for root, $XDG_RUNTIME_DIR/pilot/pilotd.sock otherwise]' -r -F
complete -c pilotctl -n "__fish_pilotctl_using_subcommand daemon; and __fish_seen_subcommand_from stop" -l no-systemd -d 'Signal the daemon directly even if the systemd unit is installed'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand daemon; and __fish_seen_subcommand_from stop" -s h -l help -d 'Print help'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand daemon; and __fish_seen_subcommand_from status" -l control -d 'Control socket of the daemon [default: /run/pilot/pilotd.sock for root, $XDG_RUNTIME_DIR/pilot/pilotd.sock otherwise]' -r -F
complete -c pilotctl -n "__fish_pilotctl_using_subcommand daemon; and __fish_seen_subcommand_from status" -l json
complete -c pilotctl -n "__fish_pilotctl_using_subcommand daemon; and __fish_seen_subcommand_from status" -s h -l help -d 'Print help'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand daemon; and __fish_seen_subcommand_from help" -f -a "start" -d 'Start pilotd: through systemd when its unit is installed, else `pilotd up` in the background. Returns once the daemon answers on its control socket and has registered with its rendezvous, if it has one; fails with the daemon\'s own error if it exits'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand daemon; and __fish_seen_subcommand_from help" -f -a "stop" -d 'Stop pilotd cleanly (SIGTERM, or `systemctl stop`); waits until it has exited'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand daemon; and __fish_seen_subcommand_from help" -f -a "status" -d 'Whether pilotd runs, and its address. Exit status 3 when it does not'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand daemon; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand release-name" -l config -d 'The config file pilotd reads, whose `hostname` is commented out once the name is released [default: /etc/pilot/pilotd.toml for root, ~/.config/pilot/pilotd.toml otherwise]' -r -F
complete -c pilotctl -n "__fish_pilotctl_using_subcommand release-name" -l control -d 'Control socket of the daemon [default: /run/pilot/pilotd.sock for root, $XDG_RUNTIME_DIR/pilot/pilotd.sock otherwise]' -r -F
complete -c pilotctl -n "__fish_pilotctl_using_subcommand release-name" -l json
complete -c pilotctl -n "__fish_pilotctl_using_subcommand release-name" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand trust" -l control -d 'Control socket of the daemon [default: /run/pilot/pilotd.sock for root, $XDG_RUNTIME_DIR/pilot/pilotd.sock otherwise]' -r -F
complete -c pilotctl -n "__fish_pilotctl_using_subcommand trust" -l json
complete -c pilotctl -n "__fish_pilotctl_using_subcommand trust" -s h -l help -d 'Print help'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand connect" -l message -d 'Send this, end the sending side, and print the reply' -r
complete -c pilotctl -n "__fish_pilotctl_using_subcommand connect" -l timeout -d 'Seconds to wait for the connection (and, with --message, for the reply)' -r
complete -c pilotctl -n "__fish_pilotctl_using_subcommand connect" -l control -d 'Control socket of the daemon [default: /run/pilot/pilotd.sock for root, $XDG_RUNTIME_DIR/pilot/pilotd.sock otherwise]' -r -F
complete -c pilotctl -n "__fish_pilotctl_using_subcommand connect" -s h -l help -d 'Print help'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand send-message" -l data -d 'The message (`-`: read it from stdin; at most 64 KiB)' -r
complete -c pilotctl -n "__fish_pilotctl_using_subcommand send-message" -l type -d 'text (UTF-8), json (checked to parse) or binary' -r
complete -c pilotctl -n "__fish_pilotctl_using_subcommand send-message" -l control -d 'Control socket of the daemon [default: /run/pilot/pilotd.sock for root, $XDG_RUNTIME_DIR/pilot/pilotd.sock otherwise]' -r -F
complete -c pilotctl -n "__fish_pilotctl_using_subcommand send-message" -l json
complete -c pilotctl -n "__fish_pilotctl_using_subcommand send-message" -s h -l help -d 'Print help'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand inbox" -l control -d 'Control socket of the daemon [default: /run/pilot/pilotd.sock for root, $XDG_RUNTIME_DIR/pilot/pilotd.sock otherwise]' -r -F
complete -c pilotctl -n "__fish_pilotctl_using_subcommand inbox" -l json
complete -c pilotctl -n "__fish_pilotctl_using_subcommand inbox" -l clear -d 'Remove the listed messages'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand inbox" -s h -l help -d 'Print help'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand ping" -s c -l count -d 'Number of pings' -r
complete -c pilotctl -n "__fish_pilotctl_using_subcommand ping" -s i -l interval -d 'Seconds between pings' -r
complete -c pilotctl -n "__fish_pilotctl_using_subcommand ping" -s W -l timeout -d 'Seconds to wait for each reply' -r
complete -c pilotctl -n "__fish_pilotctl_using_subcommand ping" -l control -d 'Control socket of the daemon [default: /run/pilot/pilotd.sock for root, $XDG_RUNTIME_DIR/pilot/pilotd.sock otherwise]' -r -F
complete -c pilotctl -n "__fish_pilotctl_using_subcommand ping" -l json
complete -c pilotctl -n "__fish_pilotctl_using_subcommand ping" -s h -l help -d 'Print help'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand help; and not __fish_seen_subcommand_from status info peers netcheck resolve handshake pending approve reject untrust init daemon release-name trust connect send-message inbox ping help" -f -a "status" -d 'One-screen health check: uptime, rendezvous, NAT, peers by path, trust, drops'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand help; and not __fish_seen_subcommand_from status info peers netcheck resolve handshake pending approve reject untrust init daemon release-name trust connect send-message inbox ping help" -f -a "info" -d 'This node: address, key, interface, port, endpoint, NAT type'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand help; and not __fish_seen_subcommand_from status info peers netcheck resolve handshake pending approve reject untrust init daemon release-name trust connect send-message inbox ping help" -f -a "peers" -d 'Peers with their path, endpoint, traffic and last handshake'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand help; and not __fish_seen_subcommand_from status info peers netcheck resolve handshake pending approve reject untrust init daemon release-name trust connect send-message inbox ping help" -f -a "netcheck" -d 'Public endpoint and NAT behaviour as measured against the rendezvous'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand help; and not __fish_seen_subcommand_from status info peers netcheck resolve handshake pending approve reject untrust init daemon release-name trust connect send-message inbox ping help" -f -a "resolve" -d 'Print the fd70 address of a hostname (asking the rendezvous if needed)'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand help; and not __fish_seen_subcommand_from status info peers netcheck resolve handshake pending approve reject untrust init daemon release-name trust connect send-message inbox ping help" -f -a "handshake" -d 'Ask a peer for trust; packets flow once it approves. If it asked first, this approves'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand help; and not __fish_seen_subcommand_from status info peers netcheck resolve handshake pending approve reject untrust init daemon release-name trust connect send-message inbox ping help" -f -a "pending" -d 'Trust requests waiting for your approval'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand help; and not __fish_seen_subcommand_from status info peers netcheck resolve handshake pending approve reject untrust init daemon release-name trust connect send-message inbox ping help" -f -a "approve" -d 'Approve a pending trust request'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand help; and not __fish_seen_subcommand_from status info peers netcheck resolve handshake pending approve reject untrust init daemon release-name trust connect send-message inbox ping help" -f -a "reject" -d 'Reject a pending trust request, optionally telling the requester why'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand help; and not __fish_seen_subcommand_from status info peers netcheck resolve handshake pending approve reject untrust init daemon release-name trust connect send-message inbox ping help" -f -a "untrust" -d 'End trust with a peer (or withdraw a request); its session closes on both sides'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand help; and not __fish_seen_subcommand_from status info peers netcheck resolve handshake pending approve reject untrust init daemon release-name trust connect send-message inbox ping help" -f -a "init" -d 'Prepare this node: create its identity (as `pilotd identity`) and record the settings given in the config file `pilotctl daemon start` reads; says what to run next'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand help; and not __fish_seen_subcommand_from status info peers netcheck resolve handshake pending approve reject untrust init daemon release-name trust connect send-message inbox ping help" -f -a "daemon" -d 'Start, stop or check the local pilotd (through systemd when its unit is installed)'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand help; and not __fish_seen_subcommand_from status info peers netcheck resolve handshake pending approve reject untrust init daemon release-name trust connect send-message inbox ping help" -f -a "release-name" -d 'Give up this node\'s hostname: the rendezvous frees it at once for any node to claim'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand help; and not __fish_seen_subcommand_from status info peers netcheck resolve handshake pending approve reject untrust init daemon release-name trust connect send-message inbox ping help" -f -a "trust" -d 'Trusted peers, and requests and approvals in flight'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand help; and not __fish_seen_subcommand_from status info peers netcheck resolve handshake pending approve reject untrust init daemon release-name trust connect send-message inbox ping help" -f -a "connect" -d 'Open a TCP stream to a peer\'s port (1000 when none is given): stdin to it, its answer to stdout (or send one message and print the reply). Works in kernel and userspace mode'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand help; and not __fish_seen_subcommand_from status info peers netcheck resolve handshake pending approve reject untrust init daemon release-name trust connect send-message inbox ping help" -f -a "send-message" -d 'Send a message to a peer\'s inbox; it is acknowledged once the peer has stored it'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand help; and not __fish_seen_subcommand_from status info peers netcheck resolve handshake pending approve reject untrust init daemon release-name trust connect send-message inbox ping help" -f -a "inbox" -d 'Messages peers sent to this node, oldest first'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand help; and not __fish_seen_subcommand_from status info peers netcheck resolve handshake pending approve reject untrust init daemon release-name trust connect send-message inbox ping help" -f -a "ping" -d 'Send ICMPv6 echo requests through the tunnel and print each reply\'s RTT and path'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand help; and not __fish_seen_subcommand_from status info peers netcheck resolve handshake pending approve reject untrust init daemon release-name trust connect send-message inbox ping help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand help; and __fish_seen_subcommand_from daemon" -f -a "start" -d 'Start pilotd: through systemd when its unit is installed, else `pilotd up` in the background. Returns once the daemon answers on its control socket and has registered with its rendezvous, if it has one; fails with the daemon\'s own error if it exits'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand help; and __fish_seen_subcommand_from daemon" -f -a "stop" -d 'Stop pilotd cleanly (SIGTERM, or `systemctl stop`); waits until it has exited'
complete -c pilotctl -n "__fish_pilotctl_using_subcommand help; and __fish_seen_subcommand_from daemon" -f -a "status" -d 'Whether pilotd runs, and its address. Exit status 3 when it does not'
