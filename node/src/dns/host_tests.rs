//! Tests of the host resolver integration on temporary files.

use std::net::Ipv4Addr;

use super::*;

const ORIGINAL: &str = "# written by dhclient\n\
                        nameserver 192.0.2.1\n\
                        search example.org corp.example\n\
                        nameserver 2001:db8::53 # second\n\
                        options edns0 timeout:2\n";

fn domain() -> Fqdn {
    Fqdn::new("cyphonic.internal").unwrap()
}

fn setup(contents: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("resolv.conf");
    let backup = dir.path().join("state").join("resolv.conf.backup");
    fs::create_dir_all(backup.parent().unwrap()).unwrap();
    fs::write(&conf, contents).unwrap();
    (dir, conf, backup)
}

fn server() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))
}

#[cfg(unix)]
fn inode(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(p).unwrap().ino()
}

#[test]
fn apply_rewrites_in_place_and_restore_is_byte_identical() {
    let (_d, conf, backup) = setup(ORIGINAL);
    let ino = inode(&conf);
    let g = HostDns::apply(
        HostDnsMode::ResolvConf,
        server(),
        &domain(),
        "cy0",
        &conf,
        &backup,
    )
    .unwrap();
    let now = fs::read_to_string(&conf).unwrap();
    assert!(now.starts_with(HEADER_MARK));
    let lines: Vec<&str> = now.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        lines,
        [
            "nameserver 127.0.0.1",
            "search example.org corp.example",
            "options edns0 timeout:2"
        ]
    );
    assert_eq!(inode(&conf), ino, "rewritten in place, not replaced");
    assert_eq!(fs::read_to_string(&backup).unwrap(), ORIGINAL);
    g.restore().unwrap();
    assert_eq!(fs::read_to_string(&conf).unwrap(), ORIGINAL);
    assert_eq!(inode(&conf), ino);
    assert!(!backup.exists());
}

#[test]
fn leftover_backup_is_restored_first() {
    let (_d, conf, backup) = setup(ORIGINAL);
    // A previous run applied and crashed: backup present, our file in place.
    let g = HostDns::apply(
        HostDnsMode::ResolvConf,
        server(),
        &domain(),
        "cy0",
        &conf,
        &backup,
    )
    .unwrap();
    std::mem::forget(g);
    assert!(backup.exists());
    // The next run applies again (maybe with another server address) ...
    let ip6: IpAddr = "::1".parse().unwrap();
    let g = HostDns::apply(
        HostDnsMode::ResolvConf,
        ip6,
        &domain(),
        "cy0",
        &conf,
        &backup,
    )
    .unwrap();
    let now = fs::read_to_string(&conf).unwrap();
    assert_eq!(now.matches("nameserver").count(), 1);
    assert!(now.contains("nameserver ::1\n"));
    // ... and the backup still holds the true original, not our file.
    assert_eq!(fs::read_to_string(&backup).unwrap(), ORIGINAL);
    g.restore().unwrap();
    assert_eq!(fs::read_to_string(&conf).unwrap(), ORIGINAL);
    assert!(!backup.exists());
}

#[test]
fn stale_backup_is_discarded_when_file_was_rewritten() {
    let (_d, conf, backup) = setup("nameserver 198.51.100.1\n");
    fs::write(&backup, "nameserver 192.0.2.99\n").unwrap();
    let g = HostDns::apply(
        HostDnsMode::ResolvConf,
        server(),
        &domain(),
        "cy0",
        &conf,
        &backup,
    )
    .unwrap();
    assert_eq!(
        fs::read_to_string(&backup).unwrap(),
        "nameserver 198.51.100.1\n"
    );
    g.restore().unwrap();
    assert_eq!(
        fs::read_to_string(&conf).unwrap(),
        "nameserver 198.51.100.1\n"
    );
}

#[test]
fn restore_keeps_a_file_rewritten_by_someone_else() {
    let (_d, conf, backup) = setup(ORIGINAL);
    let g = HostDns::apply(
        HostDnsMode::ResolvConf,
        server(),
        &domain(),
        "cy0",
        &conf,
        &backup,
    )
    .unwrap();
    fs::write(&conf, "nameserver 203.0.113.5\n").unwrap();
    g.restore().unwrap();
    assert_eq!(
        fs::read_to_string(&conf).unwrap(),
        "nameserver 203.0.113.5\n"
    );
    assert!(!backup.exists());
}

#[test]
fn auto_on_a_plain_file_uses_resolv_conf_and_off_does_nothing() {
    let (_d, conf, backup) = setup(ORIGINAL);
    let g = HostDns::apply(HostDnsMode::Off, server(), &domain(), "cy0", &conf, &backup).unwrap();
    assert_eq!(fs::read_to_string(&conf).unwrap(), ORIGINAL);
    g.restore().unwrap();
    let g = HostDns::apply(
        HostDnsMode::Auto,
        server(),
        &domain(),
        "cy0",
        &conf,
        &backup,
    )
    .unwrap();
    assert!(fs::read_to_string(&conf).unwrap().starts_with(HEADER_MARK));
    g.restore().unwrap();
    assert_eq!(fs::read_to_string(&conf).unwrap(), ORIGINAL);
}

#[test]
fn missing_resolv_conf_is_an_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nope");
    let backup = dir.path().join("b");
    assert!(HostDns::apply(
        HostDnsMode::ResolvConf,
        server(),
        &domain(),
        "cy0",
        &conf,
        &backup
    )
    .is_err());
    assert!(!backup.exists());
    assert!(!conf.exists());
}

#[test]
fn upstreams_parsing() {
    let (_d, conf, _b) = setup(
        "# comment nameserver 10.9.9.9\n\
         ; nameserver 10.8.8.8\n\
         nameserver 192.0.2.1\n\
         \tnameserver   2001:db8::53   # trailing comment\n\
         nameserver fe80::1%7\n\
         nameserver\n\
         nameserver not-an-address\n\
         nameserver 192.0.2.1\n\
         nameservers 192.0.2.77\n\
         search nameserver.example\n\
         garbage \u{fffd} line\n\
         nameserver 198.51.100.2;x\n",
    );
    let ups = HostDns::upstreams_from(&conf);
    let want: Vec<SocketAddr> = vec![
        "192.0.2.1:53".parse().unwrap(),
        "[2001:db8::53]:53".parse().unwrap(),
        SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 7)),
        "198.51.100.2:53".parse().unwrap(),
    ];
    assert_eq!(ups, want);
    assert!(HostDns::upstreams_from(Path::new("/nonexistent/resolv.conf")).is_empty());
    // Not UTF-8 at all.
    fs::write(&conf, b"\xff\xfe\nnameserver 192.0.2.3\n").unwrap();
    assert_eq!(
        HostDns::upstreams_from(&conf),
        vec!["192.0.2.3:53".parse::<SocketAddr>().unwrap()]
    );
}

#[test]
fn mode_deserializes_from_kebab_case() {
    #[derive(Deserialize)]
    struct C {
        m: HostDnsMode,
    }
    for (s, want) in [
        ("auto", HostDnsMode::Auto),
        ("resolv-conf", HostDnsMode::ResolvConf),
        ("systemd-resolved", HostDnsMode::SystemdResolved),
        ("off", HostDnsMode::Off),
    ] {
        let c: C = toml::from_str(&format!("m = \"{s}\"")).unwrap();
        assert_eq!(c.m, want);
    }
    assert!(toml::from_str::<C>("m = \"resolvconf\"").is_err());
}
