//! Command-line flags, in the Go spelling (`-config=FILE`, `-config FILE`) and the usual
//! two-dash one, so init scripts written for the Go binary start this one unchanged.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Arg, ArgAction, Command};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub config: PathBuf,
    pub logfile: Option<PathBuf>,
    pub pidfile: Option<PathBuf>,
    pub http: String,
    /// Validate the configuration, try each server once, print the result and exit.
    pub check: bool,
}

/// What `-help` says after the flags; the man page's sections say the same at length.
pub const AFTER_HELP: &str = "Flags may also be written the Go way: -config=FILE or -config FILE.\n\
     Signals: SIGTERM/SIGINT finish a switch in progress and exit; SIGHUP reopens the log file \
     and re-reads the configuration.\n\
     Exit status: 0 after a clean stop (for -check: the configuration is valid), 1 when it \
     cannot start or the configuration is invalid, 2 for a usage error.";

const VALUE_FLAGS: &[&str] = &["config", "logfile", "http", "pidfile"];

/// Go's flag package takes `-name`, `-name=v`, `--name` and `--name=v`; clap only the
/// two-dash forms, and a short flag would even turn `-config=x` silently into
/// `-c onfig=x`. So a single-dash word longer than two characters in flag position becomes
/// `--word` before clap sees it. The word after a value flag written without `=` is a
/// value and is left alone (Go accepts `-logfile -odd-name.log`).
pub fn go_style_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let (mut value_next, mut rest_are_values) = (false, false);
    for (i, arg) in args.into_iter().enumerate() {
        if i == 0 || rest_are_values || value_next {
            value_next = false;
            out.push(arg);
            continue;
        }
        let Some(s) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if s == "--" {
            rest_are_values = true;
            out.push(arg);
            continue;
        }
        let s = if s.len() > 2 && s.starts_with('-') && !s.starts_with("--") {
            format!("-{s}")
        } else {
            s.to_string()
        };
        if let Some(name) = s.strip_prefix("--") {
            value_next = !name.contains('=') && VALUE_FLAGS.contains(&name);
        }
        out.push(s.into());
    }
    out
}

/// Every flag, its help and default: what `parse` accepts, `-help` prints and `build.rs`
/// turns into the man page.
pub fn command() -> Command {
    let value = |name: &'static str, help: &'static str, value_name: &'static str| {
        Arg::new(name)
            .long(name)
            .value_name(value_name)
            .help(help)
            .allow_hyphen_values(true)
            .num_args(1)
    };
    Command::new("rebouncer")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Keeps PgBouncer pointed at the one primary of a PostgreSQL cluster")
        .after_help(format!("{AFTER_HELP}\n\n{}", crate::settings::help_text()))
        .arg(value("config", "configuration file", "FILE").default_value("rebouncer.ini"))
        .arg(value(
            "logfile",
            "append the log to FILE instead of stdout",
            "FILE",
        ))
        .arg(value("pidfile", "write the process id to FILE", "FILE"))
        .arg(
            value(
                "http",
                "listen address of the status web server",
                "ADDR:PORT",
            )
            .default_value("localhost:7100"),
        )
        .arg(
            Arg::new("check")
                .long("check")
                .action(ArgAction::SetTrue)
                .help("check the configuration and every server once, then exit (0: config valid)"),
        )
}

/// Parse argv (including the program name). Errors, `--help` and `--version` come back
/// as clap errors for the caller to print and exit with.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Options, clap::Error> {
    let m = command().try_get_matches_from(go_style_args(args))?;
    let path = |n: &str| m.get_one::<String>(n).map(PathBuf::from);
    Ok(Options {
        config: path("config").unwrap_or_else(|| "rebouncer.ini".into()),
        logfile: path("logfile"),
        pidfile: path("pidfile"),
        http: m
            .get_one::<String>("http")
            .cloned()
            .unwrap_or_else(|| "localhost:7100".into()),
        check: m.get_flag("check"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(args: &[&str]) -> Result<Options, clap::Error> {
        parse(
            std::iter::once("rebouncer")
                .chain(args.iter().copied())
                .map(OsString::from),
        )
    }

    #[test]
    fn the_rhel_init_script_command_line_parses() {
        let o = parse_str(&[
            "-config=/etc/rebouncer/rebouncer.ini",
            "-logfile=/var/log/rebouncer.log",
            "-http=localhost:7100",
            "-pidfile=/var/run/rebouncer/rebouncer.pid",
        ])
        .unwrap();
        assert_eq!(o.config, PathBuf::from("/etc/rebouncer/rebouncer.ini"));
        assert_eq!(o.logfile, Some("/var/log/rebouncer.log".into()));
        assert_eq!(o.http, "localhost:7100");
        assert_eq!(o.pidfile, Some("/var/run/rebouncer/rebouncer.pid".into()));
        assert!(!o.check);
    }

    #[test]
    fn space_separated_and_two_dash_forms_parse() {
        let o = parse_str(&["-config", "/etc/r.ini", "--http", ":7100", "--pidfile=/p"]).unwrap();
        assert_eq!(o.config, PathBuf::from("/etc/r.ini"));
        assert_eq!(o.http, ":7100");
        assert_eq!(o.pidfile, Some("/p".into()));
    }

    #[test]
    fn defaults_match_the_go_tool() {
        let o = parse_str(&[]).unwrap();
        assert_eq!(o.config, PathBuf::from("rebouncer.ini"));
        assert_eq!(o.http, "localhost:7100");
        assert_eq!(o.logfile, None);
        assert_eq!(o.pidfile, None);
    }

    #[test]
    fn a_value_starting_with_a_dash_is_a_value() {
        let o = parse_str(&["-logfile", "-odd.log", "-check"]).unwrap();
        assert_eq!(o.logfile, Some("-odd.log".into()));
        assert!(o.check);
    }

    #[test]
    fn a_misspelt_flag_is_an_error_with_a_suggestion() {
        let e = parse_str(&["-confg=/x"]).unwrap_err().to_string();
        assert!(e.contains("--confg"), "{e}");
        assert!(e.contains("--config"), "{e}");
    }

    #[test]
    fn help_and_version_are_recognised_in_both_spellings() {
        for a in ["-help", "--help", "-h"] {
            let e = parse_str(&[a]).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp, "{a}");
        }
        for a in ["-version", "--version", "-V"] {
            let e = parse_str(&[a]).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::DisplayVersion, "{a}");
        }
    }

    #[test]
    fn help_lists_the_configuration_keys_from_the_settings_table() {
        let e = parse_str(&["-help"]).unwrap_err().to_string();
        assert!(e.contains(&crate::settings::help_text()), "{e}");
        assert!(e.contains(AFTER_HELP), "{e}");
    }
}
