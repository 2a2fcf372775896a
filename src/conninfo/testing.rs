//! Helpers the tests of every part of `conninfo` share.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio_postgres::config::Host;

use super::{Env, Target};

pub fn env() -> Env {
    Env {
        vars: HashMap::new(),
        home: None,
        os_user: Some("osuser".into()),
        ..Env::default()
    }
}

pub fn env_with(vars: &[(&str, &str)]) -> Env {
    let mut e = env();
    for (k, v) in vars {
        e.vars.insert(k.to_string(), v.to_string());
    }
    e
}

pub fn parse(s: &str) -> Target {
    Target::parse(s, &env()).unwrap_or_else(|e| panic!("{s}: {e}"))
}

pub fn err(s: &str) -> String {
    match Target::parse(s, &env()) {
        Ok(t) => panic!("{s}: parsed as {t:?}"),
        Err(e) => e.0,
    }
}

pub fn hosts(t: &Target) -> Vec<String> {
    t.config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(s) => s.clone(),
            Host::Unix(p) => format!("unix:{}", p.display()),
        })
        .collect()
}

pub fn password(t: &Target) -> Option<String> {
    t.config
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
}

pub fn write_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// A throwaway self-signed certificate and its PKCS#1 RSA key, both PEM.
pub fn self_signed_with_rsa_key() -> (String, String) {
    use openssl::{asn1::Asn1Time, hash::MessageDigest, pkey::PKey, rsa::Rsa, x509};
    let rsa = Rsa::generate(2048).unwrap();
    let pkcs1 = String::from_utf8(rsa.private_key_to_pem().unwrap()).unwrap();
    let key = PKey::from_rsa(rsa).unwrap();
    let mut name = x509::X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "rebouncer test").unwrap();
    let name = name.build();
    let mut b = x509::X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    let cert = String::from_utf8(b.build().to_pem().unwrap()).unwrap();
    (cert, pkcs1)
}

pub fn self_signed_pem() -> String {
    self_signed_with_rsa_key().0
}
