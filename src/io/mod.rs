//! Real I/O for the daemon: the TUN device, the interface configuration done through
//! rtnetlink, and the batched UDP socket. Nothing in here knows about peers, keys or
//! protocol state; the daemon loop reads packets and datagrams from these types, feeds
//! them to the sans-IO core, and writes whatever the core hands back. Every descriptor is
//! non-blocking and exposed through `AsRawFd` so the loop can register it with
//! `tokio::io::unix::AsyncFd` and decide itself when to call `recv`/`send`/`flush`.

pub mod file;
pub mod lan_guard;
pub mod message;
pub mod netlink;
pub mod offload;
pub mod stack;
pub mod stream;
pub mod tun;
pub mod tun_writer;
pub mod udp;

/// Helpers shared by the tests that need root: gating and private network namespaces.
#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::atomic::{AtomicU32, Ordering};

    /// True when the test can touch the kernel's networking: root with CAP_NET_ADMIN and
    /// CAP_SYS_ADMIN (for unshare; a container's "root" often lacks it) and /dev/net/tun.
    /// Otherwise prints a skip line and returns false, except under `CI=true`, where a
    /// silently skipped privileged test would hide a regression, so it panics instead.
    pub fn privileged_or_skip(test: &str) -> bool {
        const CAP_NET_ADMIN: u32 = 12;
        const CAP_SYS_ADMIN: u32 = 21;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let cap_eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or(0);
        let caps = [CAP_NET_ADMIN, CAP_SYS_ADMIN]
            .iter()
            .all(|c| cap_eff & (1 << c) != 0);
        let tun = std::path::Path::new("/dev/net/tun").exists();
        if root && caps && tun {
            return true;
        }
        let why = format!(
            "needs root (euid 0: {root}) with CAP_NET_ADMIN+CAP_SYS_ADMIN (present: {caps}) \
             and /dev/net/tun (present: {tun})"
        );
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: {why}; CI=true so this must not be skipped");
        }
        eprintln!("skipping {test}: {why}");
        false
    }

    /// An interface name unique to this process and call, at most 15 bytes.
    pub fn unique_ifname() -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        format!("pt{}x{n}", std::process::id() % 100_000)
    }

    /// Runs `f` on a fresh thread that first moved itself into a new, empty network
    /// namespace. unshare(2) on a thread changes only that thread's namespace, so the
    /// rest of the test process (and the host) is unaffected; the namespace disappears
    /// when the thread exits and nothing else holds it.
    pub fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            // SAFETY: plain syscall on the current thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                panic!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// Runs `ip ARGS` inside the network namespace of the calling thread.
    pub fn ip_here(args: &[&str]) -> String {
        run_here("ip", args)
    }

    /// Runs `PROGRAM ARGS` inside the network namespace of the calling thread (which
    /// `/proc/self/ns/net` would not name: that is the main thread's namespace).
    pub fn run_here(program: &str, args: &[&str]) -> String {
        // SAFETY: getpid/gettid cannot fail.
        let (pid, tid) = unsafe { (libc::getpid(), libc::gettid()) };
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/task/{tid}/ns/net"))
            .arg(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running nsenter {program}: {e}"));
        assert!(out.status.success(), "{program} {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
