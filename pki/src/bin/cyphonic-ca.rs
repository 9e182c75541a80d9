//! `cyphonic-ca`: the operator's certificate tool for a CYPHONIC deployment.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cyphonic_pki::{
    ca::csr_der_from_file_bytes, parse_serial, write_private_key, Ca, IssuedCert, IssuedRecord,
    PeerIdentity, PkiError, Reason, Role,
};
use cyphonic_proto::{Fqdn, NodeId};

#[derive(Parser)]
#[command(
    name = "cyphonic-ca",
    version,
    about = "The built-in certificate authority of a CYPHONIC deployment",
    after_help = "Examples:\n  \
      cyphonic-ca init  --dir /var/lib/cyphonic/ca --domain cyphonic.internal\n  \
      cyphonic-ca issue --dir /var/lib/cyphonic/ca --role nms --name nms.cyphonic.internal --ip 203.0.113.10 \\\n                    --out-cert nms.crt --out-key nms.key\n  \
      cyphonic-ca issue --dir /var/lib/cyphonic/ca --role node --fqdn n1.cyphonic.internal --out-cert n1.crt --out-key n1.key\n  \
      cyphonic-ca sign  --dir /var/lib/cyphonic/ca --csr n1.csr --fqdn n1.cyphonic.internal --out-cert n1.crt\n  \
      cyphonic-ca revoke --dir /var/lib/cyphonic/ca --serial 5f0c3a…\n  \
      cyphonic-ca list  --dir /var/lib/cyphonic/ca --json\n\n\
      Exit codes: 0 success, 1 failure (the message says what to do), 2 usage error."
)]
struct Cli {
    /// CA directory.
    #[arg(
        long,
        global = true,
        env = "CYPHONIC_CA_DIR",
        default_value = "/var/lib/cyphonic/ca"
    )]
    dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the CA (key and self-signed certificate) for an overlay domain.
    Init {
        /// Overlay domain every node FQDN ends in.
        #[arg(long, default_value = "cyphonic.internal")]
        domain: Fqdn,
        /// CA lifetime in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a certificate with a fresh key: a service (as, nms, trs) or a node.
    Issue {
        #[arg(long)]
        role: Role,
        /// Service DNS name(s), e.g. nms.cyphonic.internal (services).
        #[arg(long = "name", alias = "dns")]
        names: Vec<Fqdn>,
        /// IP address(es) the service is reached at (services).
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
        /// Node FQDN, below the overlay domain (role node).
        #[arg(long)]
        fqdn: Option<Fqdn>,
        /// NodeID to embed (role node).
        #[arg(long)]
        node_id: Option<NodeId>,
        #[arg(long)]
        out_cert: PathBuf,
        #[arg(long)]
        out_key: PathBuf,
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Sign a node's PKCS#10 CSR (PEM or DER). The CA decides the name, role and
    /// lifetime; only the CSR's public key is used.
    Sign {
        #[arg(long)]
        csr: PathBuf,
        #[arg(long)]
        fqdn: Fqdn,
        #[arg(long)]
        node_id: Option<NodeId>,
        #[arg(long)]
        out_cert: PathBuf,
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Revoke a certificate and re-sign the CRL.
    Revoke {
        #[arg(long)]
        serial: String,
        /// unspecified, keyCompromise, superseded or cessationOfOperation.
        #[arg(long, default_value = "unspecified")]
        reason: Reason,
    },
    /// Re-sign the CRL and print it (or write it to --out).
    Crl {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List every certificate issued.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one certificate: by serial from the index, or a certificate file.
    Show {
        #[arg(long, conflicts_with = "cert", required_unless_present = "cert")]
        serial: Option<String>,
        #[arg(long)]
        cert: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_cert(path: &Path, issued: &IssuedCert) -> Result<(), PkiError> {
    if path.exists() {
        return Err(PkiError::Write {
            path: path.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "file exists; remove it or choose another --out-cert",
            ),
        });
    }
    std::fs::write(path, &issued.cert_pem).map_err(|source| PkiError::Write {
        path: path.to_owned(),
        source,
    })
}

fn print_record(r: &IssuedRecord, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
        return;
    }
    println!("serial     {}", r.serial);
    println!("role       {}", r.role);
    println!("names      {}", r.names.join(", "));
    if let Some(id) = r.node_id {
        println!("node id    {id}");
    }
    println!("valid      {} .. {} (unix time)", r.not_before, r.not_after);
    match r.revoked_at {
        Some(at) => println!(
            "revoked    at {at} ({})",
            r.reason.as_deref().unwrap_or("unspecified")
        ),
        None => println!("revoked    no"),
    }
}

fn run(cli: Cli) -> Result<(), PkiError> {
    let dir = &cli.dir;
    match cli.command {
        Command::Init { domain, days } => {
            let ca = Ca::init(dir, &domain, days)?;
            println!("created CA for {} in {}", ca.domain(), dir.display());
            println!("  certificate {}", dir.join("ca.crt").display());
            println!(
                "  key         {} (mode 0600: keep it secret)",
                dir.join("ca.key").display()
            );
            println!("  CRL         {}", ca.crl_path().display());
        }
        Command::Issue {
            role,
            names,
            ips,
            fqdn,
            node_id,
            out_cert,
            out_key,
            days,
        } => {
            // Check the outputs before the CA records anything.
            if out_key.exists() {
                return Err(PkiError::KeyExists(out_key));
            }
            let mut ca = Ca::open(dir)?;
            let issued = match role {
                Role::Node => {
                    let fqdn = fqdn.ok_or_else(|| {
                        PkiError::BadCert("--role node needs --fqdn <name>.<overlay domain>".into())
                    })?;
                    ca.issue_node(&fqdn, node_id, days)?
                }
                _ => {
                    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
                    ca.issue_service(role, &names, &ips, days)?
                }
            };
            write_private_key(&out_key, issued.key_pem.as_deref().unwrap_or_default())?;
            write_cert(&out_cert, &issued)?;
            println!("issued {role} certificate, serial {}", issued.serial);
            println!("  certificate {}", out_cert.display());
            println!("  key         {} (mode 0600)", out_key.display());
        }
        Command::Sign {
            csr,
            fqdn,
            node_id,
            out_cert,
            days,
        } => {
            let bytes = std::fs::read(&csr).map_err(|source| PkiError::Read {
                path: csr.clone(),
                source,
            })?;
            let der = csr_der_from_file_bytes(&bytes)?;
            let mut ca = Ca::open(dir)?;
            let issued = ca.sign_csr(&der, &fqdn, node_id, days)?;
            write_cert(&out_cert, &issued)?;
            println!("signed certificate for {fqdn}, serial {}", issued.serial);
        }
        Command::Revoke { serial, reason } => {
            let mut ca = Ca::open(dir)?;
            let r = ca.revoke(&serial, reason)?;
            println!(
                "revoked {} ({}); CRL updated: {}",
                r.serial,
                r.names.join(", "),
                ca.crl_path().display()
            );
        }
        Command::Crl { out } => {
            let ca = Ca::open(dir)?;
            ca.refresh_crl()?;
            let crl = std::fs::read_to_string(ca.crl_path()).map_err(|source| PkiError::Read {
                path: ca.crl_path(),
                source,
            })?;
            match out {
                Some(p) => {
                    std::fs::write(&p, crl).map_err(|source| PkiError::Write { path: p, source })?
                }
                None => print!("{crl}"),
            }
        }
        Command::List { json } => {
            let ca = Ca::open(dir)?;
            let list = ca.list()?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else {
                println!("{:<34} {:<5} {:<8} NAMES", "SERIAL", "ROLE", "STATUS");
                for r in &list {
                    let status = if r.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "valid"
                    };
                    println!(
                        "{:<34} {:<5} {:<8} {}",
                        r.serial,
                        r.role,
                        status,
                        r.names.join(",")
                    );
                }
            }
        }
        Command::Show { serial, cert, json } => match (serial, cert) {
            (Some(s), _) => {
                let ca = Ca::open(dir)?;
                print_record(&ca.show(&parse_serial(&s)?)?, json);
            }
            (None, Some(p)) => {
                let creds_bytes = std::fs::read(&p).map_err(|source| PkiError::Read {
                    path: p.clone(),
                    source,
                })?;
                use rustls_pki_types::pem::PemObject;
                let der = rustls_pki_types::CertificateDer::from_pem_slice(&creds_bytes).map_err(
                    |e| PkiError::Corrupt {
                        path: p.clone(),
                        what: "PEM certificate",
                        reason: e.to_string(),
                    },
                )?;
                let id = PeerIdentity::from_der(&der)?;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "role": id.role, "name": id.name.as_str(), "dns_names": id.dns_names,
                            "serial": id.serial, "not_before": id.not_before,
                            "not_after": id.not_after,
                            "node_id": id.node_id.map(|n| n.to_string()),
                        })
                    );
                } else {
                    println!("serial     {}", id.serial);
                    println!("role       {}", id.role);
                    println!("names      {}", id.dns_names.join(", "));
                    if let Some(n) = id.node_id {
                        println!("node id    {n}");
                    }
                    println!(
                        "valid      {} .. {} (unix time)",
                        id.not_before, id.not_after
                    );
                }
            }
            (None, None) => unreachable_usage(),
        },
    }
    Ok(())
}

/// clap enforces `--serial` or `--cert`; keep the binary panic-free anyway.
fn unreachable_usage() {
    eprintln!("error: give --serial or --cert");
    std::process::exit(2);
}
