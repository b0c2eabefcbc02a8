//! `dbus-broker` as a private system bus, for the benchmarks: the default
//! bus of Fedora, RHEL and Arch, measured beside Debian's `dbus-daemon`.
//!
//! Its launcher is made for systemd: it takes its listening socket by
//! socket activation, runs `/usr/bin/dbus-broker` (a fixed path), connects
//! back to itself at `/run/dbus/system_bus_socket` and logs to
//! `/run/systemd/journal/socket`. So it runs in a mount namespace of its
//! own: an overlay puts the broker's binaries (unpacked from Debian's
//! package into `target/dbus-broker/`, never installed on the host) over
//! `/usr/bin`, a tmpfs replaces `/run`, and a datagram socket of ours
//! stands in for the journal. Clients reach the bus through
//! `/proc/PID/root/run/dbus/system_bus_socket`.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::ROOT;

/// `target/dbus-broker/usr/bin`, unpacked from the package the machine's
/// own apt would install (apt-get download, dpkg-deb -x) the first time.
fn binaries() -> PathBuf {
    let unpacked = Path::new(ROOT).join("target/dbus-broker");
    let bin = unpacked.join("usr/bin");
    if !bin.join("dbus-broker-launch").exists() {
        std::fs::create_dir_all(&unpacked).unwrap();
        let run = |program: &str, args: &[&str]| {
            let status = Command::new(program)
                .args(args)
                .current_dir(&unpacked)
                .stdin(Stdio::null())
                .status()
                .unwrap_or_else(|e| panic!("{program}: {e}"));
            assert!(status.success(), "{program} {args:?} failed");
        };
        run("apt-get", &["download", "-qq", "dbus-broker"]);
        let deb = std::fs::read_dir(&unpacked)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .expect("the dbus-broker package");
        run("dpkg-deb", &["-x", deb.to_str().unwrap(), "."]);
    }
    bin
}

/// Starts the broker for the config `dir/bus.conf`; the child is the
/// launcher (its pid stays through the execs).
pub fn spawn(dir: &Path) -> Child {
    let bin = binaries();
    let (upper, work, journal) = (dir.join("upper"), dir.join("work"), dir.join("journal"));
    for d in [&upper, &work, &journal] {
        std::fs::create_dir_all(d).unwrap();
    }
    for name in ["dbus-broker", "dbus-broker-launch"] {
        std::fs::copy(bin.join(name), upper.join(name)).unwrap();
    }
    // The journal's stand-in, read and dropped on a thread of its own so
    // the broker's log lines never fill it.
    let sink = UnixDatagram::bind(journal.join("socket")).unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while sink.recv(&mut buf).is_ok() {}
    });
    let script = format!(
        "set -e
         mount -t overlay overlay -o lowerdir=/usr/bin,upperdir={upper},workdir={work} /usr/bin
         mount -t tmpfs tmpfs /run
         mkdir -p /run/systemd/journal /run/dbus
         mount --bind {journal} /run/systemd/journal
         exec systemd-socket-activate -l /run/dbus/system_bus_socket \
              /usr/bin/dbus-broker-launch --scope system --config-file={dir}/bus.conf",
        upper = upper.display(),
        work = work.display(),
        journal = journal.display(),
        dir = dir.display(),
    );
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("unshare (util-linux) and systemd-socket-activate (systemd)")
}
