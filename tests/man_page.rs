//! The man page `build.rs` writes: every flag of the clap command and every `[global]`
//! key with its default, and the sections an operator looks for.

use rebouncer::{cli, settings};

fn page() -> String {
    std::fs::read_to_string(concat!(env!("OUT_DIR"), "/rebouncer.8"))
        .expect("build.rs writes rebouncer.8 into OUT_DIR")
}

/// The text as man shows it: roff escapes undone, so the assertions read like the page.
fn plain(roff: &str) -> String {
    roff.replace("\\-", "-")
        .replace("\\fB", "")
        .replace("\\fI", "")
        .replace("\\fR", "")
        .replace("\\(aq", "'")
        .replace("\\*(Aq", "'")
        .replace("\\&", "")
}

#[test]
fn the_man_page_names_every_flag_and_key_with_its_default() {
    let text = plain(&page());
    assert!(text.contains(".TH rebouncer 8"), "{text}");
    for arg in cli::command().get_arguments() {
        let flag = format!("--{}", arg.get_long().unwrap());
        assert!(text.contains(&flag), "{flag} missing:\n{text}");
        if let Some(help) = arg.get_help() {
            assert!(text.contains(&help.to_string()), "{flag}'s help missing");
        }
        for d in arg.get_default_values() {
            let d = format!("[default: {}]", d.to_string_lossy());
            assert!(text.contains(&d), "{flag}: {d} missing");
        }
    }
    for s in settings::GLOBAL {
        let entry = text
            .split(".TP\n")
            .find(|e| e.starts_with(&format!("{}\n", s.key)))
            .unwrap_or_else(|| panic!("no entry for {}:\n{text}", s.key));
        let default = match s.default {
            Some(d) => format!("Default: {d}."),
            None => "Required.".into(),
        };
        assert!(entry.contains(s.meaning), "{entry}");
        assert!(entry.contains(&default), "{entry}");
    }
    for section in [
        "SYNOPSIS",
        "OPTIONS",
        "CONFIGURATION",
        "STATE FILE",
        "SIGNALS",
        "EXIT STATUS",
        "FILES",
    ] {
        assert!(
            text.contains(&format!(".SH \"{section}\""))
                || text.contains(&format!(".SH {section}")),
            "no {section} section:\n{text}"
        );
    }
    for signal in ["SIGTERM", "SIGHUP"] {
        assert!(text.contains(signal), "{signal}");
    }
}
