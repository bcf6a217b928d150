//! docs/CONFIG.md is `flashsale serve --help` rendered as Markdown: this test renders the current
//! help and fails when the file differs, so the reference cannot go stale. scripts/config-doc
//! writes the file (it runs this test with FLASHSALE_CONFIG_DOC_WRITE=1).

use std::fmt::Write;
use std::process::Command;

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/CONFIG.md");

#[test]
fn docs_config_md_is_the_current_serve_help() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flashsale"));
    // The help shows the environment's values: render the defaults, not this machine's.
    for (k, _) in
        std::env::vars().filter(|(k, _)| k.starts_with("FLASHSALE_") || k.starts_with("OTEL_"))
    {
        cmd.env_remove(k);
    }
    let out = cmd.args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let doc = render(&String::from_utf8(out.stdout).unwrap());
    if std::env::var_os("FLASHSALE_CONFIG_DOC_WRITE").is_some() {
        std::fs::write(DOC, &doc).unwrap();
        return;
    }
    let current = std::fs::read_to_string(DOC).unwrap_or_default();
    assert!(
        current == doc,
        "docs/CONFIG.md is not what `flashsale serve --help` says now: run scripts/config-doc \
         and commit the result"
    );
}

/// One setting as the help lists it.
#[derive(Default)]
struct Setting {
    flag: String,
    env: String,
    default: String,
    meaning: String,
}

/// The help (`next_line_help`: each flag on its own line, its text on the next) as Markdown: the
/// notes after the options first, then one table per heading.
fn render(help: &str) -> String {
    let mut doc = String::from(
        "# Settings of `flashsale serve`\n\n<!-- Generated from `flashsale serve --help` by scripts/config-doc. Edit the \
         doc comments in src/config/, then run the script; tests/api/config_doc.rs fails when \
         this file and the help differ. -->\n\n",
    );
    let mut sections: Vec<(String, Vec<Setting>)> = Vec::new();
    let mut notes = Vec::new();
    let mut lines = help.lines().peekable();
    while let Some(line) = lines.next() {
        if line.is_empty() || line.starts_with("Usage:") {
            continue;
        }
        if !line.starts_with(' ') {
            match line.strip_suffix(':') {
                Some(heading) => sections.push((heading.to_string(), Vec::new())),
                // The command's about before the first heading; its after-help, after the last,
                // goes first.
                None if sections.is_empty() => {}
                None => notes.push(line.to_string()),
            }
            continue;
        }
        let Some((_, settings)) = sections.last_mut() else {
            panic!("an option before any heading: {line}")
        };
        let flag = line.trim();
        let text = lines.next().map(str::trim).unwrap_or_default();
        if !flag.starts_with("-h, --help") {
            settings.push(setting(flag, text));
        }
    }
    for line in notes {
        writeln!(doc, "{line}\n").unwrap();
    }
    for (heading, settings) in sections.iter().filter(|(_, s)| !s.is_empty()) {
        writeln!(doc, "## {heading}\n").unwrap();
        doc += "| variable | flag | default | meaning |\n| --- | --- | --- | --- |\n";
        for s in settings {
            let code = |v: &str| {
                if v.is_empty() {
                    String::new()
                } else {
                    format!("`{v}`")
                }
            };
            writeln!(
                doc,
                "| {} | {} | {} | {} |",
                code(&s.env),
                code(&s.flag),
                code(&s.default),
                s.meaning.replace('|', "\\|")
            )
            .unwrap();
        }
        doc += "\n";
    }
    doc.pop();
    doc
}

/// `--flag <VALUE>` and `Meaning. [env: VAR=] [default: x] [possible values: a, b]`.
fn setting(flag: &str, text: &str) -> Setting {
    let mut s = Setting {
        flag: flag
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string(),
        ..Setting::default()
    };
    let mut text = text.to_string();
    let mut possible = String::new();
    // The bracketed notes clap appends, from the last one back.
    while let Some(open) = text.rfind(" [").filter(|_| text.ends_with(']')) {
        let note = text[open + 2..text.len() - 1].to_string();
        text.truncate(open);
        if let Some(v) = note.strip_prefix("env: ") {
            s.env = v.trim_end_matches('=').to_string();
        } else if let Some(v) = note.strip_prefix("default: ") {
            s.default = v.to_string();
        } else if let Some(v) = note.strip_prefix("possible values: ") {
            possible = v.to_string();
        } else {
            panic!("an unknown note [{note}] after {flag}");
        }
    }
    s.meaning = text;
    if !s.meaning.ends_with('.') {
        s.meaning.push('.');
    }
    if !possible.is_empty() {
        write!(s.meaning, " One of: {possible}.").unwrap();
    }
    s
}
