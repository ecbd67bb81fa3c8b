# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_pilotd_global_optspecs
    string join \n log-level= h/help V/version
end

function __fish_pilotd_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_pilotd_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_pilotd_using_subcommand
    set -l cmd (__fish_pilotd_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c pilotd -n "__fish_pilotd_needs_command" -l log-level -d 'Log level: error, warn, info, debug, trace or off; or directives TARGET=LEVEL such as pilot=debug,boringtun=warn [default: info]' -r
complete -c pilotd -n "__fish_pilotd_needs_command" -s h -l help -d 'Print help'
complete -c pilotd -n "__fish_pilotd_needs_command" -s V -l version -d 'Print version'
complete -c pilotd -n "__fish_pilotd_needs_command" -f -a "up" -d 'Bring the node up: TUN interface, UDP socket, peers, control socket. Runs until SIGINT/SIGTERM'
complete -c pilotd -n "__fish_pilotd_needs_command" -f -a "identity" -d 'Print this node\'s public key and address (creating the identity if there is none), then exit'
complete -c pilotd -n "__fish_pilotd_needs_command" -f -a "rendezvous" -d 'Run the rendezvous server: registry, endpoint discovery, punch coordination and relay'
complete -c pilotd -n "__fish_pilotd_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c pilotd -n "__fish_pilotd_using_subcommand up" -l config -d 'Config file (TOML) with any of these settings, named like the flags (`listen_port`); flags given here override it' -r -F
complete -c pilotd -n "__fish_pilotd_using_subcommand up" -l state-dir -d 'State directory holding identity.json [default: /var/lib/pilot for root, ~/.pilot otherwise]' -r -F
complete -c pilotd -n "__fish_pilotd_using_subcommand up" -l interface -d 'TUN interface name [default: pilot0]' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand up" -l mtu -d 'MTU of the TUN interface (1280..65455); the default leaves room for WireGuard and a relay header on a 1500-byte underlay [default: 1380]' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand up" -l listen-port -d 'UDP port for all tunnel traffic (0 = any free port) [default: 51870]' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand up" -l peer -d 'A static peer, KEY@HOST:PORT (repeatable). KEY is the peer\'s public key as printed by `pilotctl info`; HOST an IP address (IPv6 in brackets) or a name' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand up" -l rendezvous -d 'Rendezvous server, [KEY@]HOST:PORT: registration, NAT discovery, hole punching and relay. With KEY, its answers must be signed by that key; without, the first key that answers is pinned in the state directory and required from then on. Repeatable, each as KEY@HOST:PORT: the node registers with the first that answers, in this order, and moves to the next when the one it uses stops answering. (`--registry` is accepted as well, the seed\'s word for it.)' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand up" -l rendezvous-alt-port -d 'The rendezvous\' second UDP port, used to measure NAT behaviour [default: its port + 1]' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand up" -l rendezvous-tls-port -d 'The TCP port where each rendezvous takes TLS, tried when UDP to it gets no answer (a network that blocks UDP); 0: never [default: 443]' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand up" -l hostname -d 'Hostname to claim at the rendezvous (lowercase letters, digits and `-`, 1-63); peers then reach this node as NAME.pilot. The first node to claim a name keeps it' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand up" -l endpoint -d 'This node\'s public endpoint, when it is known: a fixed public address, or a port forward to --listen-port. Peers are told it first, and NAT behaviour is not measured. Needs --rendezvous (peers learn it there)' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand up" -l hosts-file -d 'Keep a managed block of trusted peers\' NAME.pilot entries in a hosts file (for systems without systemd-resolved); given without a value, /etc/hosts' -r -F
complete -c pilotd -n "__fish_pilotd_using_subcommand up" -l keepalive -d 'WireGuard persistent keepalive in seconds, to hold NAT mappings open (0 = off) [default: 25]' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand up" -l control -d 'Control socket path [default: /run/pilot/pilotd.sock for root, $XDG_RUNTIME_DIR/pilot/pilotd.sock otherwise]' -r -F
complete -c pilotd -n "__fish_pilotd_using_subcommand up" -l metrics -d 'Serve Prometheus metrics over HTTP at IP:PORT, path /metrics (e.g. 127.0.0.1:9187)' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand up" -l socks5 -d 'Userspace mode: where the SOCKS5 proxy to peers listens, or `off`. It resolves NAME.pilot itself (curl --socks5-hostname) [default: 127.0.0.1:1080]' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand up" -l expose -d 'Userspace mode: let trusted peers connect to this node\'s overlay PORT, forwarded to 127.0.0.1:LOCALPORT (default: the same port). Repeatable' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand up" -l log-level -d 'Log level: error, warn, info, debug, trace or off; or directives TARGET=LEVEL such as pilot=debug,boringtun=warn [default: info]' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand up" -l shared-registry -d 'The rendezvous given are instances of one service on one registry (`pilotd rendezvous --store postgres://…`): start at the one this node\'s key picks, which spreads a fleet over them, and stay where failover takes it (without it: the first, and back to it)'
complete -c pilotd -n "__fish_pilotd_using_subcommand up" -l public -d 'Says that --endpoint is public (it is implied: accepted for the seed\'s habit). Alone it is refused: trust is always mutual, so no node is open to everyone'
complete -c pilotd -n "__fish_pilotd_using_subcommand up" -l no-port-mapping -d 'Do not ask the router (PCP, NAT-PMP, UPnP-IGD) to map the UDP port; `port_mapping = false` in the config file does the same. On by default: a mapped port lets peers behind any NAT reach this node directly'
complete -c pilotd -n "__fish_pilotd_using_subcommand up" -l auto-approve -d 'Approve every incoming trust request automatically (for public services; off by default)'
complete -c pilotd -n "__fish_pilotd_using_subcommand up" -l userspace -d 'Rootless mode: no TUN; the node\'s address lives in a userspace TCP/IP stack. Programs reach peers through the SOCKS5 proxy (--socks5) and peers reach local programs through exposed ports (--expose). Needs no root and no /dev/net/tun'
complete -c pilotd -n "__fish_pilotd_using_subcommand up" -s h -l help -d 'Print help'
complete -c pilotd -n "__fish_pilotd_using_subcommand identity" -l state-dir -d 'State directory holding identity.json [default: /var/lib/pilot for root, ~/.pilot otherwise]' -r -F
complete -c pilotd -n "__fish_pilotd_using_subcommand identity" -l log-level -d 'Log level: error, warn, info, debug, trace or off; or directives TARGET=LEVEL such as pilot=debug,boringtun=warn [default: info]' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand identity" -l json -d 'Print JSON'
complete -c pilotd -n "__fish_pilotd_using_subcommand identity" -s h -l help -d 'Print help'
complete -c pilotd -n "__fish_pilotd_using_subcommand rendezvous; and not __fish_seen_subcommand_from free-name help" -l config -d 'Config file (TOML) with any of these settings, named like the flags (`relay_rate`); flags given here override it' -r -F
complete -c pilotd -n "__fish_pilotd_using_subcommand rendezvous; and not __fish_seen_subcommand_from free-name help" -l listen -d 'Address and UDP port to serve on: registration, punching, relay and NAT probes (`0.0.0.0:PORT` or `[::]:PORT` for every address; port 0 = any free port). Required, here or as `listen` in the config file' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand rendezvous; and not __fish_seen_subcommand_from free-name help" -l alt-port -d 'Second UDP port on the same address, answering NAT probes only, so nodes can tell endpoint-independent from endpoint-dependent NAT mapping [default: PORT+1]' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand rendezvous; and not __fish_seen_subcommand_from free-name help" -l data-dir -d 'Data directory holding identity.json and rendezvous.db [default: /var/lib/pilot-rendezvous for root, ~/.pilot-rendezvous otherwise]' -r -F
complete -c pilotd -n "__fish_pilotd_using_subcommand rendezvous; and not __fish_seen_subcommand_from free-name help" -l keepalive -d 'Seconds between node re-registrations (told to nodes; holds their NAT mappings open) [default: 25]' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand rendezvous; and not __fish_seen_subcommand_from free-name help" -l expiry -d 'Seconds without a registration after which a node is no longer introduced or relayed to [default: 3 × keepalive + 5]' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand rendezvous; and not __fish_seen_subcommand_from free-name help" -l name-ttl -d 'How long a hostname stays with a key that no longer registers; then it is released for any node to claim. A duration: 30d, 12h, 90m, 45s (or combined, 1d12h) [default: 30d]' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand rendezvous; and not __fish_seen_subcommand_from free-name help" -l relay-rate -d 'Relay rate per node in Mbit/s (0 = relay nothing) [default: 100]' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand rendezvous; and not __fish_seen_subcommand_from free-name help" -l stats-interval -d 'Seconds between log lines with the counters (only when they changed) [default: 60]' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand rendezvous; and not __fish_seen_subcommand_from free-name help" -l metrics -d 'Serve Prometheus metrics over HTTP at IP:PORT, path /metrics (e.g. 127.0.0.1:9188)' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand rendezvous; and not __fish_seen_subcommand_from free-name help" -l tcp-listen -d 'Also accept nodes over TLS on this TCP address, for networks that block UDP (443 is the port they let out: `0.0.0.0:443`). The TLS key is the rendezvous\' own, which nodes pin. Off unless given' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand rendezvous; and not __fish_seen_subcommand_from free-name help" -l store -d 'Keep the registry in PostgreSQL instead of SQLite in the data directory: postgres://USER@HOST[:PORT]/DB (a Unix socket directory as HOST, percent-encoded: %2Frun%2Fpostgresql). No password here (`ps` shows flags): it comes from PGPASSWORD, a passfile (PGPASSFILE, ~/.pgpass) or --store-password-file. With PostgreSQL, stop every instance on the database before `free-name`' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand rendezvous; and not __fish_seen_subcommand_from free-name help" -l store-password-file -d 'A file holding the PostgreSQL password (its first line; mode 0600)' -r -F
complete -c pilotd -n "__fish_pilotd_using_subcommand rendezvous; and not __fish_seen_subcommand_from free-name help" -l log-level -d 'Log level: error, warn, info, debug, trace or off; or directives TARGET=LEVEL such as pilot=debug,boringtun=warn [default: info]' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand rendezvous; and not __fish_seen_subcommand_from free-name help" -s h -l help -d 'Print help'
complete -c pilotd -n "__fish_pilotd_using_subcommand rendezvous; and not __fish_seen_subcommand_from free-name help" -f -a "free-name" -d 'Free a hostname in the registry so any node may claim it'
complete -c pilotd -n "__fish_pilotd_using_subcommand rendezvous; and not __fish_seen_subcommand_from free-name help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c pilotd -n "__fish_pilotd_using_subcommand rendezvous; and __fish_seen_subcommand_from free-name" -l config -d 'Config file of the rendezvous (only its `data_dir` and store settings are used)' -r -F
complete -c pilotd -n "__fish_pilotd_using_subcommand rendezvous; and __fish_seen_subcommand_from free-name" -l data-dir -d 'Data directory holding rendezvous.db [default: /var/lib/pilot-rendezvous for root, ~/.pilot-rendezvous otherwise]' -r -F
complete -c pilotd -n "__fish_pilotd_using_subcommand rendezvous; and __fish_seen_subcommand_from free-name" -l store -d 'Keep the registry in PostgreSQL instead of SQLite in the data directory: postgres://USER@HOST[:PORT]/DB (a Unix socket directory as HOST, percent-encoded: %2Frun%2Fpostgresql). No password here (`ps` shows flags): it comes from PGPASSWORD, a passfile (PGPASSFILE, ~/.pgpass) or --store-password-file. With PostgreSQL, stop every instance on the database before `free-name`' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand rendezvous; and __fish_seen_subcommand_from free-name" -l store-password-file -d 'A file holding the PostgreSQL password (its first line; mode 0600)' -r -F
complete -c pilotd -n "__fish_pilotd_using_subcommand rendezvous; and __fish_seen_subcommand_from free-name" -l log-level -d 'Log level: error, warn, info, debug, trace or off; or directives TARGET=LEVEL such as pilot=debug,boringtun=warn [default: info]' -r
complete -c pilotd -n "__fish_pilotd_using_subcommand rendezvous; and __fish_seen_subcommand_from free-name" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pilotd -n "__fish_pilotd_using_subcommand rendezvous; and __fish_seen_subcommand_from help" -f -a "free-name" -d 'Free a hostname in the registry so any node may claim it'
complete -c pilotd -n "__fish_pilotd_using_subcommand rendezvous; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c pilotd -n "__fish_pilotd_using_subcommand help; and not __fish_seen_subcommand_from up identity rendezvous help" -f -a "up" -d 'Bring the node up: TUN interface, UDP socket, peers, control socket. Runs until SIGINT/SIGTERM'
complete -c pilotd -n "__fish_pilotd_using_subcommand help; and not __fish_seen_subcommand_from up identity rendezvous help" -f -a "identity" -d 'Print this node\'s public key and address (creating the identity if there is none), then exit'
complete -c pilotd -n "__fish_pilotd_using_subcommand help; and not __fish_seen_subcommand_from up identity rendezvous help" -f -a "rendezvous" -d 'Run the rendezvous server: registry, endpoint discovery, punch coordination and relay'
complete -c pilotd -n "__fish_pilotd_using_subcommand help; and not __fish_seen_subcommand_from up identity rendezvous help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c pilotd -n "__fish_pilotd_using_subcommand help; and __fish_seen_subcommand_from rendezvous" -f -a "free-name" -d 'Free a hostname in the registry so any node may claim it'
