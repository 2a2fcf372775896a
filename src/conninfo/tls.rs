//! The TLS side of a connection string: which certificates verify the server (libpq's
//! rules for `sslmode` and `sslrootcert`), the client certificate and key, protocol
//! versions and SNI, all turned into one `native_tls::TlsConnector`.

use std::path::{Path, PathBuf};

use native_tls::{Certificate, Identity, Protocol, TlsConnector};

use super::env::Env;
use super::params::{ConnInfoError, Mode, Params, Sourced, error_chain, one_line, origin};

/// The native-tls connector for a TLS mode, and what verifies the server (for hints).
pub fn build_tls(
    mode: Mode,
    rootcert: Option<&Sourced>,
    mut p: Params,
    env: &Env,
) -> Result<(TlsConnector, Option<String>), ConnInfoError> {
    let mut b = TlsConnector::builder();
    // Which file verifies the server: explicit sslrootcert (libpq and lib/pq: `require`
    // with a root certificate behaves as verify-ca; libpq does the same for `prefer`),
    // else ~/.postgresql/root.crt for the verify modes.
    let verify_file = match rootcert {
        Some((f, src)) => Some((f.clone(), origin("sslrootcert", *src))),
        None if mode >= Mode::VerifyCa => match &env.home {
            Some(h) => Some((
                h.join(".postgresql/root.crt").display().to_string(),
                "the default root certificate file".to_string(),
            )),
            None => {
                return Err(ConnInfoError(format!(
                    "sslmode={} needs the CA certificate: no home directory to find \
                     ~/.postgresql/root.crt in, so give sslrootcert=<file> (or \
                     sslrootcert=system with verify-full)",
                    mode.name()
                )));
            }
        },
        None => None,
    };
    match &verify_file {
        None => {
            // prefer/require without a root certificate: encryption without verification,
            // as libpq. native-tls would otherwise verify against the system roots and
            // fail on the usual self-signed server certificate (docs/postgresql.md).
            b.danger_accept_invalid_certs(true);
        }
        Some((file, _)) if file == "system" => {} // keep the built-in roots
        Some((file, what)) => {
            b.disable_built_in_roots(true);
            for cert in read_root_certs(file, what)? {
                b.add_root_certificate(cert);
            }
        }
    }
    if verify_file.is_some() && mode != Mode::VerifyFull {
        b.danger_accept_invalid_hostnames(true);
    }

    // libpq's defaults: at least TLS 1.2, no maximum.
    let min = tls_version(&mut p, "ssl_min_protocol_version")?.unwrap_or(Protocol::Tlsv12);
    b.min_protocol_version(Some(min));
    b.max_protocol_version(tls_version(&mut p, "ssl_max_protocol_version")?);
    if let Some((v, src)) = p.take("sslsni") {
        match v.as_str() {
            "1" => b.use_sni(true),
            "0" => b.use_sni(false),
            _ => {
                return Err(ConnInfoError(format!(
                    "invalid {} {v:?}: use 1 or 0",
                    origin("sslsni", src)
                )));
            }
        };
    }
    if let Some(id) = client_identity(&mut p, env)? {
        b.identity(id);
    }
    let connector = b.build().map_err(|e| {
        ConnInfoError(format!(
            "could not set up TLS: {}",
            one_line(&error_chain(&e))
        ))
    })?;
    Ok((connector, verify_file.map(|(f, _)| f)))
}

fn read_root_certs(file: &str, what: &str) -> Result<Vec<Certificate>, ConnInfoError> {
    let advice = "provide the file, use sslrootcert=system with sslmode=verify-full for the \
                  system's trusted CAs, or use sslmode=require (without sslrootcert) to skip \
                  certificate checks";
    let pem = std::fs::read(file).map_err(|e| {
        ConnInfoError(format!(
            "could not read root certificate file {file:?} ({what}): {e}; {advice}"
        ))
    })?;
    let certs = Certificate::stack_from_pem(&pem).map_err(|e| {
        ConnInfoError(format!(
            "root certificate file {file:?} is not PEM: {}; it should hold \
             -----BEGIN CERTIFICATE----- blocks",
            one_line(&error_chain(&e))
        ))
    })?;
    if certs.is_empty() {
        return Err(ConnInfoError(format!(
            "root certificate file {file:?} holds no certificate; it should hold \
             -----BEGIN CERTIFICATE----- blocks"
        )));
    }
    Ok(certs)
}

fn tls_version(p: &mut Params, key: &str) -> Result<Option<Protocol>, ConnInfoError> {
    let Some((v, src)) = p.take(key) else {
        return Ok(None);
    };
    match v.as_str() {
        "" => Ok(None),
        "TLSv1" => Ok(Some(Protocol::Tlsv10)),
        "TLSv1.1" => Ok(Some(Protocol::Tlsv11)),
        "TLSv1.2" => Ok(Some(Protocol::Tlsv12)),
        "TLSv1.3" => Ok(Some(Protocol::Tlsv13)),
        _ => Err(ConnInfoError(format!(
            "invalid {} {v:?}: use TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3",
            origin(key, src)
        ))),
    }
}

