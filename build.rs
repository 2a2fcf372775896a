//! Writes the man page rebouncer(8) from the clap command in `src/cli.rs` and the
//! `[global]` table in `src/settings.rs` (the same code `-help` runs), so the page cannot
//! describe flags or keys the binary does not have.
//!
//! It goes to `$OUT_DIR/rebouncer.8` (what the tests read) and is copied to
//! `target/<profile>/rebouncer.8`, with a gzipped `rebouncer.8.gz` beside it (Debian
//! policy wants man pages compressed, and cargo-deb compresses only files it did not
//! build): the stable paths the package metadata names.

#[allow(dead_code)]
#[path = "src/cli.rs"]
mod cli;
#[allow(dead_code)]
#[path = "src/settings.rs"]
mod settings;

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap_mangen::roff::{Roff, bold, italic, roman};

fn main() -> io::Result<()> {
    println!("cargo::rerun-if-changed=src/cli.rs");
    println!("cargo::rerun-if-changed=src/settings.rs");
    println!("cargo::rerun-if-changed=build.rs");

    let page = man_page()?;
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out_dir.join("rebouncer.8"), &page)?;
    // OUT_DIR is <target>/<profile>/build/rebouncer-<hash>/out.
    if let Some(profile_dir) = out_dir.ancestors().nth(3) {
        write_if_changed(&profile_dir.join("rebouncer.8"), &page)?;
        // No file name or time in the header, so the same page gives the same bytes.
        let mut gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::best());
        gz.write_all(&page)?;
        write_if_changed(&profile_dir.join("rebouncer.8.gz"), &gz.finish()?)?;
    }
    Ok(())
}

fn write_if_changed(path: &Path, data: &[u8]) -> io::Result<()> {
    if std::fs::read(path).ok().as_deref() != Some(data) {
        std::fs::write(path, data)?;
    }
    Ok(())
}

fn section(r: &mut Roff, title: &str) {
    r.control("SH", [title]);
}

fn para(r: &mut Roff, text: &str) {
    r.control("PP", []).text([roman(text)]);
}

/// A tagged paragraph: `tag` in bold, then the text indented below it.
fn item(r: &mut Roff, tag: &str, text: &str) {
    r.control("TP", []).text([bold(tag)]).text([roman(text)]);
}

fn man_page() -> io::Result<Vec<u8>> {
    let cmd = cli::command();
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration")
        .source(format!("rebouncer {}", env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;

    let mut r = Roff::new();
    section(&mut r, "DESCRIPTION");
    para(
        &mut r,
        "rebouncer runs beside PgBouncer. It checks every PostgreSQL server of a replication \
         cluster each round, classifies each as master, standby or down, and when the master \
         changes it points the symbolic link PgBouncer was started with at that node's \
         PgBouncer configuration and sends RELOAD on PgBouncer's admin console. It refuses to \
         act while several primaries answer (split brain) or while the only primary is on an \
         older timeline than one seen before (a stale primary). A small HTTP server shows the \
         state: /, /nodes, /nagios, JSON, /metrics and /events.",
    );
    para(
        &mut r,
        "Every flag may also be written with one dash and with a space before its value, \
         as the Go tool took them: -config=FILE, -config FILE, --config=FILE.",
    );
    out.extend(r.render().into_bytes());

    man.render_options_section(&mut out)?;

    let mut r = Roff::new();
    section(&mut r, "CONFIGURATION");
    para(
        &mut r,
        "The configuration file has a [global] section with the keys below and a [servers] \
         section with one name=connection string line per PostgreSQL server, in the order the \
         status pages show them. For each server, <configdir>/<name>.ini is a complete \
         PgBouncer configuration pointing at it. Lines starting with # or ; are comments.",
    );
    for s in settings::GLOBAL {
        let default = match s.default {
            Some(d) => format!("Default: {d}."),
            None => "Required.".to_string(),
        };
        r.control("TP", [])
            .text([bold(s.key)])
            .text([roman(format!("{}. {default}", s.meaning))]);
    }

    section(&mut r, "STATE FILE");
    para(
        &mut r,
        "The state file (key state_file) keeps, across restarts, the highest timeline seen \
         per cluster, the databases a switch or a failover pause left paused, and the \
         databases whose clients a switch has not disconnected yet; rebouncer finishes those \
         at its next start. It is plain text, replaced atomically. If it cannot be written, \
         rebouncer runs on with that memory in RAM and reports WARNING on /nagios; a file it \
         cannot parse stops it at start, naming the line.",
    );

    section(&mut r, "SIGNALS");
    item(
        &mut r,
        "SIGTERM, SIGINT",
        "Finish a switch in progress, then exit 0.",
    );
    item(
        &mut r,
        "SIGHUP",
        "Reopen the log file (for logrotate), then re-read the configuration: a valid one \
         takes effect without a restart; an invalid one is refused and logged, and the \
         running configuration stays.",
    );

    section(&mut r, "EXIT STATUS");
    item(
        &mut r,
        "0",
        "Stopped by a signal after a clean shutdown; with --check, the configuration is valid \
         (whatever the servers answered).",
    );
    item(
        &mut r,
        "1",
        "It could not start: invalid configuration, unreadable state file, log file, pid \
         file or listen address; the message on standard error (and in the log file) says \
         which and what to do.",
    );
    item(
        &mut r,
        "2",
        "Usage error: an unknown flag or a missing value.",
    );

    section(&mut r, "FILES");
    item(
        &mut r,
        "/etc/rebouncer/rebouncer.ini",
        "The configuration file used by the packaged systemd unit and init script.",
    );
    item(
        &mut r,
        "/var/lib/rebouncer/rebouncer.state",
        "The state file, unless state_file says otherwise.",
    );
    item(
        &mut r,
        "/var/log/rebouncer/rebouncer.log",
        "The log file of the packaged systemd unit (the init script uses /var/log/rebouncer.log).",
    );
    item(
        &mut r,
        "/usr/lib/nagios/plugins/check_rebouncer",
        "Nagios plugin reading /nagios.",
    );
    item(
        &mut r,
        "/usr/share/doc/rebouncer/examples/rebouncer.rules.yml",
        "Prometheus alert rules for the /metrics series.",
    );

    section(&mut r, "ENVIRONMENT");
    item(
        &mut r,
        "STATE_DIRECTORY",
        "Set by systemd's StateDirectory=: the directory of the default state file.",
    );
    item(
        &mut r,
        "PGPASSWORD, PGUSER, ...",
        "libpq's PG* variables fill what a connection string leaves out.",
    );

    section(&mut r, "EXAMPLES");
    r.control("PP", [])
        .text([roman("Check a configuration before a restart:")]);
    r.control("nf", []).text([roman(
        "rebouncer -check -config=/etc/rebouncer/rebouncer.ini",
    )]);
    r.control("fi", []);

    section(&mut r, "SEE ALSO");
    r.control("PP", []).text([
        bold("pgbouncer"),
        roman("(1), "),
        bold("systemd.service"),
        roman("(5), and "),
        italic("/usr/share/doc/rebouncer/README.md"),
        roman("."),
    ]);
    out.extend(r.render().into_bytes());
    man.render_version_section(&mut out)?;
    Ok(out)
}
