//! The `jwtchat` command: parse the command line ([`cli`]), set up the
//! process ([`process`]), then serve or hash. Neither module is part of
//! the library: an embedder brings its own command line and process.
//!
//! Exit status: 0 on success, 2 for a usage or configuration error (one
//! line on stderr saying what is wrong), 1 if serving fails at run time.

use std::io::{BufRead, IsTerminal};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::Duration;

use jwtchat::Server;

mod cli;
mod process;

use cli::Command;

/// How long a shutdown waits for the 1001 close frames to be written.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    process::tune_allocator();
    let args = std::env::args_os().skip(1);
    let command = match cli::parse(args, std::env::var_os("JWTCHAT_SECRET")) {
        Ok(command) => command,
        Err(error) => return usage_error(&error),
    };
    match command {
        Command::Help => {
            print!("{}", cli::usage());
            ExitCode::SUCCESS
        }
        Command::HashPasswordHelp => {
            print!("{}", cli::HASH_PASSWORD_USAGE);
            ExitCode::SUCCESS
        }
        Command::Version => {
            // Which optional features this binary was built with: `--redis`
            // only works in a build that says `redis` here, `--data-dir`
            // in one that says `store`.
            let built: Vec<&str> = [
                ("store", cfg!(feature = "store")),
                ("redis", cfg!(feature = "redis")),
            ]
            .into_iter()
            .filter_map(|(name, on)| on.then_some(name))
            .collect();
            let features = if built.is_empty() {
                "none".to_string()
            } else {
                built.join(", ")
            };
            println!(
                "jwtchat {} (features: {features})",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::SUCCESS
        }
        Command::HashPassword => hash_password(),
        Command::Serve(config) => serve(*config),
    }
}

/// Serves until SIGINT or SIGTERM, then shuts down gracefully.
fn serve(config: jwtchat::Config) -> ExitCode {
    jwtchat::log::set_level(config.log_level);
    jwtchat::log::set_format(config.log_format);
    // Before any thread starts, so that every thread inherits the mask and
    // the signals wait for `wait_for_termination` below.
    if let Err(e) = process::block_termination_signals() {
        jwtchat::warn!("cannot block SIGINT/SIGTERM: {e}");
    }
    // One descriptor per client: lift the soft limit (often 1024) to the
    // hard limit before the server sizes its connection cap by it (and say
    // so only once the configuration is known to be good).
    let open_files = process::raise_open_file_limit();
    let server = match Server::bind(config) {
        Ok(server) => server,
        Err(error) => return usage_error(&error),
    };
    match open_files {
        Ok(limit) => jwtchat::info!("open-file limit: {limit}"),
        Err(e) => jwtchat::warn!("cannot raise the open-file limit: {e}"),
    }
    let handle = match server.spawn() {
        Ok(handle) => handle,
        Err(e) => {
            jwtchat::error!("cannot start the server thread: {e}");
            return ExitCode::FAILURE;
        }
    };
    match process::wait_for_termination() {
        Ok(signal) => jwtchat::info!("{signal}: closing connections and shutting down"),
        Err(e) => jwtchat::error!("cannot wait for signals ({e}); shutting down"),
    }
    handle.shutdown_gracefully(SHUTDOWN_GRACE);
    jwtchat::info!("stopped");
    ExitCode::SUCCESS
}

fn usage_error(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("jwtchat: {error}");
    ExitCode::from(2)
}

/// `jwtchat hash-password`: a password to an argon2id PHC string for the
/// users file. On a terminal it is asked for twice, not echoed; from a pipe
/// it is one line (without its newline).
fn hash_password() -> ExitCode {
    let password = if std::io::stdin().is_terminal() {
        read_password_twice()
    } else {
        read_line().map_err(|e| format!("cannot read the password from stdin: {e}"))
    };
    let password = match password {
        Ok(password) => password,
        Err(why) => {
            eprintln!("jwtchat: {why}");
            return ExitCode::from(2);
        }
    };
    if password.is_empty() {
        eprintln!("jwtchat: the password is empty");
        return ExitCode::from(2);
    }
    println!("{}", jwtchat::hash_password(&password));
    ExitCode::SUCCESS
}

/// Prompts on stderr (stdout is for the hash) with echo off; both entries
/// must match, so a typo typed blind does not lock anyone out.
fn read_password_twice() -> Result<String, String> {
    let _echo_off = process::EchoOff::new(std::io::stdin().as_raw_fd())
        .map_err(|e| format!("cannot turn off terminal echo: {e}"))?;
    let ask = |prompt: &str| {
        eprint!("{prompt}");
        read_line().map_err(|e| format!("cannot read the password: {e}"))
    };
    let first = ask("Password: ")?;
    if first.is_empty() {
        return Ok(first);
    }
    let again = ask("Again: ")?;
    if first != again {
        return Err("the two passwords differ; nothing was hashed".into());
    }
    Ok(first)
}

/// One line from stdin without its line ending.
fn read_line() -> std::io::Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    Ok(password.strip_suffix('\r').unwrap_or(password).to_string())
}