/// The client certificate: `sslcert`/`sslkey` (or PGSSLCERT/PGSSLKEY), else
/// `~/.postgresql/postgresql.crt`/`.key` when the certificate file exists (libpq). An
/// explicitly named certificate that cannot be read is an error (libpq would silently go
/// on without it, and the server's refusal would not say why).
fn client_identity(p: &mut Params, env: &Env) -> Result<Option<Identity>, ConnInfoError> {
    let pg_dir = env.home.as_ref().map(|h| h.join(".postgresql"));
    let explicit = p.take("sslcert").filter(|(v, _)| !v.is_empty());
    let cert_path = match (&explicit, &pg_dir) {
        (Some((f, _)), _) => PathBuf::from(f),
        (None, Some(d)) => d.join("postgresql.crt"),
        (None, None) => return Ok(None),
    };
    let cert = match std::fs::read(&cert_path) {
        Ok(c) => c,
        Err(e) if explicit.is_none() && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => {
            return Err(ConnInfoError(format!(
                "could not read client certificate file \"{}\": {e}; fix sslcert= or remove it",
                cert_path.display()
            )));
        }
    };
    let key_path = match (p.take("sslkey").filter(|(v, _)| !v.is_empty()), &pg_dir) {
        (Some((f, _)), _) => PathBuf::from(f),
        (None, Some(d)) => d.join("postgresql.key"),
        (None, None) => {
            return Err(ConnInfoError(format!(
                "client certificate \"{}\" needs its private key: give sslkey=<file>",
                cert_path.display()
            )));
        }
    };
    let key_name = key_path.display();
    check_key_permissions(&key_path)?;
    let key = std::fs::read(&key_path).map_err(|e| {
        ConnInfoError(format!(
            "could not read private key file \"{key_name}\" for client certificate \"{}\": \
             {e}; give sslkey=<file>",
            cert_path.display()
        ))
    })?;
    // native-tls wants PKCS#8; libpq also takes PKCS#1 ("BEGIN RSA PRIVATE KEY") and SEC1
    // ("BEGIN EC PRIVATE KEY") keys, so convert. The passphrase variant is used even without
    // sslpassword so that OpenSSL never prompts on a terminal for an encrypted key.
    let pass = p.take_value("sslpassword").unwrap_or_default();
    let pkcs8 = openssl::pkey::PKey::private_key_from_pem_passphrase(&key, pass.as_bytes())
        .and_then(|k| k.private_key_to_pem_pkcs8())
        .map_err(|e| {
            ConnInfoError(format!(
                "could not load private key \"{key_name}\": {}; it must be a PEM key (if it \
                 is encrypted, give sslpassword=)",
                one_line(&e.to_string())
            ))
        })?;
    let id = Identity::from_pkcs8(&cert, &pkcs8).map_err(|e| {
        ConnInfoError(format!(
            "could not use client certificate \"{}\" with key \"{key_name}\": {}",
            cert_path.display(),
            one_line(&error_chain(&e))
        ))
    })?;
    Ok(Some(id))
}

/// libpq refuses a private key others can read: 0600 or less, or 0640 or less when owned
/// by root. (libpq also compares the owner with the process's uid; not done here.)
fn check_key_permissions(path: &Path) -> Result<(), ConnInfoError> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(()); // reading it reports the problem
    };
    let allowed = if meta.uid() == 0 { 0o740 } else { 0o700 };
    if meta.mode() & 0o777 & !allowed != 0 {
        return Err(ConnInfoError(format!(
            "private key file \"{}\" has group or world access (mode {:o}): chmod 600 it \
             (or 640 if owned by root)",
            path.display(),
            meta.mode() & 0o777
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use crate::conninfo::Target;
    use crate::conninfo::testing::*;

    #[test]
    fn root_certificate_files() {
        let e = err("host=h sslmode=verify-full sslrootcert=/nonexistent.crt");
        assert!(
            e.contains("\"/nonexistent.crt\"") && e.contains("provide the file"),
            "{e}"
        );
        // require + sslrootcert verifies, so the file must exist too
        assert!(
            err("host=h sslmode=require sslrootcert=/nonexistent.crt").contains("/nonexistent.crt")
        );
        // default location under home
        let dir = tempfile::tempdir().unwrap();
        let mut h = env();
        h.home = Some(dir.path().to_path_buf());
        let e = Target::parse("host=h sslmode=verify-ca", &h).unwrap_err().0;
        assert!(e.contains(".postgresql/root.crt"), "{e}");
        std::fs::create_dir(dir.path().join(".postgresql")).unwrap();
        write_file(
            &dir.path().join(".postgresql"),
            "root.crt",
            &self_signed_pem(),
            0o644,
        );
        Target::parse("host=h sslmode=verify-ca", &h).unwrap();
        // no home and no sslrootcert
        assert!(err("host=h sslmode=verify-full").contains("sslrootcert="));
        // not a certificate
        let bad = write_file(dir.path(), "bad.pem", "hello\n", 0o644);
        let e = err(&format!(
            "host=h sslmode=verify-ca sslrootcert={}",
            bad.display()
        ));
        assert!(e.contains("BEGIN CERTIFICATE"), "{e}");
        // system roots: verify-full only
        let t = parse("host=h sslrootcert=system");
        assert_eq!(t.sslmode(), "verify-full");
        assert!(err("host=h sslmode=require sslrootcert=system").contains("verify-full"));
    }

    #[test]
    fn client_certificate_keys_are_converted() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, pkcs1) = self_signed_with_rsa_key();
        let cert = write_file(dir.path(), "client.crt", &cert, 0o644);
        let key = write_file(dir.path(), "client.key", &pkcs1, 0o600);
        assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        parse(&format!(
            "host=h sslcert={} sslkey={}",
            cert.display(),
            key.display()
        ));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = err(&format!(
            "host=h sslcert={} sslkey={}",
            cert.display(),
            key.display()
        ));
        assert!(e.contains("chmod 600"), "{e}");
        let e = err("host=h sslcert=/nonexistent.crt sslkey=/nonexistent.key");
        assert!(e.contains("/nonexistent.crt"), "{e}");
        // not loaded at all without TLS
        parse("host=h sslmode=disable sslcert=/nonexistent.crt");
    }
}
