//! The TLS certificate a cluster started with `Opts::tls(true)` serves: self-signed for
//! CN=localhost, SAN DNS:localhost, IP:127.0.0.1.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::process::{chown_server_recursive, run_ok};

#[derive(Clone, Debug)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn make_cert(root: &Path) -> Tls {
    let dir = root.join("tls");
    fs::create_dir(&dir).unwrap();
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "3650",
                "-subj",
                "/CN=localhost",
            ])
            .args([
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        Duration::from_secs(60),
    );
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(&cert, fs::Permissions::from_mode(0o644)).unwrap();
    chown_server_recursive(&dir);
    Tls { cert, key }
}
