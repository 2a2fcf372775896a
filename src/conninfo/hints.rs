//! What to tell an operator when a connection fails: the cause, read from SQLSTATE codes,
//! I/O error kinds and error types (never from the server's words, which are in its
//! `lc_messages`), and a short "what to do" that knows where each setting came from.

use std::io;
use std::path::PathBuf;

use tokio_postgres::error::SqlState;

use super::env::PasswordFrom;
use super::params::{Mode, Source};

/// How a target was built, as far as a hint needs to know: which sslmode and from where,
/// where the user name and the password came from, what verifies the server.
#[derive(Clone, Debug)]
pub struct Facts {
    pub mode: Mode,
    pub mode_from: Source,
    /// Set when `user` was not given and the OS user name was used.
    pub os_user_default: Option<String>,
    pub password_from: PasswordFrom,
    /// The password file that was looked at.
    pub passfile: Option<PathBuf>,
    /// Things worth a warning that did not stop parsing (a skipped password file).
    pub notes: Vec<String>,
    /// What verifies the server certificate: a file name or `system`; None = nothing.
    pub rootcert: Option<String>,
    /// First TCP host name, for the hostname-mismatch hint.
    pub first_host: String,
    /// Connecting tries TLS.
    pub tls: bool,
    /// A host of the list is a unix socket.
    pub socket: bool,
}

