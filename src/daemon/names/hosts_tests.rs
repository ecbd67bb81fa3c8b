use super::*;
use std::os::unix::fs::symlink;
use std::sync::atomic::{AtomicUsize, Ordering};

const LOCAL: &str = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n";
const BOB: Ipv6Addr = Ipv6Addr::new(0xfd70, 0, 0, 0, 0, 0xa1b2, 0xc3d4, 0xe5f6);
const ALICE: Ipv6Addr = Ipv6Addr::new(0xfd70, 0, 0, 0, 0, 0x1, 0x2, 0x3);

/// A directory of its own under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pilot-hosts-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// `hosts` in this directory, holding `content` with `mode`.
    fn hosts(&self, content: &str, mode: u32) -> HostsFile {
        let path = self.0.join("hosts");
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, Permissions::from_mode(mode)).unwrap();
        HostsFile::new(path)
    }

    /// Nothing but the hosts file is left in the directory (no temporary files).
    fn only_hosts_left(&self) -> bool {
        let names: Vec<_> = fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.iter().all(|n| n == "hosts" || n == "hosts-target")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn name(s: &str) -> Hostname {
    s.parse().unwrap()
}

fn read(hosts: &HostsFile) -> String {
    fs::read_to_string(hosts.path()).unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().mode() & 0o7777
}

fn block(lines: &[&str]) -> String {
    let mut b = format!("{BEGIN_LINE}\n");
    for line in lines {
        b.push_str(line);
        b.push('\n');
    }
    b + END_LINE + "\n"
}

#[test]
fn write_appends_a_sorted_block_and_keeps_the_rest() {
    let dir = Scratch::new();
    let hosts = dir.hosts(LOCAL, 0o644);
    hosts
        .write(&[
            (name("bob"), BOB),
            (name("alice"), ALICE),
            (name("bob"), BOB),
        ])
        .unwrap();
    let expected = format!(
        "{LOCAL}{}",
        block(&["fd70::1:2:3 alice.pilot", "fd70::a1b2:c3d4:e5f6 bob.pilot"])
    );
    assert_eq!(read(&hosts), expected);
    assert_eq!(
        block(&["fd70::a1b2:c3d4:e5f6 bob.pilot"]),
        "# BEGIN pilot (managed by pilotd; do not edit)\nfd70::a1b2:c3d4:e5f6 bob.pilot\n# END pilot\n"
    );
    assert!(dir.only_hosts_left());
}

#[test]
fn write_replaces_the_block_where_it_stands() {
    let dir = Scratch::new();
    let before = "127.0.0.1 localhost\n# keep me\n";
    let after = "\n10.0.0.1 nas # trailing comment\n";
    let original = format!(
        "{before}{}{after}",
        block(&["fd70::9 old.pilot", "fd70::8 gone.pilot"])
    );
    let hosts = dir.hosts(&original, 0o644);
    hosts.write(&[(name("bob"), BOB)]).unwrap();
    assert_eq!(
        read(&hosts),
        format!(
            "{before}{}{after}",
            block(&["fd70::a1b2:c3d4:e5f6 bob.pilot"])
        )
    );
}

#[test]
fn remove_gives_back_the_original_bytes() {
    let originals = [
        LOCAL,
        "",
        "127.0.0.1 localhost",
        "a\n\n\n",
        "\n",
        "127.0.0.1 localhost\r\n::1 localhost\r\n",
        "# END pilot\nstray end above\n",
    ];
    for original in originals {
        let dir = Scratch::new();
        let hosts = dir.hosts(original, 0o644);
        hosts.write(&[(name("bob"), BOB)]).unwrap();
        let written = read(&hosts);
        assert!(written.starts_with(original), "{original:?} → {written:?}");
        hosts
            .write(&[(name("bob"), BOB), (name("alice"), ALICE)])
            .unwrap();
        hosts.remove().unwrap();
        assert_eq!(read(&hosts), original);
        hosts.remove().unwrap();
        assert_eq!(read(&hosts), original);
        assert!(dir.only_hosts_left());
    }
}

#[test]
fn a_missing_final_newline_stays_missing() {
    let dir = Scratch::new();
    let hosts = dir.hosts("127.0.0.1 localhost", 0o644);
    hosts.write(&[(name("bob"), BOB)]).unwrap();
    let written = read(&hosts);
    assert_eq!(
        written,
        format!("127.0.0.1 localhost\n{BEGIN_LINE}\nfd70::a1b2:c3d4:e5f6 bob.pilot\n{END_LINE}")
    );
    // Replacing keeps the shape.
    hosts.write(&[(name("alice"), ALICE)]).unwrap();
    assert!(read(&hosts).ends_with("alice.pilot\n# END pilot"));
    hosts.remove().unwrap();
    assert_eq!(read(&hosts), "127.0.0.1 localhost");
}

#[test]
fn an_empty_list_removes_the_block() {
    let dir = Scratch::new();
    let hosts = dir.hosts(LOCAL, 0o644);
    hosts.write(&[(name("bob"), BOB)]).unwrap();
    hosts.write(&[]).unwrap();
    assert_eq!(read(&hosts), LOCAL);
}

#[test]
fn mode_is_kept_and_the_file_is_replaced_by_rename() {
    let dir = Scratch::new();
    let hosts = dir.hosts(LOCAL, 0o600);
    let inode = fs::metadata(hosts.path()).unwrap().ino();
    hosts.write(&[(name("bob"), BOB)]).unwrap();
    assert_eq!(mode(hosts.path()), 0o600);
    assert_ne!(
        fs::metadata(hosts.path()).unwrap().ino(),
        inode,
        "a new file was renamed into place"
    );
    fs::set_permissions(hosts.path(), Permissions::from_mode(0o640)).unwrap();
    hosts.remove().unwrap();
    assert_eq!(mode(hosts.path()), 0o640);
}

#[test]
fn an_unchanged_file_is_not_rewritten() {
    let dir = Scratch::new();
    let hosts = dir.hosts(LOCAL, 0o644);
    hosts.write(&[(name("bob"), BOB)]).unwrap();
    let inode = fs::metadata(hosts.path()).unwrap().ino();
    hosts.write(&[(name("bob"), BOB)]).unwrap();
    assert_eq!(fs::metadata(hosts.path()).unwrap().ino(), inode);
    let plain = dir.hosts(LOCAL, 0o644);
    let inode = fs::metadata(plain.path()).unwrap().ino();
    plain.remove().unwrap();
    assert_eq!(fs::metadata(plain.path()).unwrap().ino(), inode);
}

#[test]
fn a_missing_file_is_created_by_write_only() {
    let dir = Scratch::new();
    let hosts = HostsFile::new(dir.0.join("hosts"));
    hosts.remove().unwrap();
    hosts.write(&[]).unwrap();
    assert!(!hosts.path().exists(), "nothing to write, nothing created");
    hosts.write(&[(name("bob"), BOB)]).unwrap();
    assert_eq!(read(&hosts), block(&["fd70::a1b2:c3d4:e5f6 bob.pilot"]));
    assert_eq!(mode(hosts.path()), 0o644);
    hosts.remove().unwrap();
    assert_eq!(read(&hosts), "");
}

#[test]
fn an_unterminated_block_is_refused_and_the_file_left_alone() {
    let dir = Scratch::new();
    let original = format!("127.0.0.1 localhost\n{BEGIN_LINE}\nfd70::1 x.pilot\n10.0.0.1 nas\n");
    let hosts = dir.hosts(&original, 0o644);
    let err = hosts.write(&[(name("bob"), BOB)]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let message = err.to_string();
    assert!(message.contains("line 2"), "{message}");
    assert!(message.contains("# END pilot"), "{message}");
    assert_eq!(
        hosts.remove().unwrap_err().kind(),
        io::ErrorKind::InvalidData
    );
    assert_eq!(read(&hosts), original);
    assert!(dir.only_hosts_left());
}

#[test]
fn two_blocks_become_one_at_the_first_place() {
    let dir = Scratch::new();
    let original = format!(
        "a\n{}m\n{}z\n",
        block(&["fd70::1 one.pilot"]),
        block(&["fd70::2 two.pilot"])
    );
    let hosts = dir.hosts(&original, 0o644);
    hosts.write(&[(name("bob"), BOB)]).unwrap();
    assert_eq!(
        read(&hosts),
        format!("a\n{}m\nz\n", block(&["fd70::a1b2:c3d4:e5f6 bob.pilot"]))
    );
    // A second BEGIN inside a block belongs to it.
    let nested = format!("a\n{BEGIN_LINE}\n{}z\n", block(&["fd70::1 one.pilot"]));
    let hosts = dir.hosts(&nested, 0o644);
    hosts.remove().unwrap();
    assert_eq!(read(&hosts), "a\nz\n");
}

#[test]
fn a_symlinked_hosts_file_keeps_its_link() {
    let dir = Scratch::new();
    let target = dir.0.join("hosts-target");
    fs::write(&target, LOCAL).unwrap();
    let link = dir.0.join("hosts");
    symlink(&target, &link).unwrap();
    let hosts = HostsFile::new(&link);
    hosts.write(&[(name("bob"), BOB)]).unwrap();
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(fs::read_to_string(&target).unwrap().contains("bob.pilot"));
    assert!(dir.only_hosts_left());
}

#[test]
fn in_place_rewrite_cuts_to_the_new_length() {
    let dir = Scratch::new();
    let hosts = dir.hosts(LOCAL, 0o600);
    let inode = fs::metadata(hosts.path()).unwrap().ino();
    rewrite_in_place(hosts.path(), b"short\n").unwrap();
    assert_eq!(read(&hosts), "short\n");
    rewrite_in_place(hosts.path(), LOCAL.as_bytes()).unwrap();
    assert_eq!(read(&hosts), LOCAL);
    assert_eq!(fs::metadata(hosts.path()).unwrap().ino(), inode);
    assert_eq!(mode(hosts.path()), 0o600);
}

#[test]
fn splice_never_eats_lines_that_look_like_markers() {
    // Only exact END lines close a block; BEGIN needs the marker and then a space or nothing.
    let content = b"# BEGIN pilots\n# END pilot extra\n  # END pilot  \n";
    assert_eq!(find_blocks(content), Ok(vec![]));
    let content = b"x\n  # BEGIN pilot  \ny\n\t# END pilot\r\nz";
    assert_eq!(
        find_blocks(content),
        Ok(vec![Span {
            start: 2,
            end: content.len() - 1,
            open_end: false
        }])
    );
}

/// The `ip netns exec` case for real: /etc/hosts is a bind mount of another file, which no
/// rename can replace. Needs root; run it in a private mount namespace so nothing leaks:
/// `unshare -m cargo test --lib bind_mounted -- --ignored`.
#[test]
#[ignore = "needs root in a private mount namespace (unshare -m)"]
fn a_bind_mounted_hosts_file_is_rewritten_in_place() {
    use std::ffi::CString;
    let dir = Scratch::new();
    let hosts = dir.hosts(LOCAL, 0o644);
    let source = dir.0.join("hosts-target");
    fs::write(&source, "10.0.0.9 only-in-netns\n").unwrap();
    let c = |p: &Path| CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let (src, dst) = (c(&source), c(hosts.path()));
    // SAFETY: both are valid NUL-terminated paths; a bind mount takes no fs type or data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "bind mount: {}", io::Error::last_os_error());
    let result = hosts.write(&[(name("bob"), BOB)]);
    let seen = read(&hosts);
    // SAFETY: as above.
    unsafe { libc::umount(dst.as_ptr()) };
    result.unwrap();
    assert_eq!(
        seen,
        format!(
            "10.0.0.9 only-in-netns\n{}",
            block(&["fd70::a1b2:c3d4:e5f6 bob.pilot"])
        )
    );
    assert_eq!(fs::read_to_string(&source).unwrap(), seen);
    assert_eq!(read(&hosts), LOCAL, "the file under the mount is untouched");
    assert!(dir.only_hosts_left());
}
