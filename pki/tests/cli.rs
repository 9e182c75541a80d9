//! The `cyphonic-ca` binary, driven as an operator would.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn ca(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cyphonic-ca"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Fails with exit code 1 and a one-line message containing `want`.
fn fails(o: &Output, want: &str) {
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(want), "expected {want:?} in {err:?}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn operator_workflow() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("ca");
    let p = |n: &str| t.path().join(n).to_string_lossy().into_owned();

    ok(&ca(&dir, &["init", "--domain", "example.test"]));
    let key_mode = std::fs::metadata(dir.join("ca.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);

    let out = ok(&ca(
        &dir,
        &[
            "issue",
            "--role",
            "nms",
            "--name",
            "nms.example.test",
            "--ip",
            "203.0.113.10",
            "--out-cert",
            &p("nms.crt"),
            "--out-key",
            &p("nms.key"),
        ],
    ));
    assert!(out.contains("serial"));
    let mode = std::fs::metadata(p("nms.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    // A key is never overwritten.
    fails(
        &ca(
            &dir,
            &[
                "issue",
                "--role",
                "nms",
                "--name",
                "nms.example.test",
                "--out-cert",
                &p("other.crt"),
                "--out-key",
                &p("nms.key"),
            ],
        ),
        "refusing to overwrite",
    );

    // Sign a CSR made on the "node".
    let (csr, _key) = cyphonic_pki::generate_csr(&"n1.example.test".parse().unwrap()).unwrap();
    std::fs::write(p("n1.csr"), &csr).unwrap();
    let out = ok(&ca(
        &dir,
        &[
            "sign",
            "--csr",
            &p("n1.csr"),
            "--fqdn",
            "n1.example.test",
            "--out-cert",
            &p("n1.crt"),
        ],
    ));
    let serial = out.split("serial ").nth(1).unwrap().trim().to_owned();

    let show = ok(&ca(&dir, &["show", "--cert", &p("n1.crt"), "--json"]));
    let v: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(v["name"], "n1.example.test");
    assert_eq!(v["role"], "node");
    assert_eq!(v["serial"], serial.as_str());

    ok(&ca(
        &dir,
        &["revoke", "--serial", &serial, "--reason", "keyCompromise"],
    ));
    let list = ok(&ca(&dir, &["list", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let rec = v
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["serial"] == serial.as_str())
        .unwrap();
    assert!(rec["revoked_at"].is_i64());
    assert_eq!(rec["reason"], "keyCompromise");

    let crl = ok(&ca(&dir, &["crl"]));
    assert!(crl.contains("BEGIN X509 CRL"));
    let trust =
        cyphonic_pki::TrustAnchor::load(&dir.join("ca.crt"), Some(&dir.join("crl.pem"))).unwrap();
    assert_eq!(trust.revoked_serials(), vec![serial.clone()]);

    let show = ok(&ca(&dir, &["show", "--serial", &serial]));
    assert!(show.contains("revoked    at"));
}

#[test]
fn bad_input_gets_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("ca");
    let p = |n: &str| t.path().join(n).to_string_lossy().into_owned();

    fails(&ca(&dir, &["list"]), "cyphonic-ca init");
    ok(&ca(&dir, &["init", "--domain", "example.test"]));
    fails(&ca(&dir, &["init"]), "already holds a CA");

    std::fs::write(p("junk.csr"), b"not a csr").unwrap();
    fails(
        &ca(
            &dir,
            &[
                "sign",
                "--csr",
                &p("junk.csr"),
                "--fqdn",
                "n1.example.test",
                "--out-cert",
                &p("x.crt"),
            ],
        ),
        "request refused",
    );
    fails(
        &ca(
            &dir,
            &[
                "sign",
                "--csr",
                &p("missing.csr"),
                "--fqdn",
                "n1.example.test",
                "--out-cert",
                &p("x.crt"),
            ],
        ),
        "cannot read",
    );
    let (csr, _) = cyphonic_pki::generate_csr(&"n1.other.test".parse().unwrap()).unwrap();
    std::fs::write(p("n1.csr"), &csr).unwrap();
    fails(
        &ca(
            &dir,
            &[
                "sign",
                "--csr",
                &p("n1.csr"),
                "--fqdn",
                "n1.other.test",
                "--out-cert",
                &p("x.crt"),
            ],
        ),
        "not inside the overlay domain",
    );
    fails(
        &ca(&dir, &["revoke", "--serial", "abcdef"]),
        "cyphonic-ca list",
    );
    fails(&ca(&dir, &["revoke", "--serial", "xyz"]), "hexadecimal");
    fails(
        &ca(
            &dir,
            &[
                "issue",
                "--role",
                "node",
                "--out-cert",
                &p("a.crt"),
                "--out-key",
                &p("a.key"),
            ],
        ),
        "--fqdn",
    );

    // A CA whose key was replaced is refused.
    let other = t.path().join("other");
    ok(&ca(&other, &["init", "--domain", "example.test"]));
    std::fs::copy(other.join("ca.key"), dir.join("ca.key")).unwrap();
    fails(&ca(&dir, &["list"]), "does not match");

    // Usage errors exit 2.
    let o = ca(&dir, &["issue", "--role", "root"]);
    assert_eq!(o.status.code(), Some(2));
}