impl Facts {
    /// A short "what to do" for the failures an operator can fix, chosen from what went
    /// wrong as codes and types say it: the server's message is in its `lc_messages`.
    pub fn hint(&self, cause: &Cause) -> Option<String> {
        let mode = self.mode.name();
        let os_user_hint = || {
            self.os_user_default.as_ref().map(|u| {
                format!("no user= was given, so the OS user \"{u}\" was used: add user=<name>")
            })
        };
        match cause {
            Cause::ServerRefusedTls => Some(match self.mode_from {
                Source::Default => "the server does not offer TLS: add sslmode=disable to this \
                     connection string (rebouncer, like the Go tool, defaults to sslmode=require)"
                    .to_string(),
                Source::Env(var) => format!(
                    "the server does not offer TLS but {var}={mode} asks for it: add \
                     sslmode=disable to this connection string or unset {var}"
                ),
                Source::Conninfo => format!(
                    "the server does not offer TLS but this connection string says \
                     sslmode={mode}: enable ssl on the server, or use sslmode=disable"
                ),
            }),
            Cause::Server(code) if *code == SqlState::INVALID_PASSWORD => {
                os_user_hint().or_else(|| {
                    Some(match &self.password_from {
                        PasswordFrom::Conninfo => {
                            "wrong password (SQLSTATE 28P01): check password= in this connection string"
                                .to_string()
                        }
                        PasswordFrom::Env => {
                            "wrong password (SQLSTATE 28P01): it came from PGPASSWORD, check it"
                                .to_string()
                        }
                        PasswordFrom::Passfile { path, line } => format!(
                            "wrong password (SQLSTATE 28P01): it came from line {line} of {}, check it",
                            path.display()
                        ),
                        PasswordFrom::None => {
                            "wrong password or user (SQLSTATE 28P01): check both".to_string()
                        }
                    })
                })
            }
            // pg_hba.conf matched no line or a reject line, a hostssl/hostnossl mismatch, or
            // an unknown role: the server says which in its own language, the code is the same.
            Cause::Server(code) if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
                os_user_hint().or_else(|| {
                    let mut h = "the server refused this login (SQLSTATE 28000): no pg_hba.conf \
                         line admits this user, database and address, a reject line matches, or \
                         the role does not exist; fix pg_hba.conf on the server and reload it, or \
                         user=/dbname= here"
                        .to_string();
                    // A fact, not a diagnosis: the code cannot say whether a hostssl line
                    // was what failed to match (and a socket never matches one).
                    if !self.tls && !self.socket {
                        h.push_str(&format!(
                            " (sslmode={mode}: no TLS, so hostssl lines do not match)"
                        ));
                    }
                    Some(h)
                })
            }
            Cause::Server(code) if *code == SqlState::TOO_MANY_CONNECTIONS => Some(
                "the server has no free connection slot (SQLSTATE 53300: max_connections, or a \
                 role or database connection limit): free connections or raise the limit there"
                    .into(),
            ),
            Cause::Server(code) if *code == SqlState::INVALID_CATALOG_NAME => Some(
                "SQLSTATE 3D000: set dbname= to a database that exists there, e.g. \
                 dbname=postgres (without dbname= the user name is used)"
                    .into(),
            ),
            Cause::Server(code) if *code == SqlState::INSUFFICIENT_PRIVILEGE => Some(
                "the user may not connect to this database (SQLSTATE 42501): GRANT CONNECT ON \
                 DATABASE to it on the server, or use another dbname="
                    .into(),
            ),
            Cause::Server(code) if *code == SqlState::CANNOT_CONNECT_NOW => Some(
                "the server does not accept connections now (SQLSTATE 57P03): it is starting or \
                 stopping, or is a standby with hot_standby=off, which cannot be told from down"
                    .into(),
            ),
            Cause::Server(_) => None,
            Cause::PasswordMissing => {
                let file = self
                    .passfile
                    .as_ref()
                    .map_or("~/.pgpass".to_string(), |p| p.display().to_string());
                let mut h = format!(
                    "the server wants a password: add password=... or a line \
                     host:port:dbname:user:password to {file} (chmod 600)"
                );
                for n in &self.notes {
                    h.push_str("; ");
                    h.push_str(n);
                }
                Some(h)
            }
            Cause::Certificate => {
                let roots = match self.rootcert.as_deref() {
                    Some("system") => "the system's trusted CAs".to_string(),
                    Some(f) => f.to_string(),
                    None => "the trusted CAs".to_string(),
                };
                // OpenSSL names the reason (expired, unknown CA, hostname mismatch) in the
                // detail; the hint says what each mode requires.
                Some(if self.mode == Mode::VerifyFull {
                    format!(
                        "the server's certificate was not accepted (OpenSSL's reason is in \
                         parentheses): sslmode=verify-full needs it valid, signed by a CA in \
                         {roots}, and issued for \"{}\" (set host= to a name in it, hostaddr= \
                         can keep the IP, or use sslmode=verify-ca)",
                        self.first_host
                    )
                } else {
                    format!(
                        "the server's certificate was not accepted (OpenSSL's reason is in \
                         parentheses): it must be valid and signed by a CA in {roots}; point \
                         sslrootcert= at the CA that signed it"
                    )
                })
            }
            Cause::Io(kind) => {
                let socket = self.socket;
                match kind {
                    io::ErrorKind::ConnectionRefused => Some(
                        "nothing listens there: is the server running, is the port right?".into(),
                    ),
                    io::ErrorKind::NotFound if socket => Some(
                        "no socket there: is the server running, are the socket directory and \
                         port right?"
                            .into(),
                    ),
                    io::ErrorKind::PermissionDenied if socket => Some(
                        "no permission to open the socket: the user rebouncer runs as needs \
                         access to the socket directory and the socket (unix_socket_permissions)"
                            .into(),
                    ),
                    io::ErrorKind::TimedOut => Some(
                        "no answer to the connection attempt: is the host up, the address \
                         right, and the port open in the firewall?"
                            .into(),
                    ),
                    io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => Some(
                        "no route to the host: check the address and the network".into(),
                    ),
                    _ => None,
                }
            }
            Cause::Other => None,
        }
    }
}

/// What made a connection fail, as far as a hint needs to know: from SQLSTATE codes, I/O
/// error kinds and error types, never from the server's message text (which is in its
/// `lc_messages`, and the same code covers messages that need different fixes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The server (PostgreSQL or PgBouncer) answered with an error.
    Server(SqlState),
    /// The socket failed.
    Io(io::ErrorKind),
    /// The server answered the TLS request with "no" while TLS was required.
    ServerRefusedTls,
    /// The server asked for a password and there is none.
    PasswordMissing,
    /// The TLS handshake failed on the server's certificate.
    Certificate,
    Other,
}

/// tokio-postgres raises these two as boxed strings without a type or code of their own;
/// they are its constants (never translated, never from the server), and the tests
/// `a_server_without_tls_gets_the_sslmode_hint` and `a_missing_password_gets_the_password_hint`
/// fail if a new version words them differently.
const TOKIO_POSTGRES_NO_TLS: &str = "server does not support TLS";
const TOKIO_POSTGRES_NO_PASSWORD: &str = "password missing";

