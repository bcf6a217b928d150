//! `flashsale admin-password`: sets the admin account's password (src/service/admin_account.rs).
//! The password comes from standard input or FLASHSALE_ADMIN_PASSWORD, never from the command
//! line, where the machine's other users (ps) and the shell's history would see it.

use std::io::{BufRead, IsTerminal, Write};
use std::process::{Command, ExitCode, Stdio};

use anyhow::Context;
use flashsale::config::Config;
use flashsale::service::admin_account::{self, PasswordSet};
use flashsale::service::tokens::note_life;
use flashsale::store::mysql;
use flashsale::store::redis::Redis;

pub async fn run(cfg: Config, from_env: bool) -> anyhow::Result<ExitCode> {
    // The global `--admin-password` flag would fill FLASHSALE_ADMIN_PASSWORD's setting (and so
    // `--from-env`) from the command line.
    anyhow::ensure!(
        !given_as_flag(std::env::args_os()),
        "the admin password was given on the command line (--admin-password), where the \
         machine's other users (ps) and the shell's history see it: nothing changed. Pipe it \
         in on standard input, or set FLASHSALE_ADMIN_PASSWORD and use --from-env; then choose \
         a new one, as this one may already be seen"
    );
    let password = if from_env {
        cfg.auth
            .admin_password
            .clone()
            .context("--from-env needs FLASHSALE_ADMIN_PASSWORD")?
    } else {
        tokio::task::spawn_blocking(read_password).await??
    };
    let db = mysql::connect_and_migrate(&cfg.stores).await?;
    let done = admin_account::set_password(&db, &cfg.auth, &password).await?;
    let username = &cfg.auth.admin_username;
    match done {
        PasswordSet::Changed { user_id } => {
            println!("changed the password of the admin account {username:?} (id {user_id})");
            tell_running_services(&cfg, &db, user_id).await;
        }
        PasswordSet::Created { user_id } => {
            println!("created the admin account {username:?} (id {user_id}) with that password")
        }
    }
    if cfg.auth.admin_password.as_deref() != Some(password.as_str()) {
        println!(
            "set FLASHSALE_ADMIN_PASSWORD to the same password where the service is deployed: \
             a service started with another one logs a warning"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The change raised the account's token version (its tokens end): the running services learn
/// it from the account's note in Redis (src/service/tokens.rs), replaced here; without it they
/// would believe the note they may hold for up to its TTL.
async fn tell_running_services(cfg: &Config, db: &sqlx::MySqlPool, user_id: u64) {
    let noted = async {
        let account = mysql::users::find_account(db, user_id)
            .await?
            .context("the admin account went meanwhile")?
            .account();
        let redis = Redis::connect(&cfg.stores)?;
        redis
            .note_account(user_id, account, note_life(&cfg.auth))
            .await?;
        anyhow::Ok(())
    };
    match noted.await {
        Ok(()) => println!("the admin's earlier tokens are refused from now on"),
        Err(e) => println!(
            "could not tell the running services through Redis ({e}): the admin's earlier \
             tokens may be accepted for up to {} s more",
            note_life(&cfg.auth).as_secs()
        ),
    }
}

/// Whether `args` give `--admin-password` (as `--admin-password v` or `--admin-password=v`).
fn given_as_flag(args: impl IntoIterator<Item = std::ffi::OsString>) -> bool {
    args.into_iter().skip(1).any(|a| {
        let a = a.to_string_lossy();
        a == "--admin-password" || a.starts_with("--admin-password=")
    })
}

/// One line of standard input without its line ending. On a terminal: asked twice, with echo
/// off (`stty -echo`), refused when echo cannot be turned off.
fn read_password() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return read_line(&mut stdin.lock())?.context("no password on standard input");
    }
    let echo = |on: bool| {
        Command::new("stty")
            .arg(if on { "echo" } else { "-echo" })
            .stdin(Stdio::inherit())
            .status()
            .is_ok_and(|s| s.success())
    };
    anyhow::ensure!(
        echo(false),
        "cannot turn the terminal's echo off: pipe the password in, or use --from-env"
    );
    let ask = |prompt: &str| -> anyhow::Result<Option<String>> {
        eprint!("{prompt}: ");
        std::io::stderr().flush()?;
        let line = read_line(&mut stdin.lock());
        eprintln!();
        line
    };
    let first = ask("new admin password");
    let second = first.as_ref().ok().map(|_| ask("again"));
    echo(true);
    let first = first?.context("no password given")?;
    let second = second.transpose()?.flatten();
    anyhow::ensure!(
        second.as_deref() == Some(first.as_str()),
        "the two differ; nothing changed"
    );
    Ok(first)
}

fn read_line(input: &mut impl BufRead) -> anyhow::Result<Option<String>> {
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let line = line.strip_suffix('\n').unwrap_or(&line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    Ok(Some(line.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_is_recognised_in_both_spellings() {
        let args = |a: &[&str]| a.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert!(given_as_flag(args(&[
            "flashsale",
            "admin-password",
            "--admin-password",
            "x"
        ])));
        assert!(given_as_flag(args(&[
            "flashsale",
            "--admin-password=x",
            "admin-password"
        ])));
        assert!(!given_as_flag(args(&[
            "flashsale",
            "admin-password",
            "--from-env"
        ])));
    }
}