/// OpenSSL's `ERR_LIB_SSL` and `SSL_R_CERTIFICATE_VERIFY_FAILED` (ssl.h, sslerr.h).
const OPENSSL_LIB_SSL: i32 = 20;
const OPENSSL_CERTIFICATE_VERIFY_FAILED: i32 = 134;

impl Cause {
    pub fn of(e: &tokio_postgres::Error) -> Cause {
        if let Some(code) = e.code() {
            return Cause::Server(code.clone());
        }
        let mut cur = std::error::Error::source(e);
        if let Some(first) = cur {
            match first.to_string().as_str() {
                TOKIO_POSTGRES_NO_TLS => return Cause::ServerRefusedTls,
                TOKIO_POSTGRES_NO_PASSWORD => return Cause::PasswordMissing,
                _ => {}
            }
        }
        while let Some(c) = cur {
            if let Some(io) = c.downcast_ref::<io::Error>() {
                return Cause::Io(io.kind());
            }
            if let Some(stack) = c.downcast_ref::<openssl::error::ErrorStack>() {
                let verify = stack.errors().iter().any(|x| {
                    x.library_code() == OPENSSL_LIB_SSL
                        && x.reason_code() == OPENSSL_CERTIFICATE_VERIFY_FAILED
                });
                return if verify {
                    Cause::Certificate
                } else {
                    Cause::Other
                };
            }
            cur = c.source();
        }
        Cause::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conninfo::Target;
    use crate::conninfo::testing::*;

    fn code(c: &str) -> Cause {
        Cause::Server(SqlState::from_code(c))
    }

    #[test]
    fn hints() {
        let t = parse("host=h");
        let tls = Cause::ServerRefusedTls;
        assert!(t.hint(&tls).unwrap().contains("add sslmode=disable"));
        assert!(
            t.hint(&tls)
                .unwrap()
                .contains("defaults to sslmode=require")
        );
        let t = parse("host=h sslmode=require user=u");
        assert!(
            t.hint(&tls)
                .unwrap()
                .contains("this connection string says sslmode=require")
        );
        let t = Target::parse("host=h user=u", &env_with(&[("PGSSLMODE", "require")])).unwrap();
        assert!(t.hint(&tls).unwrap().contains("PGSSLMODE"));
        // Without user=, a refused login is most likely the OS user's name.
        let t = parse("host=h");
        for c in ["28P01", "28000"] {
            assert!(
                t.hint(&code(c)).unwrap().contains("OS user \"osuser\""),
                "{c}"
            );
        }
        let t = parse("host=h user=u password=x");
        assert!(t.hint(&code("28P01")).unwrap().contains("check password="));
        let t = parse("host=h user=u");
        assert!(t.hint(&code("28P01")).unwrap().contains("SQLSTATE 28P01"));
        assert_eq!(t.hint(&code("XX000")), None);
        assert_eq!(t.hint(&Cause::Other), None);
    }

    /// The message text is the server's, in its language; only the code decides.
    #[test]
    fn server_errors_are_hinted_by_sqlstate() {
        let t = parse("host=h user=u sslmode=disable");
        let h = t.hint(&code("28000")).unwrap();
        assert!(h.contains("pg_hba.conf"), "{h}");
        assert!(
            h.contains("sslmode=disable: no TLS, so hostssl lines do not match"),
            "{h}"
        );
        assert!(!h.contains("accepts only TLS"), "{h}");
        // With TLS, or over a socket, TLS is not mentioned at all.
        for s in ["host=h user=u sslmode=require", "host=/tmp user=u"] {
            let h = parse(s).hint(&code("28000")).unwrap();
            assert!(h.contains("pg_hba.conf") && !h.contains("TLS"), "{s}: {h}");
        }
        for (c, want) in [
            ("53300", "no free connection slot"),
            ("3D000", "set dbname= to a database that exists there"),
            ("42501", "GRANT CONNECT"),
            ("57P03", "hot_standby=off"),
        ] {
            let h = t.hint(&code(c)).unwrap();
            assert!(h.contains(want) && h.contains(c), "{c}: {h}");
        }
    }

    #[test]
    fn socket_errors_are_hinted_by_io_error_kind() {
        let tcp = parse("host=h user=u");
        let sock = parse("host=/tmp user=u");
        let io = |k| Cause::Io(k);
        for t in [&tcp, &sock] {
            assert!(
                t.hint(&io(io::ErrorKind::ConnectionRefused))
                    .unwrap()
                    .contains("nothing listens there")
            );
        }
        assert!(
            sock.hint(&io(io::ErrorKind::NotFound))
                .unwrap()
                .contains("no socket there")
        );
        assert!(
            sock.hint(&io(io::ErrorKind::PermissionDenied))
                .unwrap()
                .contains("no permission to open the socket")
        );
        assert_eq!(tcp.hint(&io(io::ErrorKind::NotFound)), None);
        assert!(
            tcp.hint(&io(io::ErrorKind::TimedOut))
                .unwrap()
                .contains("firewall")
        );
        assert!(
            tcp.hint(&io(io::ErrorKind::HostUnreachable))
                .unwrap()
                .contains("no route")
        );
        assert_eq!(tcp.hint(&io(io::ErrorKind::UnexpectedEof)), None);
    }

    #[test]
    fn certificate_hints_say_what_the_mode_requires() {
        let dir = tempfile::tempdir().unwrap();
        let ca = write_file(dir.path(), "ca.pem", &self_signed_pem(), 0o644);
        let t = parse(&format!(
            "host=db.example sslmode=verify-full sslrootcert={}",
            ca.display()
        ));
        let h = t.hint(&Cause::Certificate).unwrap();
        assert!(h.contains("issued for \"db.example\""), "{h}");
        assert!(h.contains(&ca.display().to_string()), "{h}");
        let t = parse(&format!(
            "host=db.example sslmode=verify-ca sslrootcert={}",
            ca.display()
        ));
        let h = t.hint(&Cause::Certificate).unwrap();
        assert!(h.contains("point sslrootcert="), "{h}");
        assert!(!h.contains("issued for"), "{h}");
    }

    /// A server that reads one packet (the startup message, or an SSLRequest) and answers
    /// `reply`, then closes.
    async fn one_reply_server(reply: Vec<u8>) -> (u16, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut len = [0u8; 4];
            sock.read_exact(&mut len).await.unwrap();
            let mut rest = vec![0u8; u32::from_be_bytes(len) as usize - 4];
            sock.read_exact(&mut rest).await.unwrap();
            sock.write_all(&reply).await.unwrap();
            let _ = sock.shutdown().await;
        });
        (port, server)
    }

    /// A FATAL ErrorResponse as PostgreSQL sends it at login.
    fn fatal(sqlstate: &str, message: &str) -> Vec<u8> {
        let mut body = Vec::new();
        for (field, value) in [
            (b'S', "FATAL"),
            (b'V', "FATAL"),
            (b'C', sqlstate),
            (b'M', message),
        ] {
            body.push(field);
            body.extend_from_slice(value.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut msg = vec![b'E'];
        msg.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        msg.extend_from_slice(&body);
        msg
    }

    /// A pg_hba.conf reject line, reported in German: the hint comes from the code, and says
    /// nothing about TLS the server did not say.
    #[tokio::test]
    async fn a_pg_hba_rejection_in_another_language_gets_the_pg_hba_hint() {
        let (port, server) = one_reply_server(fatal(
            "28000",
            "pg_hba.conf lehnt Verbindung ab für Host »127.0.0.1«, Benutzer »rebouncer«, \
             Datenbank »postgres«, keine Verschlüsselung",
        ))
        .await;
        let t = parse(&format!(
            "host=127.0.0.1 port={port} user=rebouncer dbname=postgres sslmode=disable"
        ));
        let Err(e) = t.connect().await else {
            panic!("connected to a server that refuses");
        };
        server.await.unwrap();
        let text = e.to_string();
        assert!(
            text.contains("lehnt Verbindung ab"),
            "the server's words: {text}"
        );
        let hint = e.hint.unwrap();
        assert!(hint.contains("SQLSTATE 28000"), "{hint}");
        assert!(hint.contains("pg_hba.conf"), "{hint}");
        assert!(!hint.contains("accepts only TLS"), "{hint}");
        assert!(!text.contains('\n'), "{text}");
    }

    #[tokio::test]
    async fn too_many_connections_in_another_language_gets_its_hint() {
        let (port, server) =
            one_reply_server(fatal("53300", "Es sind schon zu viele Verbindungen offen")).await;
        let t = parse(&format!(
            "host=127.0.0.1 port={port} user=u sslmode=disable"
        ));
        let Err(e) = t.connect().await else {
            panic!("connected");
        };
        server.await.unwrap();
        assert!(
            e.hint
                .as_deref()
                .unwrap()
                .contains("no free connection slot"),
            "{e}"
        );
    }

    /// tokio-postgres reports this one as text of its own; this pins that text.
    #[tokio::test]
    async fn a_server_without_tls_gets_the_sslmode_hint() {
        // The server answers the SSLRequest with "N".
        let (port, server) = one_reply_server(vec![b'N']).await;
        let t = parse(&format!("host=127.0.0.1 port={port} user=u"));
        let Err(e) = t.connect().await else {
            panic!("connected with TLS to a server without it");
        };
        server.await.unwrap();
        let hint = e.hint.as_deref().unwrap_or_default();
        assert!(
            hint.starts_with("the server does not offer TLS: add sslmode=disable"),
            "{e}"
        );
    }

    /// tokio-postgres reports this one as text of its own; this pins that text.
    #[tokio::test]
    async fn a_missing_password_gets_the_password_hint() {
        // AuthenticationCleartextPassword.
        let (port, server) = one_reply_server(vec![b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await;
        let dir = tempfile::tempdir().unwrap();
        let t = parse(&format!(
            "host=127.0.0.1 port={port} user=u sslmode=disable passfile={}",
            dir.path().join("none").display()
        ));
        let Err(e) = t.connect().await else {
            panic!("connected without a password");
        };
        server.await.unwrap();
        let hint = e.hint.as_deref().unwrap_or_default();
        assert!(hint.contains("the server wants a password"), "{e}");
    }

    /// A TLS server whose certificate the client does not accept: signed by another CA, or
    /// (verify-full) not issued for the host name.
    #[tokio::test]
    async fn an_unaccepted_certificate_gets_the_certificate_hint() {
        use std::io::{Read, Write};
        let (cert, pkcs1) = self_signed_with_rsa_key();
        let key = openssl::pkey::PKey::from_rsa(
            openssl::rsa::Rsa::private_key_from_pem(pkcs1.as_bytes()).unwrap(),
        )
        .unwrap()
        .private_key_to_pem_pkcs8()
        .unwrap();
        let identity = native_tls::Identity::from_pkcs8(cert.as_bytes(), &key).unwrap();
        let acceptor = native_tls::TlsAcceptor::new(identity).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for _ in 0..2 {
                let (mut sock, _) = listener.accept().unwrap();
                let mut req = [0u8; 8];
                sock.read_exact(&mut req).unwrap();
                sock.write_all(b"S").unwrap();
                // The client gives up in the handshake.
                let _ = acceptor.accept(sock);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let other_ca = write_file(dir.path(), "other.pem", &self_signed_pem(), 0o644);
        let own_ca = write_file(dir.path(), "own.pem", &cert, 0o644);
        for (conninfo, want) in [
            (
                format!(
                    "host=127.0.0.1 port={port} user=u sslmode=verify-ca sslrootcert={}",
                    other_ca.display()
                ),
                "point sslrootcert=",
            ),
            (
                format!(
                    "host=wrong.example hostaddr=127.0.0.1 port={port} user=u \
                     sslmode=verify-full sslrootcert={}",
                    own_ca.display()
                ),
                "issued for \"wrong.example\"",
            ),
        ] {
            let Err(e) = parse(&conninfo).connect().await else {
                panic!("connected: {conninfo}");
            };
            let hint = e.hint.as_deref().unwrap_or_default();
            assert!(
                hint.contains("the server's certificate was not accepted"),
                "{e}"
            );
            assert!(hint.contains(want), "{e}");
        }
        server.join().unwrap();
    }
}
